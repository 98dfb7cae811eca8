"""Runs of every family through shared rule steps (``metaopt.meta.flat_buckets``), float64,
against the loop engine (each run unrolled on its own, its tensors stepped as they are).

The oracle sees everything the flat path could get wrong: a group's padding read from the wrong
column, a gradient placed at another coordinate, a run constant (GARO's element counts) taken
from the flat run instead of the real one, a state given back to the wrong run. A rule whose
step is not the same on the concatenation (each tensor normalised by its own norm) is refused
by the probe, and forcing it through the flat path must show a difference.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import metaopt.meta.flat_unroll as flat_unroll
import tasks
from metaopt.meta import InnerRunPool, MetaLoss, TruncatedBPTT, VectorisedPool, make_horizon
from metaopt.meta.batch_plan import rule_flattens_exactly, task_label
from metaopt.meta.flat_buckets import FlatBatch, GroupLayout, flat_row, plan_buckets

from .test_vectorised_families import (
    DT,
    EXACT_FAMILIES,
    FAMILIES,
    assert_engines_agree,
    learned,
    relative_error,
)

EVERY_FAMILY = {**FAMILIES["point"], **FAMILIES["mlp"], **FAMILIES["linear"],
                **FAMILIES["sequence"], **FAMILIES["cnn"],
                "autoencoder_digits": FAMILIES["autoencoder"]["autoencoder_digits"],
                **EXACT_FAMILIES["vit"]}


def mixture():
    return tasks.get("augmented", dtype=DT, loss_scale=[0.1, 10.0], param_scale=[0.5, 2.0],
                     family={"name": "mixture", "kwargs": {"components": EVERY_FAMILY}})


def run_both(rule, *, num_runs=12, steps=2, force_flat=False):
    weights = rule.meta_parameters()
    pools = [cls(rule, mixture(), num_runs, 3, make_horizon("log_uniform", min_length=2,
                                                              max_length=8),
                 MetaLoss("mean", "train", divergence_threshold=100.0))
             for cls in (InnerRunPool, VectorisedPool)]
    if force_flat:
        pools[1]._pads_exactly = pools[1]._flat = True
    generators = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)]
    results = []
    for _ in range(steps):
        step = []
        for pool, generator in zip(pools, generators):
            pool.refresh(weights, generator)
            step.append(TruncatedBPTT().estimate(pool, weights, generator))
        results.append((step, [[list(r.params) if r else None for r in p.runs] for p in pools]))
    return results


@pytest.mark.parametrize("scale", ["none", "prodigy"])
def test_runs_of_every_family_share_buckets_and_equal_the_loop(scale, monkeypatch):
    buckets = []
    original = flat_unroll._unroll_bucket

    def record(pool, groups, *args):
        buckets.append({task_label(pool.runs[g[0]].task) for g in groups})
        return original(pool, groups, *args)
    monkeypatch.setattr(flat_unroll, "_unroll_bucket", record)
    results = run_both(learned(scale))
    assert any(len(kinds) >= 3 for kinds in buckets), buckets  # families share a rule step
    assert_engines_agree(results)


class _PerTensorNormalised:
    """θ_i ← θ_i − η g_i/‖g_i‖ per tensor: pads exactly, but is not its step on the
    concatenation (one norm over all tensors)."""

    def __init__(self):
        self.module = nn.Module()
        self.module.log_lr = nn.Parameter(torch.tensor(-2.0, dtype=DT))

    def meta_parameters(self):
        return dict(self.module.named_parameters())

    def init(self, params, weights, horizon=None):
        return {"step": torch.zeros((), dtype=DT)}

    def step(self, params, grad_fn, state, weights):
        _, grads = grad_fn(params)
        lr = weights["log_lr"].exp()
        return ([p - lr * g / (g.square().sum() + 1e-30).sqrt() for p, g in zip(params, grads)],
                {"step": state["step"] + 1})

    def trace(self, state):
        return {}


def test_the_probe_refuses_a_rule_that_does_not_flatten_and_the_oracle_sees_it():
    for scale in ("none", "distance", "prodigy"):
        rule = learned(scale)
        assert rule_flattens_exactly(rule, rule.meta_parameters())
    rule = _PerTensorNormalised()
    assert not rule_flattens_exactly(rule, rule.meta_parameters())
    for (loop, vectorised), _ in run_both(rule, steps=1):  # its groups keep their tensors
        assert relative_error(loop.grads, vectorised.grads) <= 1e-10
    forced = run_both(rule, steps=1, force_flat=True)
    assert max(relative_error(loop.grads, vec.grads) for (loop, vec), _ in forced) > 1e-6


class _Reordered:
    """GARO whose step returns its state's entries in reverse order: the same rule."""

    def __init__(self, inner):
        self.inner, self.module = inner, inner.module

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, params, grad_fn, state, weights):
        params, state = self.inner.step(params, grad_fn, state, weights)
        return params, dict(reversed(state.items()))


