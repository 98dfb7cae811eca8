"""Hessian instruments against dense float64 oracles (torch.linalg.eigvalsh, exact trace)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metaopt.analysis import (
    condition_number,
    curvature_along_path,
    function_hessian,
    hessian_along_trajectory,
    hessian_density,
    hessian_eigenvalues,
    hessian_extremes,
    hessian_trace,
)
from metaopt.rules.hvp import rademacher_like
from tasks.test_functions import himmelblau, rosenbrock, saddle

from .helpers import dense, tiny_mlp


@pytest.fixture(scope="module")
def mlp():
    model, loss_fn, batch = tiny_mlp()
    hessian = dense(model, loss_fn, batch)
    return model, loss_fn, batch, hessian, torch.linalg.eigvalsh(hessian)


def test_top_k_by_magnitude_matches_eigvalsh(mlp):
    model, loss_fn, batch, _, exact = mlp
    got = hessian_eigenvalues(model, loss_fn, batch, k=4)
    want = exact[torch.argsort(exact.abs(), descending=True)][:4]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_algebraic_ends_match_eigvalsh(mlp, which):
    model, loss_fn, batch, _, exact = mlp
    assert exact[0] < 0 < exact[-1]  # an indefinite Hessian: both ends differ from |λ| order
    got = hessian_eigenvalues(model, loss_fn, batch, k=3, which=which)
    want = exact.flip(0)[:3] if which == "largest" else exact[:3]
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_extremes_and_saddle_indicator(mlp):
    model, loss_fn, batch, _, exact = mlp
    ends = hessian_extremes(model, loss_fn, batch)
    assert ends.lambda_max == pytest.approx(float(exact[-1]), rel=1e-8)
    assert ends.lambda_min == pytest.approx(float(exact[0]), rel=1e-7)
    assert ends.saddle and math.isnan(ends.condition_number)


def test_condition_number_of_positive_definite_least_squares():
    g = torch.Generator().manual_seed(3)
    model = nn.Linear(4, 1).double()
    x = torch.randn(40, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0],
                                                                           dtype=torch.float64)
    batch = (x, torch.randn(40, 1, generator=g, dtype=torch.float64))
    exact = torch.linalg.eigvalsh(dense(model, nn.functional.mse_loss, batch))
    ends = hessian_extremes(model, nn.functional.mse_loss, batch)
    assert not ends.saddle
    assert ends.condition_number == pytest.approx(float(exact[-1] / exact[0]), rel=1e-7)
    assert float(condition_number(exact)) == pytest.approx(ends.condition_number, rel=1e-7)


def test_hutchinson_trace_within_its_error_of_the_exact_trace(mlp):
    model, loss_fn, batch, hessian, _ = mlp
    samples = 400
    estimate = hessian_trace(model, loss_fn, batch, samples=samples,
                             generator=torch.Generator().manual_seed(0))
    # Var(zᵀHz) for Rademacher z = 2 Σ_{i≠j} H_ij² (independent of the estimator's own spread).
    sigma = math.sqrt(2 * float((hessian ** 2).sum() - (hessian.diagonal() ** 2).sum()) / samples)
    assert abs(estimate.mean - float(hessian.trace())) <= 4 * sigma
    assert estimate.std_error == pytest.approx(sigma, rel=0.25)
    again = hessian_trace(model, loss_fn, batch, samples=samples,
                          generator=torch.Generator().manual_seed(0))
    assert again.mean == estimate.mean


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # Per-coordinate scaled quadratic: H = diag(2a), so zᵀHz = tr H for every ±1 probe.
    model = nn.Linear(3, 1, bias=False).double()
    a = torch.tensor([[1.0], [4.0], [0.25]], dtype=torch.float64)
    # model(I) = Wᵀ, so the loss Σ a_i W_i² reaches the weights through the functional call
    estimate = hessian_trace(model, lambda out, _: (a * out ** 2).sum(),
                             (torch.eye(3, dtype=torch.float64), None), samples=5)
    assert estimate.mean == pytest.approx(2 * 5.25, abs=1e-12) and estimate.std_error < 1e-12


def test_slq_weights_are_gauss_quadrature_of_the_start_vector(mlp):
    model, loss_fn, batch, hessian, _ = mlp
    iters = 6
    result = hessian_density(model, loss_fn, batch, iters=iters, runs=1, bins=400,
                             generator=torch.Generator().manual_seed(5))
    params = [p.detach() for p in model.parameters()]
    v = torch.cat([z.reshape(-1) for z in
                   rademacher_like(params, torch.Generator().manual_seed(5))])
    v = v / v.norm()
    nodes, weights = result.nodes[0], result.weights[0]
    # m-point Gauss quadrature integrates polynomials of degree < 2m exactly: Σ τ θ^p = vᵀHᵖv.
    for p in range(2 * iters):
        exact = float(v @ torch.linalg.matrix_power(hessian, p) @ v)
        assert float((weights * nodes ** p).sum()) == pytest.approx(exact, rel=1e-8, abs=1e-10)
    step = float(result.grid[1] - result.grid[0])
    assert float(result.density.sum()) * step == pytest.approx(1.0, abs=1e-12)
    assert result.grid[0] < nodes.min() and result.grid[-1] > nodes.max()


def test_slq_with_full_lanczos_finds_every_eigenvalue(mlp):
    model, loss_fn, batch, _, exact = mlp
    n = exact.numel()
    result = hessian_density(model, loss_fn, batch, iters=n, runs=2, bins=2000)
    nodes = result.nodes[0].sort().values
    torch.testing.assert_close(nodes, exact, rtol=1e-6, atol=1e-8)
    # averaged over runs, the density's mean is close to tr(H)/n (expectation over probes)
    mean = float((result.grid * result.density).sum() * (result.grid[1] - result.grid[0]))
    assert mean == pytest.approx(float(exact.mean()), abs=0.5 * float(exact.abs().max()) / n ** 0.5)


def test_exact_2d_hessians():
    point = torch.tensor([-1.5, 2.0], dtype=torch.float64)
    # f_xx = 2 − 400y + 1200x², f_xy = −400x, f_yy = 200 (journal entry 4's start)
    want = torch.tensor([[1902.0, 600.0], [600.0, 200.0]], dtype=torch.float64)
    torch.testing.assert_close(function_hessian(rosenbrock, point), want)
    points = torch.tensor([[0.0, 0.0], [3.0, 2.0], [-1.5, 2.0]], dtype=torch.float64)
    curv = curvature_along_path(lambda v: saddle(v) + 0 * himmelblau(v), points)
    torch.testing.assert_close(curv.eigenvalues, torch.tensor([[-2.0, 2.0]] * 3,
                                                              dtype=torch.float64))
    assert curv.saddle.all()
    torch.testing.assert_close(curv.condition_number, torch.ones(3, dtype=torch.float64))
    rb = curvature_along_path(rosenbrock, point[None])
    eig = torch.linalg.eigvalsh(want)
    assert float(rb.condition_number[0]) == pytest.approx(float(eig[1] / eig[0]), rel=1e-12)
    assert not rb.saddle[0]
    minimum = curvature_along_path(himmelblau, torch.tensor([[3.0, 2.0]], dtype=torch.float64))
    assert float(minimum.gradient_norm[0]) == 0.0 and minimum.eigenvalues.min() > 0


def test_hessian_along_trajectory_matches_dense_at_each_snapshot(mlp):
    model, loss_fn, batch, _, _ = mlp
    before = [p.detach().clone() for p in model.parameters()]
    snapshots = [before, [p * 0.5 for p in before]]
    records = hessian_along_trajectory(model, loss_fn, batch, snapshots, k=2, trace_samples=4)
    for snapshot, record in zip(snapshots, records):
        exact = torch.linalg.eigvalsh(dense(model, loss_fn, batch, snapshot))
        assert record.extremes.lambda_max == pytest.approx(float(exact[-1]), rel=1e-7)
        assert record.extremes.lambda_min == pytest.approx(float(exact[0]), rel=1e-6)
        assert record.trace is not None and record.trace.samples == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="snapshots"):
        hessian_along_trajectory(model, loss_fn, batch, [[before[0]]])


def test_bad_arguments_are_named(mlp):
    model, loss_fn, batch, _, _ = mlp
    with pytest.raises(ValueError, match="which"):
        hessian_eigenvalues(model, loss_fn, batch, which="top")
    with pytest.raises(ValueError, match="samples"):
        hessian_trace(model, loss_fn, batch, samples=1)
    with pytest.raises(ValueError, match="sigma_squared"):
        hessian_density(model, loss_fn, batch, sigma_squared=float("nan"))
