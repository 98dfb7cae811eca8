"""Divergence anatomy against the analytic Rosenbrock Hessian, the heavy-ball iteration matrix's
eigenvalues (numpy) and torch.optim.SGD itself."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metaopt.analysis.divergence import (
    divergence_anatomy,
    heavy_ball_grid,
    heavy_ball_growth,
    heavy_ball_max_stable_lr,
    point_hessians,
    rule_of_thumb_lr,
)
from tasks.test_functions import rosenbrock

START = (-1.5, 2.0)


def rosenbrock_hessian(x: float, y: float) -> np.ndarray:
    """∇² of (1 − x)² + 100 (y − x²)², by hand."""
    return np.array([[2 - 400 * (y - x * x) + 800 * x * x, -400 * x], [-400 * x, 200.0]])


@pytest.mark.parametrize("lr, beta, lam", [(0.01, 0.99, 2092.25), (0.001, 0.99, 2092.25),
                                           (0.1, 0.0, 5.0), (0.5, 0.9, 1.0), (0.02, 0.5, 300.0)])
def test_growth_is_the_iteration_matrix_spectral_radius(lr, beta, lam):
    matrix = np.array([[beta, lam], [-lr * beta, 1 - lr * lam]])
    assert heavy_ball_growth(lr, beta, lam) == pytest.approx(max(abs(np.linalg.eigvals(matrix))),
                                                             rel=1e-12)
    stable = lr < heavy_ball_max_stable_lr(beta, lam)
    assert (heavy_ball_growth(lr, beta, lam) < 1) == stable


def test_point_hessians_equal_the_analytic_rosenbrock_hessian():
    points = torch.tensor([START, (1.0, 1.0), (0.3, -0.7), (2.0, 4.5)], dtype=torch.float64)
    expected = np.stack([rosenbrock_hessian(*p) for p in points.tolist()])
    np.testing.assert_allclose(point_hessians(rosenbrock, points).numpy(), expected, rtol=1e-14)


def test_anatomy_of_the_journal_divergence():
    bad = divergence_anatomy(rosenbrock, START, lr=0.01, beta=0.99, steps=1000, curvature_steps=10)
    good = divergence_anatomy(rosenbrock, START, lr=0.001, beta=0.99, steps=1000,
                              curvature_steps=10)
    oracle = rosenbrock_hessian(*START)
    lam = np.linalg.eigvalsh(oracle)
    for run in (bad, good):
        np.testing.assert_allclose(run.hessian.numpy(), oracle, rtol=1e-14)
        np.testing.assert_allclose(run.eigenvalues.numpy(), lam, rtol=1e-12)
        assert run.condition_number == pytest.approx(lam[1] / lam[0], rel=1e-12)
        assert run.condition_number > 100  # the journal's "κ >> 100"
    assert bad.diverged and not math.isfinite(float(bad.losses[-1]))
    assert not good.diverged and float(good.losses[-1]) < 1e-3 * float(good.losses[0])
    assert bad.lr_lambda_max > 2 * (1 + 0.99) > good.lr_lambda_max
    assert bad.predicted_growth > 1 > good.predicted_growth
    # The velocity outgrows the start's linear prediction: curvature rises along the blow-up.
    assert float(bad.velocity_growth[2:].max()) > bad.predicted_growth
    assert float(bad.lambda_max_path[3]) > 100 * lam[1]
    assert rule_of_thumb_lr(0.99) == pytest.approx(1e-5)


def test_measured_growth_equals_prediction_on_the_local_quadratic():
    hessian = torch.tensor(rosenbrock_hessian(*START))

    def quadratic(v):
        return 0.5 * v @ hessian @ v

    run = divergence_anatomy(quadratic, (0.3, -0.2), lr=0.01, beta=0.99, steps=60)
    assert not run.diverged
    lam_max = float(np.linalg.eigvalsh(hessian.numpy())[1])
    assert float(run.velocity_growth[-1]) == pytest.approx(heavy_ball_growth(0.01, 0.99, lam_max),
                                                           rel=1e-6)


def test_grid_equals_torch_sgd_runs():
    lrs, betas = [1e-3, 2e-3, 3e-3, 1e-2], [0.0, 0.99]
    grid = heavy_ball_grid(rosenbrock, START, lrs, betas, steps=150)
    for i, beta in enumerate(betas):
        for j, lr in enumerate(lrs):
            x = torch.tensor(START, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.SGD([x], lr=lr, momentum=beta)
            diverged_at = -1
            for t in range(151):
                opt.zero_grad()
                loss = rosenbrock(x)
                if not torch.isfinite(loss):
                    diverged_at = t
                    break
                if t < 150:
                    loss.backward()
                    opt.step()
            assert int(grid.diverged_at[i, j]) == diverged_at, (beta, lr)
            if diverged_at < 0:
                assert float(grid.final_loss[i, j]) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert grid.diverged[:, -1].all() and not grid.diverged[:, 0].any()
    assert grid.max_stable_lr().tolist() == [2e-3, 2e-3]
