"""The learned-vs-tuned protocol's pieces: cosine Adam, interior lr tuning, speedup."""
from __future__ import annotations

import math

import pytest
import torch

import tasks
from metaopt.evaluation import CosineAdam, make_optimizer, speedup, tune_lr_interior


def test_cosine_adam_equals_adam_with_torch_cosine_annealing():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(5, generator=g, dtype=torch.float64)
    ours = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    theirs = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = CosineAdam([ours], lr=0.1, total_steps=7, final_fraction=0.1)
    ref = torch.optim.Adam([theirs], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=7, eta_min=0.01)
    for _ in range(10):  # past T the lr stays at its floor (CosineAnnealingLR would rise again)
        for p, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            (p - target).pow(4).sum().backward()
            o.step()
        if sched.last_epoch < 7:
            sched.step()
    # after T steps CosineAnnealingLR sits at eta_min too; the first 7 steps follow it exactly
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert make_optimizer("adam_cosine", lr=0.2, total_steps=5).cls is CosineAdam
    with pytest.raises(ValueError, match="total_steps"):
        CosineAdam([ours], total_steps=0)


def test_interior_tuning_widens_the_grid_until_the_best_lr_has_worse_neighbours():
    # SGD on well-conditioned quadratics wants lr ≈ 1/λ ≈ 1: the initial grid [1e-4, 1e-2]
    # puts the best at its top edge; widening must walk up to an interior optimum.
    family = tasks.get("quadratic", dim=(2, 4), condition_number=(1.0, 2.0), dtype=torch.float64)
    result = tune_lr_interior(make_optimizer("sgd"), family, 20, low=1e-4, high=1e-2,
                              per_decade=1)
    lrs = sorted(result.scores)
    index = lrs.index(result.best_lr)
    assert 0 < index < len(lrs) - 1
    assert result.scores[lrs[index - 1]] > result.best_score < result.scores[lrs[index + 1]]
    assert max(lrs) >= 1.0 and result.best_lr > 1e-2


def test_speedup_reads_the_reference_curve():
    steps, losses = [0, 10, 20, 30, 40], [1.0, 0.5, 0.2, 0.1, 0.05]
    assert speedup(steps, losses, 0.2, 10).value == pytest.approx(2.0)
    assert speedup(steps, losses, 0.5, 20).value == pytest.approx(0.5)
    never = speedup(steps, losses, 0.01, 20)
    assert not never.reached and never.value == pytest.approx(2.0)
    assert speedup(steps, losses, math.nan, 20).value == 0.0
