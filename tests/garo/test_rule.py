"""GARORule: the functional path equals the runtime optimizer and independent oracles."""
from __future__ import annotations

import pytest
import torch

from metaopt.garo import BoundController, GARORule
from metaopt.optim import GARO
from tests.rules.objectives import closure_over

from .helpers import awake_controller, constant_controller, regression


def functional_grad_fn(loss_fn, create_graph=False):
    def grad_fn(ps):
        loss = loss_fn(ps)
        return loss, list(torch.autograd.grad(loss, ps, create_graph=create_graph))
    return grad_fn


def run_runtime(params, loss_fn, controller, steps, **kwargs):
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=controller, **kwargs)
    closure = closure_over(opt, loss_fn, live)
    trajectory = []
    for _ in range(steps):
        opt.step(closure)
        trajectory.append([p.detach().clone() for p in live])
    return trajectory, opt


def run_functional(params, loss_fn, controller, steps, direction="sgd", segment_ids=None,
                   num_segments=1):
    rule = GARORule(direction=direction)
    ps = [p.clone().requires_grad_() for p in params]
    state = rule.init(ps, controller, num_segments)
    hyper = {"controller": controller, "segment_ids": segment_ids}
    trajectory = []
    for _ in range(steps):
        ps, state = rule.step(ps, functional_grad_fn(loss_fn), state, hyper)
        ps = [p.detach().requires_grad_() for p in ps]
        trajectory.append([p.detach().clone() for p in ps])
    return trajectory, state


@pytest.mark.parametrize("direction,granularity", [("sgd", "global"), ("adam", "global"),
                                                   ("sgd", "tensor")])
def test_runtime_equals_functional_path_float64(direction, granularity):
    params, loss_fn = regression()
    controller = awake_controller()
    runtime, opt = run_runtime(params, loss_fn, controller, 20, direction=direction,
                               granularity=granularity)
    ids = [0, 1, 2] if granularity == "tensor" else None
    functional, state = run_functional(params, loss_fn, controller, 20, direction, ids,
                                       3 if granularity == "tensor" else 1)
    error = max((a - b).abs().max().item() for ra, fa in zip(runtime, functional)
                for a, b in zip(ra, fa))
    print(f"\nGARO runtime vs functional ({direction}, {granularity}), 20 steps float64: "
          f"max abs error {error:.3e}")
    assert error < 1e-12
    # the controller really did vary the hyperparameters (otherwise the test proves little)
    hist = opt.garo_state["lr"]
    assert torch.allclose(hist, state["lr"], atol=1e-12, rtol=0)
    assert not torch.allclose(state["lr"], torch.full_like(state["lr"], 0.05), atol=1e-4)
    torch.testing.assert_close(opt.garo_state["hidden"], state["hidden"], atol=1e-12, rtol=0)


def test_frozen_controller_is_torch_sgd_with_momentum_and_weight_decay():
    params, loss_fn = regression()
    garo, _ = run_runtime(params, loss_fn, constant_controller(0.05, 0.9, 1e-3), 20)
    ref = [p.clone().requires_grad_() for p in params]
    sgd = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(20):
        sgd.zero_grad()
        loss_fn(ref).backward()
        sgd.step()
    for a, b in zip(garo[-1], ref):
        torch.testing.assert_close(a, b.detach(), atol=1e-13, rtol=1e-12)


def test_group_lr_is_the_rate_the_controller_scales():
    # lr is the untrained controller's rate: step = lr · lr_t / init_lr; a constant controller
    # (lr_t = init_lr) therefore steps with exactly the group's lr; the default lr is init_lr.
    params, loss_fn = regression()
    controller = constant_controller(0.02, 0.0, 1e-8)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO([{"params": live[:2], "lr": 0.06}, {"params": live[2:]}], controller=controller,
               weight_decay_scale=0.0)
    loss_fn(live).backward()
    grads = [p.grad.clone() for p in live]
    before = [p.detach().clone() for p in live]
    opt.step()
    for p, b, g, lr in zip(live, before, grads, [0.06, 0.06, 0.02]):
        torch.testing.assert_close(p.detach(), b - lr * g, atol=1e-14, rtol=0)


