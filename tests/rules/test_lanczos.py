"""Lanczos eigensolver against dense float64 oracles (torch.linalg.eigvalsh)."""
from __future__ import annotations

import pytest
import torch

from metaopt.rules.curvature import probe_curvature
from metaopt.rules.hvp import functional_hvp, matrix_hvp
from metaopt.rules.lanczos import lanczos

from .curvature_helpers import full_hessian, small_mlp, top_by_magnitude, wishart


@pytest.fixture(scope="module")
def mlp_oracle():
    params, loss_fn = small_mlp()
    exact = torch.linalg.eigvalsh(full_hessian(loss_fn, params))
    return params, loss_fn, exact


def test_mlp_top5_matches_full_hessian_within_40_hvps(mlp_oracle):
    params, loss_fn, exact = mlp_oracle
    assert sum(p.numel() for p in params) >= 900
    hvp = functional_hvp(loss_fn, params)
    result = lanczos(hvp, params, k=5, max_iters=40, tol=1e-9,
                     generator=torch.Generator().manual_seed(1))
    assert hvp.count == result.iterations <= 40
    top = top_by_magnitude(exact, 5)
    rel = (result.eigenvalues - top).abs() / top.abs()
    assert rel.max() <= 1e-6, rel
    assert result.eigenvalues.dtype == torch.float64


def test_ritz_vectors_are_eigenvectors(mlp_oracle):
    params, loss_fn, _ = mlp_oracle
    hvp = functional_hvp(loss_fn, params)
    result = lanczos(hvp, params, k=3, max_iters=40, tol=1e-10,
                     generator=torch.Generator().manual_seed(2))
    for value, vector in zip(result.eigenvalues, result.eigenvectors):
        hv = hvp(vector)
        residual = sum(((a - value * b) ** 2).sum() for a, b in zip(hv, vector)).sqrt()
        norm = sum((b ** 2).sum() for b in vector).sqrt()
        assert norm == pytest.approx(1.0, abs=1e-10)
        assert residual <= 1e-6 * abs(value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wishart_top_k_matches_eigvalsh(seed):
    matrix = wishart(300, 600, seed)
    exact = top_by_magnitude(torch.linalg.eigvalsh(matrix), 5)
    like = [torch.zeros(300, dtype=torch.float64)]
    result = lanczos(matrix_hvp(matrix), like, k=5, max_iters=80, tol=1e-6,
                     generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(result.eigenvalues, exact, rtol=1e-8, atol=0)
    assert result.converged


def test_no_ghost_eigenvalues_after_many_iterations():
    # A dominant outlier plus a bulk: plain Lanczos loses orthogonality once the outlier converges
    # and grows spurious copies of it; full reorthogonalisation must keep exactly one.
    matrix = wishart(200, 400, 3)
    matrix[0, 0] += 50.0
    exact = torch.linalg.eigvalsh(matrix)
    like = [torch.zeros(200, dtype=torch.float64)]
    result = lanczos(matrix_hvp(matrix), like, k=10, max_iters=150, tol=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert result.iterations == 150
    near_top = (result.ritz_values - exact[-1]).abs() < 1e-6 * exact[-1]
    assert int(near_top.sum()) == 1
    # and every Ritz value lies in the spectrum's hull
    assert result.ritz_values.min() >= exact[0] - 1e-9
    assert result.ritz_values.max() <= exact[-1] + 1e-9


def test_top_by_magnitude_includes_negative_eigenvalues():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(-1.0, 1.0, 60, dtype=torch.float64)
    spectrum[0], spectrum[-1] = -9.0, 4.0
    matrix = q @ torch.diag(spectrum) @ q.T
    result = lanczos(matrix_hvp(matrix), [torch.zeros(60, dtype=torch.float64)], k=2,
                     max_iters=60, tol=1e-12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.eigenvalues, torch.tensor([-9.0, 4.0], dtype=torch.float64))


def test_repeated_eigenvalues_found_with_multiplicity_by_restarts():
    matrix = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    result = lanczos(matrix_hvp(matrix), [torch.zeros(6, dtype=torch.float64)], k=4,
                     max_iters=6, tol=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.eigenvalues,
                               torch.tensor([5.0, 5.0, 5.0, 1.0], dtype=torch.float64))


def test_warm_start_from_exact_eigenvector_converges_fast():
    matrix = wishart(100, 300, 4)
    matrix[0, 0] += 20.0
    values, vectors = torch.linalg.eigh(matrix)
    like = [torch.zeros(100, dtype=torch.float64)]
    cold = lanczos(matrix_hvp(matrix), like, k=1, max_iters=50, tol=1e-8,
                   generator=torch.Generator().manual_seed(0))
    warm = lanczos(matrix_hvp(matrix), like, k=1, max_iters=50, tol=1e-8,
                   generator=torch.Generator().manual_seed(0), init=[vectors[:, -1]])
    assert warm.iterations == 1 < cold.iterations
    assert warm.eigenvalues[0] == pytest.approx(float(values[-1]), rel=1e-12)


def test_float32_lists_and_generator_determinism():
    params, loss_fn = small_mlp(seed=5)
    params = [p.float() for p in params]
    run = [lanczos(functional_hvp(loss_fn_32 := (lambda ps: loss_fn([p.double() for p in ps])
                                                 .float()), params), params, k=3,
                   max_iters=15, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(run[0].eigenvalues, run[1].eigenvalues)
    assert run[0].eigenvalues.dtype == torch.float64
    assert [v.dtype for v in run[0].eigenvectors[0]] == [torch.float32] * 4
    assert [v.shape for v in run[0].eigenvectors[0]] == [p.shape for p in params]
    del loss_fn_32


@pytest.mark.parametrize("kwargs, name", [({"k": 0}, "k"), ({"max_iters": 0}, "max_iters"),
                                          ({"tol": -1.0}, "tol")])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        lanczos(matrix_hvp(torch.eye(3)), [torch.zeros(3)], **kwargs)


def test_non_finite_operator_reports_nan_instead_of_failing():
    bad = torch.full((4, 4), float("nan"), dtype=torch.float64)
    result = lanczos(matrix_hvp(bad), [torch.zeros(4, dtype=torch.float64)], k=2, max_iters=4)
    assert torch.isnan(result.eigenvalues).all() and not result.converged


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_tolerance_gives_top5_to_1e6_within_40_hvps(mlp_oracle, seed):
    # λ_4 and λ_5 of this 918-parameter MLP are 1.4 % apart; the probe's old default (1e-3)
    # stopped after ~32 HVPs with the 5th eigenvalue 2-4e-6 off.
    params, loss_fn, exact = mlp_oracle
    top = top_by_magnitude(exact, 5)
    assert (top[3] - top[4]).abs() / top[3].abs() < 0.02
    for solve in (lanczos, probe_curvature):
        hvp = functional_hvp(loss_fn, params)
        result = solve(hvp, params, k=5, max_iters=40,
                       generator=torch.Generator().manual_seed(seed))
        assert hvp.count <= 40
        rel = (result.eigenvalues - top).abs() / top.abs()
        assert rel.max() <= 1e-6, (solve.__name__, rel)
