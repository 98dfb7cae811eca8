"""Saddle instruments against closed forms on f = x² − y² (exact Hessian, linear dynamics)."""
from __future__ import annotations

import math

import pytest
import torch

from metaopt.analysis.batched import BatchedOptimizer
from metaopt.analysis.saddles import (
    escape_step,
    near_saddle,
    noise_escape_experiment,
    time_near_saddles,
)
from metaopt.analysis.trajectories import optimizer_factory, run_trajectory
from tasks.test_functions import himmelblau, saddle


def test_deterministic_escape_time_is_the_closed_form():
    # GD on x² − y²: y_t = y0 (1 + 2η)^t, so ‖x_t‖ first exceeds r at t = ⌈log(r/y0)/log(1+2η)⌉
    # (x_t = x0 (1 − 2η)^t is negligible with x0 = 0).
    lr, y0, r = 0.05, 1e-6, 1.0
    traj = run_trajectory(saddle, (0.0, y0), optimizer_factory("SGD", lr=lr), 200)
    assert escape_step(traj.path, (0.0, 0.0), r) == math.ceil(math.log(r / y0)
                                                              / math.log(1 + 2 * lr))
    assert escape_step(traj.path, (0.0, 0.0), 1e6) is None


def test_time_near_saddles_counts_small_gradient_indefinite_points():
    lr, y0 = 0.05, 1e-6
    traj = run_trajectory(saddle, (0.0, y0), optimizer_factory("SGD", lr=lr), 200)
    # ‖∇f‖ = 2|y_t| < tol  ⇔  t < log(tol / (2 y0)) / log(1 + 2η); H = diag(2, −2) everywhere
    tol = 1e-2
    expected = math.ceil(math.log(tol / (2 * y0)) / math.log(1 + 2 * lr))
    assert time_near_saddles(saddle, traj.path, tol) == expected
    # at Himmelblau's minima the gradient vanishes but H is definite: not a saddle
    minima = torch.tensor([[3.0, 2.0], [3.0, 2.0]], dtype=torch.float64)
    assert not near_saddle(himmelblau, minima, 1.0).any()


def _gd_escape_median(lr: float, sigma: float, r: float) -> int:
    # y_t ~ N(0, s_t²), s_t² = η²σ² ((1+2η)^{2t} − 1)/((1+2η)² − 1); half the copies are out once
    # r / s_t = 0.6745 (the normal's quartile), i.e. the first t with s_t ≥ r / 0.6745.
    a = 1 + 2 * lr
    t = 1
    while lr * sigma * math.sqrt((a ** (2 * t) - 1) / (a ** 2 - 1)) < r / 0.6744897501960817:
        t += 1
    return t


@pytest.mark.parametrize("sigma", [1e-4, 1e-2])
def test_noisy_gradient_descent_escape_matches_the_linear_theory(sigma):
    lr, r = 0.1, 1.0
    [result] = noise_escape_experiment(saddle, (0.0, 0.0),
                                       {"gd": BatchedOptimizer("sgd", {"lr": lr})},
                                       [sigma], repeats=400, steps=200, radius=r,
                                       generator=torch.Generator().manual_seed(0))
    assert result.escaped_fraction == 1.0
    assert abs(result.median_steps - _gd_escape_median(lr, sigma, r)) <= 1.5


def test_no_noise_no_escape_and_results_are_reproducible():
    optimizers = {"gd": BatchedOptimizer("sgd", {"lr": 0.1}),
                  "adam": BatchedOptimizer("adam", {"lr": 0.1})}
    runs = [noise_escape_experiment(saddle, (0.0, 0.0), optimizers, [0.0, 1e-3], repeats=16,
                                    steps=100, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a.escape_steps, b.escape_steps)
    by_key = {(r.optimizer, r.sigma): r for r in runs[0]}
    assert (by_key[("gd", 0.0)].escaped_fraction == 0.0
            and math.isinf(by_key[("gd", 0.0)].median_steps))
    assert by_key[("adam", 0.0)].escaped_fraction == 0.0  # ∇f = 0 exactly: m = v = 0, no step
    # Adam normalises the noise away: its escape takes ≈ r / lr steps at any σ
    assert by_key[("adam", 1e-3)].median_steps < by_key[("gd", 1e-3)].median_steps
    with pytest.raises(ValueError, match="sigmas"):
        noise_escape_experiment(saddle, (0.0, 0.0), optimizers, [float("nan")])