def test_frozen_adam_direction_is_torch_adamw_without_first_moment():
    params, loss_fn = regression()
    garo, _ = run_runtime(params, loss_fn, constant_controller(0.01, 0.0, 1e-2), 20,
                          direction="adam")
    ref = [p.clone().requires_grad_() for p in params]
    adamw = torch.optim.AdamW(ref, lr=0.01, betas=(0.0, 0.999), eps=1e-8, weight_decay=1e-2)
    for _ in range(20):
        adamw.zero_grad()
        loss_fn(ref).backward()
        adamw.step()
    for a, b in zip(garo[-1], ref):
        torch.testing.assert_close(a, b.detach(), atol=1e-12, rtol=1e-10)


def test_adam_direction_with_momentum_matches_a_hand_loop():
    params, loss_fn = regression()
    lr, mu, wd, beta2, eps = 0.01, 0.6, 1e-2, 0.999, 1e-8
    garo, _ = run_runtime(params, loss_fn, constant_controller(lr, mu, wd), 10, direction="adam")
    ps = [p.clone() for p in params]
    v = [torch.zeros_like(p) for p in ps]
    b = [torch.zeros_like(p) for p in ps]
    for t in range(1, 11):
        live = [p.clone().requires_grad_() for p in ps]
        grads = torch.autograd.grad(loss_fn(live), live)
        for i, g in enumerate(grads):
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            b[i] = mu * b[i] + g / ((v[i] / (1 - beta2 ** t)).sqrt() + eps)
            ps[i] = ps[i] - lr * (b[i] + wd * ps[i])
    for a, r in zip(garo[-1], ps):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_relative_features_runtime_equals_functional_path_float64():
    params, loss_fn = regression()
    controller = awake_controller(features="relative")
    runtime, opt = run_runtime(params, loss_fn, controller, 20, direction="adam")
    functional, state = run_functional(params, loss_fn, controller, 20, "adam")
    error = max((a - b).abs().max().item() for ra, fa in zip(runtime, functional)
                for a, b in zip(ra, fa))
    assert error < 1e-12, error
    torch.testing.assert_close(opt.garo_state["ref_log_grad_norm"], state["ref_log_grad_norm"])


