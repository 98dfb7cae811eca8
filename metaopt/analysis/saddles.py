"""Saddle points: time spent near them, escape times, and the controlled noise experiment
(the GDSearch question "How do optimizers escape saddle points?").

* A point is *near a saddle* when ‖∇f‖ < ``grad_tol`` and the exact Hessian is indefinite,
  λ_max·λ_min < 0 (``hessian.curvature_along_path``); the time spent near saddles is the number of
  trajectory points where both hold.
* The *escape step* from a saddle c is the first step t with ‖x_t − c‖ > ``radius``.
* Noise experiment: from the saddle (or a point next to it) each optimizer runs ``repeats``
  independent copies with Gaussian gradient noise g + σ·ξ, ξ ~ N(0, I) from an explicit generator,
  for several σ; all copies of one (optimizer, σ) advance as one batched tensor program.
  Reference for gradient descent on f = x² − y² from the origin: y_{t+1} = (1 + 2η) y_t − ησξ_t,
  so y_t ~ N(0, η²σ² ((1 + 2η)^{2t} − 1) / ((1 + 2η)² − 1)) and escape time grows like
  log(r / (ησ)) / log(1 + 2η): every factor 10 less noise costs the same number of extra steps.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .batched import BatchedOptimizer, run_batched
from .hessian import curvature_along_path

__all__ = ["NoiseEscape", "escape_step", "near_saddle", "noise_escape_experiment",
           "time_near_saddles"]


def near_saddle(function: Callable[[Tensor], Tensor], path: Tensor, grad_tol: float) -> Tensor:
    """(T,) bool: ‖∇f(x_t)‖ < ``grad_tol`` and λ_max·λ_min < 0 at each point of ``path`` (T, d)."""
    if not grad_tol > 0:
        raise ValueError(f"grad_tol: must be > 0, got {grad_tol!r}")
    curvature = curvature_along_path(function, path)
    return (curvature.gradient_norm < grad_tol) & curvature.saddle


def time_near_saddles(function: Callable[[Tensor], Tensor], path: Tensor, grad_tol: float) -> int:
    """Number of points of ``path`` that are near a saddle."""
    return int(near_saddle(function, path, grad_tol).sum())


def escape_step(path: Tensor, center: Sequence[float], radius: float) -> int | None:
    """First index t with ‖x_t − center‖ > ``radius``; None if the path never leaves the ball."""
    if not radius > 0:
        raise ValueError(f"radius: must be > 0, got {radius!r}")
    center_t = torch.as_tensor(center, dtype=path.dtype)
    outside = ((path - center_t).norm(dim=-1) > radius).nonzero()
    return int(outside[0]) if outside.numel() else None


@dataclass(frozen=True)
class NoiseEscape:
    optimizer: str
    sigma: float
    escape_steps: Tensor      # (repeats,) int64 first step outside the ball, −1 if never

    @property
    def escaped_fraction(self) -> float:
        return float((self.escape_steps >= 0).double().mean())

    @property
    def median_steps(self) -> float:
        """Median escape step counting never-escaped copies as +∞ (inf when half never left)."""
        steps = torch.where(self.escape_steps >= 0, self.escape_steps.double(), math.inf)
        return float(steps.sort().values[(steps.numel() - 1) // 2])


def noise_escape_experiment(function: Callable[[Tensor], Tensor], saddle: Sequence[float],
                            optimizers: Mapping[str, BatchedOptimizer], sigmas: Sequence[float],
                            *, repeats: int = 256, steps: int = 500, radius: float = 1.0,
                            offset: Sequence[float] = (0.0, 0.0),
                            generator: torch.Generator | None = None,
                            dtype: torch.dtype = torch.float64) -> list[NoiseEscape]:
    """Escape steps of every (optimizer, σ) from ``saddle + offset`` under gradient noise σ."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: must be an int >= 1, got {repeats!r}")
    if any(not (s >= 0 and math.isfinite(s)) for s in sigmas):
        raise ValueError(f"sigmas: must be finite and >= 0, got {list(sigmas)!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    center = torch.as_tensor(saddle, dtype=dtype)
    start = (center + torch.as_tensor(offset, dtype=dtype)).expand(repeats, -1)
    def outside(x):
        return (x - center).norm(dim=1).nan_to_num(nan=math.inf) > radius

    results = []
    for name, optimizer in optimizers.items():
        for sigma in sigmas:
            run = run_batched(function, start, optimizer, steps, noise_std=float(sigma),
                              generator=generator, events={"escape": outside})
            results.append(NoiseEscape(name, float(sigma), run.events["escape"]))
    return results
