"""Loss landscapes: 1-D interpolation, 2-D planes with filter normalisation, trajectories projected
on a plane, and the sharpness of a final point (the GDSearch question: sharp vs flat minima).

All functions take a functional loss ``f(params: list[Tensor]) -> scalar`` (for a model:
``hessian.module_loss(model, loss_fn, batch)``) and parameter lists; nothing is mutated.

* Interpolation (Goodfellow et al. 2015): L((1 − α)·θ_a + α·θ_b) on a grid of α.
* Plane (Li et al. 2018): L(θ* + a·d₁ + b·d₂) with random Gaussian directions, *filter
  normalised*: for every filter (slice along dim 0 of a ≥2-D weight) d_f ← d_f · ‖θ_f‖ / ‖d_f‖, so a
  unit step moves each filter by its own norm and plots of networks with different weight scales
  compare; 1-D tensors (biases, norm scales) get zero direction by default ("ignore biasbn").
  ``pca_plane`` gives the alternative of Li et al. §7 for trajectories: the top-2 principal
  directions of θ_t − θ*, which (unlike random directions in high dimension) capture the path.
* Projection: coordinates (a, b) minimising ‖θ_t − θ* − a·d₁ − b·d₂‖ (least squares; filter
  normalised directions are not orthogonal), with the residual norm.
* Sharpness: the top Hessian eigenvalue (Lanczos) and the increase of L over random points on the
  sphere of radius ε (×‖θ‖ when ``relative``), max and mean. For L = ½θᵀAθ at θ = 0 the mean is
  ½ε²·tr(A)/n and the max ≤ ½ε²·λ_max.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaopt.rules.lanczos import flatten, unflatten

from .hessian import spectrum_top

__all__ = ["LossSurface", "Projection", "Sharpness", "filter_normalized_direction",
           "interpolate", "loss_plane", "pca_plane", "project_onto_plane", "random_plane",
           "sharpness"]

LossFn = Callable[[list[Tensor]], Tensor]


def _offset(params: Sequence[Tensor],
            terms: Sequence[tuple[float, Sequence[Tensor]]]) -> list[Tensor]:
    out = [p.detach().clone() for p in params]
    for scale, direction in terms:
        for o, d in zip(out, direction):
            o.add_(d, alpha=float(scale))
    return out


def interpolate(f: LossFn, start: Sequence[Tensor], end: Sequence[Tensor],
                alphas: Tensor) -> Tensor:
    """(A,) float64 losses at (1 − α)·start + α·end for each α in ``alphas``."""
    delta = [e.detach() - s.detach() for s, e in zip(start, end)]
    with torch.no_grad():
        return torch.stack([f(_offset(start, [(a, delta)])).detach().double()
                            for a in alphas.tolist()])


def filter_normalized_direction(params: Sequence[Tensor], generator: torch.Generator,
                                ignore_1d: bool = True) -> list[Tensor]:
    """A Gaussian direction shaped like ``params`` with every filter rescaled to its weight's
    norm."""
    out = []
    for p in params:
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype,
                        device=generator.device).to(p.device)
        if p.dim() <= 1:
            d = torch.zeros_like(p) if ignore_1d else d * (p.norm() / d.norm().clamp_min(1e-30))
        else:
            dims = tuple(range(1, p.dim()))
            d = d * (p.norm(dim=dims, keepdim=True)
                     / d.norm(dim=dims, keepdim=True).clamp_min(1e-30))
        out.append(d)
    return out


def random_plane(params: Sequence[Tensor], generator: torch.Generator, *,
                 filter_normalize: bool = True, ignore_1d: bool = True
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """Two random directions (filter normalised unless asked otherwise) from ``generator``."""
    if filter_normalize:
        return (filter_normalized_direction(params, generator, ignore_1d),
                filter_normalized_direction(params, generator, ignore_1d))
    def draw():
        return [torch.randn(p.shape, generator=generator, dtype=p.dtype,
                            device=generator.device).to(p.device) for p in params]

    return draw(), draw()


@dataclass
class LossSurface:
    alphas: Tensor   # (A,) coordinate along d₁
    betas: Tensor    # (B,) coordinate along d₂
    losses: Tensor   # (B, A) float64, losses[j, i] = L(θ* + α_i d₁ + β_j d₂)


def loss_plane(f: LossFn, center: Sequence[Tensor], d1: Sequence[Tensor], d2: Sequence[Tensor],
               alphas: Tensor, betas: Tensor) -> LossSurface:
    """Losses on the plane θ* + α·d₁ + β·d₂ over the grid ``betas`` × ``alphas``."""
    with torch.no_grad():
        rows = [torch.stack([f(_offset(center, [(a, d1), (b, d2)])).detach().double()
                             for a in alphas.tolist()]) for b in betas.tolist()]
    return LossSurface(alphas.double(), betas.double(), torch.stack(rows))


@dataclass
class Projection:
    coords: Tensor      # (T, 2) least-squares (a, b) of each snapshot
    residual: Tensor    # (T,) ‖θ_t − θ* − a·d₁ − b·d₂‖ (how much of the step the plane misses)
    distance: Tensor    # (T,) ‖θ_t − θ*‖


def project_onto_plane(snapshots: Sequence[Sequence[Tensor]], center: Sequence[Tensor],
                       d1: Sequence[Tensor], d2: Sequence[Tensor]) -> Projection:
    """Coordinates of every snapshot (parameter list) in the plane through ``center``."""
    basis = torch.stack([flatten(d1, torch.float64), flatten(d2, torch.float64)], dim=1)  # (n, 2)
    c = flatten(center, torch.float64)
    offsets = torch.stack([flatten(s, torch.float64) - c for s in snapshots])              # (T, n)
    coords = torch.linalg.lstsq(basis, offsets.T).solution.T
    residual = (offsets - coords @ basis.T).norm(dim=1)
    return Projection(coords, residual, offsets.norm(dim=1))


def pca_plane(snapshots: Sequence[Sequence[Tensor]], center: Sequence[Tensor]
              ) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Top-2 principal directions (unit, shaped like the parameters) of θ_t − θ* and the fraction
    of the offsets' squared norm each explains."""
    c = flatten(center, torch.float64)
    offsets = torch.stack([flatten(s, torch.float64) - c for s in snapshots])
    if offsets.shape[0] < 2:
        raise ValueError("snapshots: need at least 2 to find principal directions")
    _, singular, vh = torch.linalg.svd(offsets, full_matrices=False)
    explained = singular ** 2 / (singular ** 2).sum()
    like = list(center)
    return unflatten(vh[0], like), unflatten(vh[1], like), explained[:2]