def test_adam_meta_gradient_is_finite_where_a_coordinate_never_had_a_gradient():
    # √v at v = 0 has an infinite derivative: 0·∞ = NaN used to poison every meta-update of an
    # MLP on digits (always-zero pixels). The forward value is unchanged by the guard.
    params, loss_fn = regression()
    params = params + [torch.zeros(3, dtype=torch.float64)]  # never reached by the loss
    controller = awake_controller()
    weights = {k: v.detach().clone().requires_grad_() for k, v in controller.named_parameters()}
    bound = BoundController(controller, weights)
    rule = GARORule(direction="adam")
    ps = [p.clone().requires_grad_() for p in params]
    state = rule.init(ps, bound)

    def grad_fn(points):
        loss = loss_fn(points[:3]) + 0.0 * points[3].sum()
        return loss, list(torch.autograd.grad(loss, points, create_graph=True))
    for _ in range(3):
        ps, state = rule.step(ps, grad_fn, state, {"controller": bound})
    grads = torch.autograd.grad(loss_fn(ps[:3]), list(weights.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(ps[3], params[3])


@pytest.mark.parametrize("features,direction", [("seed", "sgd"), ("relative", "adam")])
def test_meta_gradient_to_controller_weights_matches_finite_differences(features, direction):
    """d(loss after a 4-step unroll)/d(controller weights), by autograd vs central differences.

    Exact only with ``feature_gradients=True``: finite differences also see how the weights move
    the features; the default detaches them (Andrychowicz et al. 2016), tested just below.
    """
    params, loss_fn = regression()
    controller = awake_controller(scale=0.2, features=features)
    rule = GARORule(feature_gradients=True, direction=direction)
    names = ["head_lr.weight", "head_momentum.bias", "cell.weight_hh"]
    weights = {k: v.detach().clone() for k, v in controller.named_parameters()}

    def unrolled_loss(w):
        bound = BoundController(controller, {**weights, **w})
        ps = [p.clone().requires_grad_() for p in params]
        state = rule.init(ps, bound, horizon=6)
        for _ in range(4):
            ps, state = rule.step(ps, functional_grad_fn(loss_fn, create_graph=True), state,
                                  {"controller": bound})
        return loss_fn(ps)

    leaves = {k: weights[k].clone().requires_grad_() for k in names}
    grads = torch.autograd.grad(unrolled_loss(leaves), list(leaves.values()))
    g = torch.Generator().manual_seed(3)
    for (name, leaf), grad in zip(leaves.items(), grads):
        direction = torch.randn(leaf.shape, generator=g, dtype=leaf.dtype)
        h = 1e-6
        plus = unrolled_loss({name: weights[name] + h * direction}).item()
        minus = unrolled_loss({name: weights[name] - h * direction}).item()
        fd = (plus - minus) / (2 * h)
        analytic = (grad * direction).sum().item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10), name
        assert abs(analytic) > 1e-8, name  # the gradient does reach this weight


def test_rule_never_mutates_inputs():
    params, loss_fn = regression()
    controller = awake_controller()
    rule = GARORule(direction="adam")
    ps = [p.clone() for p in params]
    state = rule.init(ps, controller)
    for _ in range(2):  # non-zero buffers on the second step
        snapshot = [p.clone() for p in ps]
        buffers = [b.clone() for b in state["momentum_buffer"] + state["exp_avg_sq"]]
        hidden = state["hidden"].clone()
        new_ps, new_state = rule.step(ps, functional_grad_fn(lambda q: loss_fn(
            [t.requires_grad_() for t in q])), state, {"controller": controller})
        assert all(torch.equal(a, b) for a, b in zip(ps, snapshot))
        assert all(torch.equal(a, b) for a, b in
                   zip(state["momentum_buffer"] + state["exp_avg_sq"], buffers))
        assert torch.equal(state["hidden"], hidden)
        ps, state = [p.detach() for p in new_ps], new_state


def test_invalid_rule_options():
    with pytest.raises(ValueError, match="direction"):
        GARORule(direction="lion")
    with pytest.raises(ValueError, match="beta2"):
        GARORule(beta2=1.0)


def test_detached_features_drop_only_the_feature_path():
    """Default rule: same forward as feature_gradients=True, a different (truncated) gradient."""
    params, loss_fn = regression()
    controller = awake_controller(scale=0.2)
    results = []
    for exact in (False, True):
        rule = GARORule(feature_gradients=exact)
        ps = [p.clone().requires_grad_() for p in params]
        state = rule.init(ps, controller)
        for _ in range(4):
            ps, state = rule.step(ps, functional_grad_fn(loss_fn, create_graph=True), state,
                                  {"controller": controller})
        loss = loss_fn(ps)
        results.append((loss.item(), torch.autograd.grad(loss, controller.head_lr.weight)[0]))
    assert results[0][0] == results[1][0]
    assert not torch.allclose(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


def test_safe_sqrt_is_the_square_root_with_a_zero_slope_at_zero():
    from metaopt.garo.scale import safe_sqrt
    x = torch.tensor([0.0, 1e-300, 0.25, 4.0], dtype=torch.float64, requires_grad=True)
    y = safe_sqrt(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y.detach(), x.detach().sqrt())
    assert slope[0] == 0.0
    assert torch.equal(slope[1:], 0.5 / x.detach()[1:].sqrt())


def test_adam_meta_gradient_is_finite_where_a_gradient_was_always_zero():
    # the last coordinate meets a zero input (a constant-zero pixel): its gradient is 0 at every
    # step, yet in the graph, so its second moment stays 0, where √v's slope is infinite and the
    # meta-gradient would be 0·∞ = NaN
    controller = awake_controller()
    weights = dict(controller.named_parameters())
    bound = BoundController(controller, weights)
    rule = GARORule(direction="adam")
    ps = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)]
    state = rule.init(ps, bound)

    inputs = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)

    def loss_fn(qs):
        return ((qs[0] * inputs).sum() - 1.0) ** 2
    total = 0.0
    for _ in range(3):
        ps, state = rule.step(ps, functional_grad_fn(loss_fn, create_graph=True), state,
                              {"controller": bound})
        total = total + loss_fn(ps)
    meta = torch.autograd.grad(total, list(weights.values()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in meta)
    assert all(g is None or torch.isfinite(g).all() for g in meta)