def test_the_probe_compares_state_entries_by_name_not_by_order():
    rule = _Reordered(learned("prodigy"))
    assert rule_flattens_exactly(rule, rule.meta_parameters())


def test_buckets_merge_groups_by_size_within_the_padding_budget():
    lengths = [[100], [2, 2], [3], [90, 95]]
    assert plan_buckets(lengths, budget=5) == [[1, 2], [3], [0]]
    assert plan_buckets(lengths, budget=20) == [[1, 2], [3, 0]]  # 3·100 − 285 = 15
    assert plan_buckets(lengths, budget=10 ** 6) == [[1, 2, 3, 0]]
    for budget in (0, 5, 50, 500):
        for bucket in plan_buckets(lengths, budget=budget):
            runs = [n for i in bucket for n in lengths[i]]
            assert len(bucket) == 1 or len(runs) * max(runs) - sum(runs) <= budget


def test_the_start_up_report_says_the_groups_share_the_rule_steps():
    rule = learned("prodigy")
    pool = VectorisedPool(rule, mixture(), 8, 3, make_horizon("constant", 4),
                          MetaLoss("mean", "train"))
    text = pool.describe(rule.meta_parameters(), probe=16)
    assert "one flat vector" in text and "share flat buckets" in text and "alone" not in text
    rule = _PerTensorNormalised()  # pads exactly, does not flatten: groups keep their tensors
    pool = VectorisedPool(rule, mixture(), 8, 3, make_horizon("constant", 4),
                          MetaLoss("mean", "train"))
    text = pool.describe(rule.meta_parameters(), probe=16)
    assert "pads exactly" in text and "alone in their group" in text and "flat" not in text


def test_rescaled_groups_take_one_row_multiply_and_keep_their_scales_when_selected():
    """An augmented group (θ = s ⊙ θ', one s per run and tensor) and a plain one in one bucket:
    the rows rescaled by one multiply give every run its own loss and gradient (float64, each
    task on its own tensors), zero beyond its coordinates, and a selection keeps each row's
    scales."""
    augmented = tasks.get("augmented", dtype=DT, loss_scale=[0.1, 10.0], param_scale=[0.5, 2.0],
                          family={"name": "mlp", "kwargs": {
                              "width": [4, 12], "depth": [1, 1], "activations": ["tanh"],
                              "datasets": ["synthetic"], "batch_sizes": [16]}})
    plain = tasks.get("quadratic", dtype=DT, dim=[2, 6])
    groups = [[augmented.sample_seed(s) for s in (1, 2, 3)], [plain.sample_seed(s) for s in (4, 5)]]
    runs = [(task, task.init_params(torch.Generator().manual_seed(7)))
            for g in groups for task in g]
    batches = [type(g[0]).stack(g) for g in groups]
    names = [list(g[0].init_params()) for g in groups]
    layouts = [GroupLayout(batch, n, [[v.shape for v in p.values()] for t, p in runs if t in g],
                           "cpu") for batch, n, g in zip(batches, names, groups)]
    real = [sum(v.numel() for v in p.values()) for _, p in runs]
    width = max([max(real) + 1] + [layout.size for layout in layouts if layout.identity])
    flat = FlatBatch(batches, names, [layout.place(width) for layout in layouts], width)
    assert [g.tensor_scales() is not None for g in flat.groups] == [True, False]
    assert flat.row_scales is not None
    rows = torch.stack([flat_row(list(p.values()), width) for _, p in runs]).requires_grad_()
    seeds = [torch.Generator().manual_seed(b) for b in range(len(runs))]
    loss, (grad,) = flat.loss_and_grads({"flat": rows}, flat.train_batch(seeds), grad=True)
    for b, ((task, params), n) in enumerate(zip(runs, real)):
        own = {k: v.clone().requires_grad_() for k, v in params.items()}
        expected = task.loss(own, task.train_batch(torch.Generator().manual_seed(b)))
        expected_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            expected, list(own.values()))])
        assert _relative(loss[b], expected) < 1e-13
        assert _relative(grad[b, :n], expected_grad) < 1e-13
        assert torch.count_nonzero(grad[b, n:]) == 0
    kept = flat.select([1, 3])
    seeds = [torch.Generator().manual_seed(b) for b in (1, 3)]
    assert torch.equal(kept.row_scales, flat.row_scales[[1, 3]])
    assert _relative(kept.loss({"flat": rows[[1, 3]]}, kept.train_batch(seeds)),
                     loss[[1, 3]]) < 1e-13


def _relative(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)
