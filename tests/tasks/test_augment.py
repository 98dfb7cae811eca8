"""Task augmentation: L'(θ') = c·L(s ⊙ θ'). Gradients, Hessians, minimisers, normalised losses and
SGD trajectories transform exactly as the change of variables says (float64)."""

import math

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed
from tasks.augment import AugmentedTask

F64 = torch.float64


def _quadratic_pair(c=37.0, s=0.02):
    base = tasks.get("quadratic", dim=(4, 4), condition_number=(5.0, 5.0), dtype=F64).sample_seed(0)
    return base, AugmentedTask(base, c, {"x": s})


def test_quadratic_gradient_hessian_and_minimiser_against_the_closed_form():
    c, s = 37.0, 0.02
    base, task = _quadratic_pair(c, s)
    A, x_star = base.hessian, base.x_star
    theta = torch.randn(4, generator=generator_from_seed(1), dtype=F64).requires_grad_()
    loss = task.loss({"x": theta}, None)
    (grad,) = torch.autograd.grad(loss, theta)
    delta = s * theta.detach() - x_star
    assert float(loss.detach()) == pytest.approx(c * 0.5 * float(delta @ A @ delta), rel=1e-13)
    assert torch.allclose(grad, c * s * (A @ delta), rtol=1e-12, atol=1e-12)
    hessian = torch.autograd.functional.hessian(lambda x: task.loss({"x": x}, None), theta.detach())
    assert torch.allclose(hessian, c * s * s * A, rtol=1e-12, atol=1e-14)
    # the minimiser moves to x*/s, with value c·0 and zero gradient
    (minimiser,) = task.minimizers
    assert torch.allclose(minimiser["x"], x_star / s, rtol=1e-14)
    at_min = minimiser["x"].clone().requires_grad_()
    (grad_min,) = torch.autograd.grad(task.loss({"x": at_min}, None), at_min)
    assert grad_min.abs().max() < 1e-10 and task.minimum_value == 0.0
    # normalised losses are those of the base task at θ = s θ'
    assert task.loss_scale == pytest.approx(c * base.loss_scale, rel=1e-14)
    assert float(task.normalized_loss(loss.detach())) == pytest.approx(
        float(base.normalized_loss(base.loss({"x": s * theta.detach()}, None))), rel=1e-13)
    assert torch.allclose(task.init_params()["x"], base.init_params()["x"] / s, rtol=1e-15)


def test_mlp_gradients_are_c_s_times_the_base_gradients_of_the_module_path():
    family = tasks.get("augmented", family={"name": "mlp", "kwargs": {"width": [8, 8]}},
                       loss_scale=[0.01, 100], param_scale=[0.1, 10], dtype=F64)
    task = family.sample_seed(3)
    assert len(set(task.scales.values())) == len(task.scales) > 1  # one scale per tensor
    batch = task.train_batch(generator_from_seed(0))
    theta = {k: v.requires_grad_() for k, v in task.init_params(generator_from_seed(2)).items()}
    grads = torch.autograd.grad(task.loss(theta, batch), list(theta.values()))
    # oracle: the base task's own nn.Module at θ = s θ', gradients by .backward()
    module = task.base.module()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(task.scales[name] * theta[name])
    task.base.module_loss(module, batch).backward()
    for (name, p), grad in zip(module.named_parameters(), grads):
        assert torch.allclose(grad, task.c * task.scales[name] * p.grad, rtol=1e-11,
                              atol=1e-14), name
    # and a central finite difference along a random direction
    direction = {k: torch.randn(v.shape, generator=generator_from_seed(4), dtype=F64)
                 for k, v in theta.items()}
    h = 1e-6
    shifted = [task.loss({k: v.detach() + sign * h * direction[k] for k, v in theta.items()}, batch)
               for sign in (1, -1)]
    directional = sum(float((g * direction[k]).sum()) for k, g in zip(theta, grads))
    assert directional == pytest.approx(float(shifted[0] - shifted[1]) / (2 * h), rel=1e-6)


def test_sgd_trajectories_map_onto_each_other():
    """SGD with per-tensor lr η/(c s_k²) on the augmented task is SGD with lr η on the base task,
    seen through θ' = θ/s (torch.optim.SGD param groups as the oracle)."""
    family = tasks.get("augmented", family="mlp", loss_scale=[0.01, 100], param_scale=[0.1, 10],
                       dtype=F64)
    task = family.sample_seed(5)
    base_module, module = task.base.module(), task.module()
    eta = 0.1
    base_opt = torch.optim.SGD(base_module.parameters(), lr=eta, momentum=0.9)
    opt = torch.optim.SGD([{"params": [p], "lr": eta / (task.c * task.scales[n] ** 2)}
                           for n, p in module.named_parameters()], lr=eta, momentum=0.9)
    generator = generator_from_seed(0)
    for _ in range(10):
        batch = task.train_batch(generator)
        for optimizer, owner, model in ((base_opt, task.base, base_module), (opt, task, module)):
            optimizer.zero_grad()
            owner.module_loss(model, batch).backward()
            optimizer.step()
    for (name, p), q in zip(module.named_parameters(), base_module.parameters()):
        assert torch.allclose(task.scales[name] * p.detach(), q.detach(), rtol=1e-10, atol=1e-12)
    batch = task.eval_batch("train")
    assert float(task.normalized_loss(task.module_loss(module, batch).detach())) == pytest.approx(
        float(task.base.normalized_loss(task.base.module_loss(base_module, batch))), rel=1e-10)