@dataclass(frozen=True)
class Sharpness:
    top_eigenvalue: float   # λ_max of the Hessian (algebraically largest)
    max_increase: float     # max over samples of L(θ + δ) − L(θ), ‖δ‖ = radius
    mean_increase: float
    radius: float           # ε, times ‖θ‖ when relative


def sharpness(f: LossFn, params: Sequence[Tensor], epsilon: float = 1e-2, *, samples: int = 100,
              relative: bool = False, generator: torch.Generator | None = None,
              max_iters: int = 100) -> Sharpness:
    """Sharpness of ``f`` at ``params``: λ_max and the loss increase over an ε-sphere."""
    if not (epsilon > 0 and epsilon < float("inf")):
        raise ValueError(f"epsilon: must be finite and > 0, got {epsilon!r}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: must be an int >= 1, got {samples!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    params = [p.detach() for p in params]
    radius = epsilon * (float(flatten(params, torch.float64).norm()) if relative else 1.0)
    top = float(spectrum_top(f, params, 1, which="largest", max_iters=max_iters,
                             generator=generator)[0])
    with torch.no_grad():
        base = float(f(params))
        increases = []
        for _ in range(samples):
            d = [torch.randn(p.shape, generator=generator, dtype=p.dtype,
                             device=generator.device).to(p.device) for p in params]
            norm = float(flatten(d, torch.float64).norm())
            increases.append(float(f(_offset(params, [(radius / norm, d)]))) - base)
    values = torch.tensor(increases, dtype=torch.float64)
    return Sharpness(top, float(values.max()), float(values.mean()), radius)
