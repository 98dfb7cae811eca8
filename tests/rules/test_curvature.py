"""Curvature metrics, HVP variants and Hutchinson's trace against independent oracles."""
from __future__ import annotations

import itertools

import pytest
import torch

from metaopt.rules.curvature import leading_gap, probe_curvature, spectral_gap, spectral_radius
from metaopt.rules.hvp import (
    CreateGraphBackward,
    functional_hvp,
    gradient_hvp,
    hutchinson_trace,
    matrix_hvp,
)

from .curvature_helpers import full_hessian, small_mlp, top_by_magnitude, wishart


@pytest.mark.parametrize("seed", range(5))
def test_spectral_formulas_match_brute_force(seed):
    values = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    assert float(spectral_radius(values)) == max(abs(v) for v in values.tolist())
    pairs = max(abs(a - b) for a, b in itertools.permutations(values.tolist(), 2))
    assert float(spectral_gap(values)) == pytest.approx(pairs, rel=1e-15)
    by_magnitude = sorted(values.tolist(), key=abs, reverse=True)
    assert float(leading_gap(values)) == pytest.approx(by_magnitude[0] - by_magnitude[1])


def test_spectral_formulas_on_degenerate_spectra():
    one = torch.tensor([-3.0], dtype=torch.float64)
    assert float(spectral_radius(one)) == 3.0 and float(spectral_gap(one)) == 0.0
    assert float(leading_gap(one)) == 0.0
    assert float(spectral_radius(torch.zeros(0, dtype=torch.float64))) == 0.0


def test_double_backward_and_forward_over_reverse_agree():
    params, loss_fn = small_mlp(seed=1, hidden=16)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    reverse = functional_hvp(loss_fn, params, "double_backward")(v)
    forward = functional_hvp(loss_fn, params, "forward_over_reverse")(v)
    dense = full_hessian(loss_fn, params) @ torch.cat([t.reshape(-1) for t in v])
    for a, b in zip(reverse, forward):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in reverse]), dense,
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        functional_hvp(loss_fn, params, "finite_difference")


def test_closure_backward_under_create_graph_gives_the_hvp():
    params, loss_fn = small_mlp(seed=2, hidden=16)
    leaves = [p.clone().requires_grad_() for p in params]

    def closure():  # a torch.optim-style closure: zero_grad, loss, backward, return loss
        for p in leaves:
            p.grad = None
        loss = loss_fn(leaves)
        loss.backward()
        return loss
    with CreateGraphBackward():
        closure()
    v = [torch.ones_like(p) for p in params]
    from_closure = gradient_hvp([p.grad for p in leaves], leaves)(v)
    for a, b in zip(from_closure, functional_hvp(loss_fn, params)(v)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_hvp_of_loss_without_curvature_is_zero():
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((2 * w).sum(), [w], create_graph=True)
    assert torch.equal(gradient_hvp([g], [w])([torch.ones(3, dtype=torch.float64)])[0],
                       torch.zeros(3, dtype=torch.float64))


def test_hutchinson_is_exact_on_diagonal_and_unbiased_on_dense():
    diagonal = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    like = [torch.zeros(20, dtype=torch.float64)]
    g = torch.Generator().manual_seed(0)
    # zᵢ² = 1 for Rademacher z, so zᵀDz = tr(D) exactly for every sample
    assert float(hutchinson_trace(matrix_hvp(diagonal), like, g, samples=3)) == 210.0
    dense = wishart(20, 40, 1)
    estimate = float(hutchinson_trace(matrix_hvp(dense), like, g, samples=4000))
    off_diagonal = (dense - torch.diag(torch.diag(dense))).pow(2).sum()
    stderr = float((2 * off_diagonal / 4000).sqrt())  # Var(zᵀAz) = 2 Σ_{i≠j} A_ij²
    assert abs(estimate - float(torch.trace(dense))) < 5 * stderr


def test_probe_reports_metrics_and_counts_hvps():
    matrix = wishart(80, 160, 5)
    exact = top_by_magnitude(torch.linalg.eigvalsh(matrix), 4)
    hvp = matrix_hvp(matrix)
    probe = probe_curvature(hvp, [torch.zeros(80, dtype=torch.float64)], k=4, max_iters=60,
                            tol=1e-8, generator=torch.Generator().manual_seed(0),
                            trace_samples=5, step=7)
    torch.testing.assert_close(probe.eigenvalues, exact, rtol=1e-9, atol=0)
    assert float(probe.spectral_radius) == pytest.approx(float(exact.abs().max()))
    assert float(probe.spectral_gap) == pytest.approx(float(exact.max() - exact.min()))
    assert probe.hvp_count == hvp.count
    assert probe.step == 7 and probe.trace is not None
    assert probe.summary()["spectral_radius"] == float(probe.spectral_radius)