def test_family_samples_scales_in_range_and_validates():
    family = tasks.get("augmented", family={"name": "quadratic", "kwargs": {"dim": [2, 3]}},
                       loss_scale=[0.01, 100])
    cs = [family.sample_seed(seed).c for seed in range(40)]
    assert 0.01 <= min(cs) < 0.1 and 10 < max(cs) <= 100
    assert all(set(family.sample_seed(s).scales.values()) == {1.0} for s in range(3))
    assert tasks.get("augmented", family="rosenbrock").sample_seed(0).c == 1.0
    for kwargs, key in (({"loss_scale": [0.0, 1.0]}, "loss_scale"),
                        ({"loss_scale": [1.0, math.inf]}, "loss_scale"),
                        ({"param_scale": [2.0, 1.0]}, "param_scale"),
                        ({"param_scale": 3.0}, "param_scale"),
                        ({"family": {"nme": "quadratic"}}, "family")):
        with pytest.raises(ValueError, match=key):
            tasks.get("augmented", **{"family": "quadratic", **kwargs})
    with pytest.raises(ValueError, match="unknown task family"):
        tasks.get("augmented", family="no_such_family")
    task = tasks.get("augmented", family="logistic_regression", loss_scale=[2, 2],
                     dtype=F64).sample_seed(0)
    assert task.is_classification and task.init_params()["weight"].dtype == F64
    x, y = task.eval_batch("test")
    assert 0.0 <= float(task.accuracy(task.init_params(), (x, y))) <= 1.0


def _augmented_mixture():
    return tasks.get("augmented", loss_scale=[0.01, 100], param_scale=[0.5, 2], dtype=F64, family={
        "name": "mixture", "kwargs": {"components": {
            "quadratic": {"dim": [3, 6]},
            "mlp": {"datasets": ["synthetic"], "width": [5, 5], "depth": [1, 1],
                    "activations": ["tanh"], "batch_sizes": [8], "synthetic_examples": 64,
                    "synthetic_features": 4, "synthetic_classes": 3}}}})


def test_batched_losses_equal_each_tasks_loss():
    family = _augmented_mixture()
    group = [t for t in (family.sample_seed(s) for s in range(30))
             if t.base.name == "quadratic"][:4]
    assert len({t.batch_key() for t in group}) == 1 and len({t.c for t in group}) == 4
    batch = type(group[0]).stack(group)
    params = [t.init_params(generator_from_seed(i)) for i, t in enumerate(group)]
    stacked = {"x": batch.stack_values("x", [p["x"] for p in params])}
    losses = batch.loss(stacked, batch.train_batch([None] * 4))
    expected = torch.stack([t.loss(p, None) for t, p in zip(group, params)])
    assert torch.allclose(losses, expected, rtol=1e-13)
    assert torch.allclose(batch.normalized_loss(losses),
                          torch.stack([t.normalized_loss(v) for t, v in zip(group, expected)]),
                          rtol=1e-13)
    sub = batch.select([2, 0])
    assert torch.allclose(sub.loss({"x": stacked["x"][[2, 0]]}, sub.train_batch([None, None])),
                          expected[[2, 0]], rtol=1e-13)


def test_vectorised_meta_gradient_equals_the_loop_on_augmented_tasks():
    from metaopt.meta import InnerRunPool, MetaLoss, TruncatedBPTT, VectorisedPool, make_horizon
    from tests.meta.helpers import learned_rule

    learned = learned_rule(hidden_size=4)
    weights = learned.meta_parameters()
    family = _augmented_mixture()
    pools = [cls(learned, family, 6, 4, make_horizon("log_uniform", min_length=2, max_length=10),
                 MetaLoss("mean", "train")) for cls in (InnerRunPool, VectorisedPool)]
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    for _ in range(2):
        grads = []
        for pool, generator in zip(pools, generators):
            pool.refresh(weights, generator)
            grads.append(TruncatedBPTT().estimate(pool, weights, generator).grads)
        assert pools[1].fallback is None
        keys = [r.task.batch_key() for r in pools[1].runs if r is not None]
        assert None not in keys and max(keys.count(k) for k in keys) >= 2  # a stacked group
        scale = max(float(g.abs().max()) for g in grads[0].values())
        assert max(float((grads[0][k] - grads[1][k]).abs().max())
                   for k in grads[0]) <= 1e-12 * scale
