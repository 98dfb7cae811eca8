"""Landscape instruments against analytic landscapes (quadratics) and the dense Hessian."""
from __future__ import annotations

import pytest
import torch

from metaopt.analysis.hessian import module_loss
from metaopt.analysis.landscape import (
    filter_normalized_direction,
    interpolate,
    loss_plane,
    pca_plane,
    project_onto_plane,
    random_plane,
    sharpness,
)

from .helpers import dense, tiny_mlp


def quadratic(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = q @ q.T + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, (lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0])


def test_interpolation_of_a_quadratic_is_the_exact_parabola():
    a, b, f = quadratic()
    g = torch.Generator().manual_seed(1)
    start, end = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(2)]
    alphas = torch.linspace(-0.5, 1.5, 21, dtype=torch.float64)
    losses = interpolate(f, [start], [end], alphas)
    d = end - start
    slope, curvature = (a @ start - b) @ d, d @ a @ d
    exact = f([start]) + alphas * slope + 0.5 * alphas ** 2 * curvature
    torch.testing.assert_close(losses, exact, rtol=1e-13, atol=1e-12)
    assert float(losses[5]) == pytest.approx(float(f([start])))  # α = 0
    assert float(losses[15]) == pytest.approx(float(f([end])))   # α = 1


def test_plane_of_a_quadratic_is_the_exact_quadric_and_the_center_is_untouched():
    a, b, f = quadratic(2)
    center = [torch.linalg.solve(a, b)]  # the minimiser
    d1, d2 = random_plane(center, torch.Generator().manual_seed(0), filter_normalize=False)
    alphas = torch.linspace(-1, 1, 5, dtype=torch.float64)
    betas = torch.linspace(-2, 2, 7, dtype=torch.float64)
    surface = loss_plane(f, center, d1, d2, alphas, betas)
    u, v = d1[0], d2[0]
    fmin = f(center)
    exact = fmin + 0.5 * (alphas[None] ** 2 * (u @ a @ u)
                          + 2 * alphas[None] * betas[:, None] * (u @ a @ v)
                          + betas[:, None] ** 2 * (v @ a @ v))
    torch.testing.assert_close(surface.losses, exact, rtol=1e-12, atol=1e-12)
    assert surface.losses.shape == (7, 5) and surface.losses.min() == surface.losses[3, 2]


def test_filter_normalisation_matches_each_filter_norm():
    model, _, _ = tiny_mlp()
    params = [p.detach() for p in model.parameters()]
    d = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, di in zip(params, d):
        if p.dim() == 2:
            torch.testing.assert_close(di.norm(dim=1), p.norm(dim=1))
        else:
            assert torch.count_nonzero(di) == 0  # biases ignored (Li et al.'s "biasbn")
    d_all = filter_normalized_direction(params, torch.Generator().manual_seed(0), ignore_1d=False)
    assert float(d_all[1].norm()) == pytest.approx(float(params[1].norm()))


def test_projection_recovers_plane_coordinates_and_pca_spans_a_planar_path():
    model, _, _ = tiny_mlp()
    center = [p.detach() for p in model.parameters()]
    d1, d2 = random_plane(center, torch.Generator().manual_seed(4))
    coords = torch.tensor([[0.0, 0.0], [0.5, -0.2], [1.0, 0.3], [-0.4, 0.9]], dtype=torch.float64)
    snapshots = [[c + a * u + b * v for c, u, v in zip(center, d1, d2)] for a, b in coords.tolist()]
    proj = project_onto_plane(snapshots, center, d1, d2)
    torch.testing.assert_close(proj.coords, coords, rtol=1e-10, atol=1e-10)
    assert proj.residual.max() < 1e-10
    p1, p2, explained = pca_plane(snapshots, center)
    assert float(explained.sum()) == pytest.approx(1.0, abs=1e-12)  # the path lies in a plane
    assert project_onto_plane(snapshots, center, p1, p2).residual.max() < 1e-10


def test_sharpness_of_a_quadratic_minimum():
    a, b, f = quadratic(5, n=8)
    center = [torch.linalg.solve(a, b)]
    eps = 1e-2
    result = sharpness(f, center, eps, samples=2000, generator=torch.Generator().manual_seed(0))
    lam = torch.linalg.eigvalsh(a)
    assert result.top_eigenvalue == pytest.approx(float(lam[-1]), rel=1e-8)
    assert result.max_increase <= 0.5 * eps ** 2 * float(lam[-1]) * (1 + 1e-9)
    # uniform directions on the sphere: E[δᵀAδ] = ε² tr(A) / n
    assert result.mean_increase == pytest.approx(0.5 * eps ** 2 * float(lam.sum()) / 8, rel=0.1)


def test_sharpness_top_eigenvalue_matches_dense_on_an_mlp():
    model, loss_fn, batch = tiny_mlp()
    f, params = module_loss(model, loss_fn, batch)
    exact = torch.linalg.eigvalsh(dense(model, loss_fn, batch))
    result = sharpness(f, params, 1e-3, samples=10, relative=True)
    assert result.top_eigenvalue == pytest.approx(float(exact[-1]), rel=1e-7)
    assert result.radius == pytest.approx(
        1e-3 * float(torch.cat([p.reshape(-1) for p in params]).norm()))
    with pytest.raises(ValueError, match="epsilon"):
        sharpness(f, params, float("inf"))
