"""Hessian spectra of networks and 2-D functions, at a point or along a trajectory (GDSearch
studies; PyHessian conventions, Yao et al. 2020; Ghorbani et al. 2019).

For a model, ``loss_fn(model(inputs), targets)`` on one ``batch = (inputs, targets)`` defines
L(θ) over the trainable parameters; H = ∇²L(θ) is only touched through Hessian-vector products
(``metaopt.rules.hvp``) and Lanczos (``metaopt.rules.lanczos``), never formed:

* top-k eigenvalues: Lanczos with full reorthogonalisation; ``which="largest"/"smallest"`` shift
  the operator so the wanted end of the spectrum becomes the dominant one;
* extremes λ_max, λ_min: the dominant eigenvalue λ_a, then Lanczos on H − λ_a·I, whose dominant
  eigenvalue is (other end) − λ_a. The saddle indicator is λ_max·λ_min < 0;
* trace: Hutchinson, tr H ≈ (1/s) Σ zᵀHz with Rademacher z from an explicit generator;
* density: stochastic Lanczos quadrature. m Lanczos steps from a random unit v give nodes θ_i
  (Ritz values) and weights τ_i = (vᵀy_i)² with Σ_i τ_i θ_iᵖ = vᵀHᵖv exactly for p < 2m; the
  spectral density is the run-average of Σ τ_i N(t; θ_i, σ²), σ² = sigma_squared·max(1, width of
  the node range), on a grid padded by ``overhead`` and normalised to unit integral (PyHessian).

For 2-D test functions the 2×2 Hessian is exact (``torch.func.hessian``, vmapped over points).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaopt.rules.hvp import (
    HessianVectorProduct,
    functional_hvp,
    hutchinson_trace,
    rademacher_like,
)
from metaopt.rules.lanczos import flatten, lanczos

__all__ = ["HessianExtremes", "PathCurvature", "SnapshotSpectrum", "SpectralDensity",
           "TraceEstimate", "condition_number", "curvature_along_path", "function_hessian",
           "hessian_along_trajectory", "hessian_density", "hessian_eigenvalues",
           "hessian_extremes", "hessian_trace", "module_loss", "spectrum_density",
           "spectrum_extremes", "spectrum_top", "spectrum_trace"]

LossFn = Callable[[list[Tensor]], Tensor]


def module_loss(model: nn.Module, loss_fn: Callable,
                batch: Sequence) -> tuple[LossFn, list[Tensor]]:
    """``(f, θ)``: the batch loss as a function of the trainable parameters, and their values."""
    inputs, targets = batch
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]

    def f(params: list[Tensor]) -> Tensor:
        outputs = torch.func.functional_call(model, dict(zip(names, params)), (inputs,))
        return loss_fn(outputs, targets)
    return f, [p.detach() for _, p in named]


def _shifted(hvp: Callable, shift: float) -> HessianVectorProduct:
    return HessianVectorProduct(lambda v: [h - shift * x for h, x in zip(hvp(v), v)])


def _dominant(hvp, like, k, max_iters, tol, generator) -> Tensor:
    return lanczos(hvp, like, k=k, max_iters=max_iters, tol=tol, generator=generator).eigenvalues


@dataclass(frozen=True)
class HessianExtremes:
    lambda_max: float
    lambda_min: float

    @property
    def saddle(self) -> bool:
        """λ_max·λ_min < 0: curvature of both signs, the saddle indicator."""
        return self.lambda_max * self.lambda_min < 0

    @property
    def condition_number(self) -> float:
        """λ_max/λ_min when H is positive definite (then exact); NaN otherwise (the smallest
        |λ| of an indefinite H lies inside the spectrum, which two Lanczos ends do not see)."""
        return self.lambda_max / self.lambda_min if self.lambda_min > 0 else math.nan


def spectrum_extremes(f: LossFn, params: Sequence[Tensor], *, max_iters: int = 100,
                      tol: float = 1e-8, generator: torch.Generator | None = None
                      ) -> HessianExtremes:
    """λ_max and λ_min of ∇²f at ``params`` (functional form; see ``hessian_extremes``)."""
    hvp = functional_hvp(f, params)
    dominant = float(_dominant(hvp, params, 1, max_iters, tol, generator)[0])
    other = float(_dominant(_shifted(hvp, dominant), params, 1, max_iters, tol, generator)[0])
    ends = sorted((dominant, dominant + other))
    return HessianExtremes(lambda_max=ends[1], lambda_min=ends[0])


def spectrum_top(f: LossFn, params: Sequence[Tensor], k: int = 1, *, which: str = "magnitude",
                 max_iters: int = 100, tol: float = 1e-8,
                 generator: torch.Generator | None = None) -> Tensor:
    """k eigenvalues of ∇²f at ``params`` (functional form; see ``hessian_eigenvalues``)."""
    if which not in ("magnitude", "largest", "smallest"):
        raise ValueError(f"which: expected 'magnitude', 'largest' or 'smallest', got {which!r}")
    hvp = functional_hvp(f, params)
    if which == "magnitude":
        return _dominant(hvp, params, k, max_iters, tol, generator)
    ends = spectrum_extremes(f, params, max_iters=max_iters, tol=tol, generator=generator)
    # Shift by the opposite end: H − λ_min·I ⪰ 0 has the largest eigenvalues as its dominant ones.
    shift = ends.lambda_min if which == "largest" else ends.lambda_max
    values = _dominant(_shifted(hvp, shift), params, k, max_iters, tol, generator) + shift
    return values.sort(descending=(which == "largest")).values


def hessian_eigenvalues(model: nn.Module, loss_fn: Callable, batch: Sequence, k: int = 1, *,
                        which: str = "magnitude", max_iters: int = 100, tol: float = 1e-8,
                        generator: torch.Generator | None = None) -> Tensor:
    """Top-``k`` Hessian eigenvalues (float64) of ``loss_fn(model(x), y)`` by Lanczos.

    ``which="magnitude"``: largest |λ| first (PyHessian's "top eigenvalues"); ``"largest"`` /
    ``"smallest"``: the algebraic ends, descending / ascending.
    """
    f, params = module_loss(model, loss_fn, batch)
    return spectrum_top(f, params, k, which=which, max_iters=max_iters, tol=tol,
                        generator=generator)


def hessian_extremes(model: nn.Module, loss_fn: Callable, batch: Sequence, *,
                     max_iters: int = 100, tol: float = 1e-8,
                     generator: torch.Generator | None = None) -> HessianExtremes:
    """λ_max, λ_min, the saddle indicator and (when positive definite) the condition number."""
    f, params = module_loss(model, loss_fn, batch)
    return spectrum_extremes(f, params, max_iters=max_iters, tol=tol, generator=generator)


@dataclass(frozen=True)
class TraceEstimate:
    mean: float        # Hutchinson estimate of tr H
    std_error: float   # sample standard deviation of zᵀHz / sqrt(samples)
    samples: int


def spectrum_trace(f: LossFn, params: Sequence[Tensor], samples: int = 100,
                   generator: torch.Generator | None = None) -> TraceEstimate:
    """Hutchinson trace of ∇²f at ``params`` with its standard error (functional form)."""
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples: must be an int >= 2 (for a standard error), got {samples!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    hvp = functional_hvp(f, params)
    draws = torch.stack([hutchinson_trace(hvp, params, generator, samples=1)
                         for _ in range(samples)])
    return TraceEstimate(float(draws.mean()), float(draws.std() / math.sqrt(samples)), samples)


def hessian_trace(model: nn.Module, loss_fn: Callable, batch: Sequence, samples: int = 100,
                  generator: torch.Generator | None = None) -> TraceEstimate:
    """tr ∇²L by Hutchinson's estimator over ``samples`` Rademacher probes from ``generator``."""
    f, params = module_loss(model, loss_fn, batch)
    return spectrum_trace(f, params, samples, generator)


@dataclass(frozen=True)
class SpectralDensity:
    grid: Tensor      # (bins,) float64 eigenvalue axis
    density: Tensor   # (bins,) float64, ∫ density = 1 on the grid
    nodes: Tensor     # (runs, m) Ritz values of each run
    weights: Tensor   # (runs, m) quadrature weights (vᵀy_i)², each row sums to 1


def spectrum_density(f: LossFn, params: Sequence[Tensor], *, iters: int = 50, runs: int = 5,
                     bins: int = 1000, sigma_squared: float = 1e-5, overhead: float = 0.01,
                     generator: torch.Generator | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature density of ∇²f at ``params`` (functional form)."""
    for key, value in (("iters", iters), ("runs", runs), ("bins", bins)):
        if not isinstance(value, int) or value < (2 if key == "bins" else 1):
            raise ValueError(f"{key}: must be a positive int (bins >= 2), got {value!r}")
    if not (sigma_squared > 0 and math.isfinite(sigma_squared)):
        raise ValueError(f"sigma_squared: must be finite and > 0, got {sigma_squared!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    hvp = functional_hvp(f, params)
    all_nodes, all_weights = [], []
    for _ in range(runs):
        start = rademacher_like(params, generator)
        v = flatten(start, torch.float64)
        v = v / v.norm()
        # k = iters asks for every Ritz pair; tol = 0 runs all m steps (Gauss quadrature order m).
        result = lanczos(hvp, params, k=iters, max_iters=iters, tol=0.0, generator=generator,
                         init=start)
        ritz = torch.stack([flatten(y, torch.float64) for y in result.eigenvectors])
        all_nodes.append(result.eigenvalues)
        all_weights.append((ritz.to(v.device) @ v) ** 2)
    nodes, weights = torch.stack(all_nodes), torch.stack(all_weights)
    low = float(nodes.min(dim=1).values.mean()) - overhead
    high = float(nodes.max(dim=1).values.mean()) + overhead
    grid = torch.linspace(low, high, bins, dtype=torch.float64)
    variance = sigma_squared * max(1.0, high - low)
    kernel = torch.exp(-(grid[None, None, :] - nodes[..., None]) ** 2 / (2 * variance))
    kernel = kernel / math.sqrt(2 * math.pi * variance)
    density = (weights[..., None] * kernel).sum(dim=1).mean(dim=0)
    density = density / (density.sum() * (grid[1] - grid[0]))
    return SpectralDensity(grid, density, nodes, weights)


def hessian_density(model: nn.Module, loss_fn: Callable, batch: Sequence, *, iters: int = 50,
                    runs: int = 5, bins: int = 1000, sigma_squared: float = 1e-5,
                    overhead: float = 0.01, generator: torch.Generator | None = None
                    ) -> SpectralDensity:
    """Eigenvalue density of ∇²L by stochastic Lanczos quadrature (``runs`` × ``iters`` HVPs)."""
    f, params = module_loss(model, loss_fn, batch)
    return spectrum_density(f, params, iters=iters, runs=runs, bins=bins,
                            sigma_squared=sigma_squared, overhead=overhead, generator=generator)


def condition_number(eigenvalues: Tensor) -> Tensor:
    """κ = max|λ| / min|λ| along the last axis (the 2-norm condition number of a symmetric H;
    inf when H is singular)."""
    magnitude = eigenvalues.abs()
    return magnitude.max(dim=-1).values / magnitude.min(dim=-1).values


def function_hessian(function: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """Exact Hessians (..., d, d) of a scalar function of a d-vector at ``points`` (..., d)."""
    flat = points.reshape(-1, points.shape[-1])
    hessians = torch.func.vmap(torch.func.hessian(function))(flat)
    return hessians.reshape(*points.shape, points.shape[-1])


@dataclass(frozen=True)
class PathCurvature:
    eigenvalues: Tensor       # (T, d) ascending exact Hessian eigenvalues at each point
    gradient_norm: Tensor     # (T,) ‖∇f‖
    condition_number: Tensor  # (T,) max|λ| / min|λ|
    saddle: Tensor            # (T,) bool, λ_max·λ_min < 0


def curvature_along_path(function: Callable[[Tensor], Tensor], path: Tensor) -> PathCurvature:
    """Exact curvature of a low-dimensional function at every point of a trajectory (T, d)."""
    path = path.detach()
    eigenvalues = torch.linalg.eigvalsh(function_hessian(function, path))
    gradients = torch.func.vmap(torch.func.grad(function))(path)
    return PathCurvature(eigenvalues, gradients.norm(dim=-1), condition_number(eigenvalues),
                         eigenvalues[:, -1] * eigenvalues[:, 0] < 0)


@dataclass(frozen=True)
class SnapshotSpectrum:
    top: Tensor                       # (k,) eigenvalues by magnitude
    extremes: HessianExtremes
    trace: TraceEstimate | None


def hessian_along_trajectory(model: nn.Module, loss_fn: Callable, batch: Sequence,
                             snapshots: Sequence[Sequence[Tensor]], k: int = 1, *,
                             trace_samples: int = 0, max_iters: int = 100, tol: float = 1e-8,
                             generator: torch.Generator | None = None
                             ) -> list[SnapshotSpectrum]:
    """Top-k eigenvalues, extremes (saddle indicator) and optionally the trace at each snapshot
    (a list of parameter tensors in ``model.named_parameters()`` order); the model is not
    changed."""
    f, current = module_loss(model, loss_fn, batch)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    out = []
    for snapshot in snapshots:
        params = [s.detach().to(c) for s, c in zip(snapshot, current)]
        if len(params) != len(current) or any(p.shape != c.shape for p, c in zip(params, current)):
            raise ValueError("snapshots: each must match the model's trainable parameter shapes")
        options = dict(max_iters=max_iters, tol=tol, generator=generator)
        out.append(SnapshotSpectrum(
            top=spectrum_top(f, params, k, **options),
            extremes=spectrum_extremes(f, params, **options),
            trace=spectrum_trace(f, params, trace_samples, generator) if trace_samples else None))
    return out
