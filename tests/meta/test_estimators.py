"""Truncated BPTT and antithetic ES estimate the same meta-gradient on a smooth problem.

ES's estimate ``(1/P) Σ ε εᵀ g`` has mean ``g`` and, for P pairs in d dimensions, expected
squared error ≈ (d + 1)‖g‖²/P. The estimators take any subset of the controller's weights as the
meta-parameters; here the three heads (d = 9) with P = 200 pairs, so the cosine to ``g`` is ≈ 0.98.
"""
from __future__ import annotations

import math

import torch

from metaopt.meta import AntitheticES, TruncatedBPTT

from .helpers import learned_rule, pool, quadratic_family


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads.values()])


def test_bptt_and_es_agree_in_expectation():
    family = quadratic_family(dim=(3, 3))
    learned = learned_rule(hidden_size=2, seed=2)
    generator = torch.Generator().manual_seed(0)
    weights = {k: w for k, w in learned.meta_parameters().items() if k.startswith("head_")}
    assert sum(w.numel() for w in weights.values()) == 9

    bptt_pool = pool(learned, family, num_runs=1, truncation_length=4, horizon=4)
    bptt_pool.refresh(weights, torch.Generator().manual_seed(1))
    es_pool = pool(learned, family, num_runs=1, truncation_length=4, horizon=4)
    es_pool.refresh(weights, torch.Generator().manual_seed(1))  # the same tasks and batches

    exact = _flat(TruncatedBPTT().estimate(bptt_pool, weights, generator).grads)
    es = AntitheticES(num_pairs=200, sigma=1e-4).estimate(es_pool, weights, generator)
    estimate = _flat(es.grads)
    cosine = float(torch.nn.functional.cosine_similarity(exact, estimate, dim=0))
    relative_error = float((estimate - exact).norm() / exact.norm())
    expected_error = math.sqrt((exact.numel() + 1) / 200)
    assert cosine > 0.93, cosine
    print(f"BPTT vs ES: cosine {cosine:.4f}, relative error {relative_error:.4f}")
    assert relative_error < 1.5 * expected_error, (relative_error, expected_error)
    # an unrelated direction is far from the gradient: the thresholds can fail
    noise = torch.randn(exact.shape, generator=generator, dtype=exact.dtype)
    assert float(torch.nn.functional.cosine_similarity(exact, noise, dim=0)) < 0.5


def test_es_advances_runs_and_keeps_no_graph():
    family = quadratic_family()
    learned = learned_rule(hidden_size=2)
    runs = pool(learned, family, num_runs=2, truncation_length=4, horizon=12)
    generator = torch.Generator().manual_seed(0)
    runs.refresh(learned.meta_parameters(), generator)
    estimate = AntitheticES(num_pairs=2, sigma=0.01).estimate(
        runs, learned.meta_parameters(), generator)
    assert all(r.step == 4 for r in runs.runs)
    assert all(p.grad_fn is None and not p.requires_grad for r in runs.runs for p in r.params)
    assert math.isfinite(estimate.loss)
    assert all(torch.isfinite(g).all() for g in estimate.grads.values())
