"""Convergence detection against sequences whose answers are known in closed form."""
from __future__ import annotations

import math

import pytest
import torch

from metaopt.analysis.convergence import analyze_convergence, detect_plateaus, steps_to_target


@pytest.mark.parametrize("rho, target", [(0.9, 1e-3), (0.5, 1e-6), (0.99, 0.37)])
def test_steps_to_target_of_a_geometric_sequence(rho, target):
    losses = rho ** torch.arange(2000, dtype=torch.float64)
    expected = math.ceil(math.log(target) / math.log(rho) - 1e-12)
    assert steps_to_target(losses, target) == expected
    # Relative to the initial gap above a known minimum: the same count.
    assert steps_to_target(losses + 3.0, target, relative=True, minimum=3.0) == expected


def test_steps_to_target_never_and_nan():
    assert steps_to_target([1.0, 0.9, float("nan"), 0.8], 0.5) is None
    assert steps_to_target([1.0, None, 0.1], 0.5) == 2


def _plateau_curve():
    t = torch.arange(300, dtype=torch.float64)
    head = 0.5 * 2.0 ** ((100 - t) / 10)           # halves every 10 steps, reaches 0.5 at t = 100
    tail = 0.5 * torch.exp(-(t - 199) / 10)         # leaves the plateau after t = 199
    return torch.where(t < 100, head, torch.where(t <= 199, torch.full_like(t, 0.5), tail))


def test_plateau_found_exactly():
    plateaus = detect_plateaus(_plateau_curve(), window=20, rel_tol=1e-3)
    assert [(p.start, p.end) for p in plateaus] == [(100, 199)]
    assert plateaus[0].level == pytest.approx(0.5) and plateaus[0].length == 100


def test_plateau_respects_min_length_and_scale():
    curve = _plateau_curve()
    assert detect_plateaus(curve, window=20, min_length=101) == []
    # Rescaling the loss does not change where the plateau is (relative test).
    scaled = detect_plateaus(curve * 1e-6, window=20, rel_tol=1e-3, floor=1e-30)
    assert [(p.start, p.end) for p in scaled] == [(100, 199)]
    # A steadily decaying curve (5% per step) has no plateau.
    assert detect_plateaus(0.95 ** torch.arange(500.0), window=20) == []


def test_analyze_convergence_summary():
    report = analyze_convergence(_plateau_curve(), target=1e-2)
    assert report.initial_loss == pytest.approx(0.5 * 2 ** 10)
    assert report.best_step == 299 and report.converged
    # 0.5 exp(-(t-199)/10) <= 1e-2  <=>  t >= 199 + 10 log 50
    assert report.steps_to_target == math.ceil(199 + 10 * math.log(50))
    assert [(p.start, p.end) for p in report.plateaus] == [(100, 199)]
