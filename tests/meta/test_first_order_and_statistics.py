"""Meta-training defects once found: first-order BPTT and the exported feature statistics."""
from __future__ import annotations

import torch

from metaopt.checkpoint import load_checkpoint, save_checkpoint
from metaopt.meta import MetaLoss, MetaTrainer, TruncatedBPTT, unroll_segment

from .helpers import learned_rule, pool, quadratic_family


def test_first_order_bptt_trains_and_equals_a_gradient_with_constant_inner_gradients():
    # second_order=False used to crash on the first meta-step ("backward through the graph a
    # second time"): the meta-loss reads the loss whose graph the inner grad call had freed.
    family = quadratic_family()
    learned = learned_rule()
    runs = pool(learned, family, second_order=False)
    trainer = MetaTrainer(learned, runs, TruncatedBPTT(), outer_lr=1e-2, seed=0)
    before = {k: v.detach().clone() for k, v in learned.module.named_parameters()}
    metrics = [trainer.step() for _ in range(3)]
    assert trainer.skipped_updates == 0
    assert all(torch.isfinite(torch.tensor(m["meta_loss"])) for m in metrics)
    assert any(not torch.equal(v, before[k]) for k, v in learned.module.named_parameters())


def test_first_order_meta_gradient_differs_from_second_order_by_the_hessian_term():
    family = quadratic_family()
    learned = learned_rule()
    task = family.sample_seed(5)
    weights = learned.meta_parameters()
    names = list(task.init_params())
    params = [task.init_params()[n] for n in names]

    def meta_grad(second_order):
        state = learned.init(params, {k: v.detach() for k, v in weights.items()}, horizon=6)
        result = unroll_segment(learned, weights, task, names, params, state, 6,
                                MetaLoss("mean", "train"), batch_seed=1,
                                second_order=second_order)
        return torch.autograd.grad(result.loss, list(weights.values()), allow_unused=True)
    first, second = meta_grad(False), meta_grad(True)
    assert all(g is None or torch.isfinite(g).all() for g in first)
    assert any(g1 is not None and not torch.allclose(g1, g2) for g1, g2 in zip(first, second))


def test_meta_training_writes_the_feature_statistics_it_saw_into_the_export(tmp_path):
    family = quadratic_family()
    learned = learned_rule()
    runs = pool(learned, family, num_runs=3, horizon=10)
    trainer = MetaTrainer(learned, runs, TruncatedBPTT(), outer_lr=1e-3, seed=0,
                          statistics_decay=0.5)
    for _ in range(4):
        trainer.step()
    mean = learned.module.init_feature_mean
    var = learned.module.init_feature_var
    assert not torch.equal(mean, torch.zeros_like(mean))
    assert not torch.equal(var, torch.ones_like(var))
    # the oracle: the same EMA recomputed by hand from the live runs after one more step
    expected_mean, expected_var = mean.clone(), var.clone()
    trainer.step()
    states = runs.live_states()
    observed_mean = torch.stack([s["feature_mean"].mean(0) for s in states]).mean(0)
    observed_var = torch.stack([s["feature_var"].mean(0) for s in states]).mean(0)
    torch.testing.assert_close(learned.module.init_feature_mean,
                               0.5 * expected_mean + 0.5 * observed_mean)
    torch.testing.assert_close(learned.module.init_feature_var,
                               0.5 * expected_var + 0.5 * observed_var)
    path = save_checkpoint(tmp_path / "c.safetensors", learned.module)
    loaded = load_checkpoint(path).controller
    torch.testing.assert_close(loaded.init_feature_mean,
                               learned.module.init_feature_mean.to(loaded.init_feature_mean))
    state = loaded.initial_state()
    assert torch.equal(state["feature_mean"][0], loaded.init_feature_mean)
