"""Basins of attraction: which known minimum each start of a grid reaches, per optimizer (a GDSearch
study: basin-of-attraction mapping over a grid of initialisations).

The whole grid advances as one tensor program (``batched.run_batched``): R×R starts are the rows
of one (R², 2) tensor. After ``steps`` steps each start is labelled by the nearest known minimiser
within ``tolerance`` (its index), ``UNCONVERGED`` if none is that close, or ``DIVERGED`` if the
iterate left the finite numbers. An optimizer's basin of minimiser i is the set of starts labelled
i; a plain-gradient-flow map (small-step Euler/RK4) gives the function's own basins, so how far a
momentum or adaptive method's map departs from it measures how much its dynamics reshape them.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .batched import BatchedOptimizer, run_batched
from .hessian import function_hessian

__all__ = ["DIVERGED", "UNCONVERGED", "BasinMap", "basin_map", "classify_points", "find_minima",
           "grid_starts"]

UNCONVERGED = -1
DIVERGED = -2


def grid_starts(bounds: Sequence[float], resolution: int, dtype=torch.float64,
                device=None) -> tuple[Tensor, Tensor, Tensor]:
    """``(xs, ys, starts)``: an R×R grid over ``bounds = (x_lo, x_hi, y_lo, y_hi)``; row
    ``i·R + j`` of ``starts`` is (xs[j], ys[i]) so ``labels.view(R, R)`` is indexed [y, x]."""
    if len(bounds) != 4 or not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
        raise ValueError(f"bounds: need (x_lo, x_hi, y_lo, y_hi) with lo < hi, got {bounds!r}")
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution: must be an int >= 2, got {resolution!r}")
    xs = torch.linspace(bounds[0], bounds[1], resolution, dtype=dtype, device=device)
    ys = torch.linspace(bounds[2], bounds[3], resolution, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def classify_points(points: Tensor, minimizers: Tensor, tolerance: float) -> Tensor:
    """(N,) int64: index of the nearest minimiser within ``tolerance``, else ``UNCONVERGED``;
    ``DIVERGED`` for non-finite points."""
    distance = torch.cdist(points.nan_to_num(nan=torch.inf), minimizers.to(points))
    nearest = distance.min(dim=1)
    labels = torch.where(nearest.values <= tolerance, nearest.indices, UNCONVERGED)
    return torch.where(torch.isfinite(points).all(dim=1), labels, DIVERGED)


def find_minima(function: Callable[[Tensor], Tensor], bounds: Sequence[float], *,
                known: Sequence[Sequence[float]] = (), resolution: int = 20, steps: int = 2000,
                lr: float = 1e-2, grad_tol: float = 1e-9, merge: float = 1e-4,
                dtype=torch.float64) -> list[tuple[float, ...]]:
    """``known`` minimisers followed by the other local minima found inside ``bounds``.

    Gradient descent (step ``lr``) from an R×R grid, then Newton polishing x ← x − H⁻¹∇f with the
    exact Hessian; a candidate is kept when ‖∇f‖ < ``grad_tol`` and H is positive definite (so
    saddles and maxima are not minima), and merged with any minimum within ``merge``.
    """
    _, _, starts = grid_starts(bounds, resolution, dtype)
    run = run_batched(function, starts, BatchedOptimizer("sgd", {"lr": lr}), steps)
    x = run.final[torch.isfinite(run.final).all(dim=1)]
    grad = torch.func.vmap(torch.func.grad(function))
    for _ in range(20):
        step = torch.linalg.solve(function_hessian(function, x), grad(x).unsqueeze(-1)).squeeze(-1)
        x = x - step.nan_to_num(nan=0.0)
    definite = torch.linalg.eigvalsh(function_hessian(function, x))[:, 0] > 0
    inside = ((x[:, 0] >= bounds[0]) & (x[:, 0] <= bounds[1])
              & (x[:, 1] >= bounds[2]) & (x[:, 1] <= bounds[3]))
    good = x[definite & inside & (grad(x).norm(dim=1) < grad_tol)]
    found = [tuple(float(v) for v in m) for m in known]
    for candidate in good.tolist():
        if all(sum((a - b) ** 2 for a, b in zip(candidate, m)) ** 0.5 > merge for m in found):
            found.append(tuple(candidate))
    return found


@dataclass
class BasinMap:
    xs: Tensor                    # (R,) grid x coordinates
    ys: Tensor                    # (R,) grid y coordinates
    minimizers: Tensor            # (M, 2) the known minimisers the labels index
    labels: dict[str, Tensor]     # optimizer -> (R, R) int64 labels, indexed [y, x]
    arrival: dict[str, Tensor]    # optimizer -> (R, R) first step within tolerance (−1 never)
    final: dict[str, Tensor]      # optimizer -> (R, R, 2) final points

    def fractions(self, name: str) -> dict[str, float]:
        """Share of the grid in each basin ("min0", …), unconverged and diverged."""
        labels = self.labels[name]
        out = {f"min{i}": float((labels == i).double().mean()) for i in range(len(self.minimizers))}
        out["unconverged"] = float((labels == UNCONVERGED).double().mean())
        out["diverged"] = float((labels == DIVERGED).double().mean())
        return out

    def agreement(self, a: str, b: str) -> float:
        """Fraction of starts that optimizers ``a`` and ``b`` send to the same label."""
        return float((self.labels[a] == self.labels[b]).double().mean())


def basin_map(function: Callable[[Tensor], Tensor], minimizers: Sequence[Sequence[float]],
              optimizers: Mapping[str, BatchedOptimizer], *, bounds: Sequence[float],
              resolution: int = 100, steps: int = 1000, tolerance: float = 1e-2,
              dtype=torch.float64, device=None, noise_std: float = 0.0,
              generator: torch.Generator | None = None) -> BasinMap:
    """Run every optimizer from every start of an R×R grid (batched) and label the end points."""
    if not minimizers:
        raise ValueError("minimizers: need at least one known minimiser to label basins")
    if not tolerance > 0:
        raise ValueError(f"tolerance: must be > 0, got {tolerance!r}")
    xs, ys, starts = grid_starts(bounds, resolution, dtype, device)
    mins = torch.tensor(minimizers, dtype=dtype, device=device)
    def near(x):
        return torch.cdist(x.nan_to_num(nan=torch.inf), mins).min(dim=1).values <= tolerance

    labels, arrival, final = {}, {}, {}
    for name, optimizer in optimizers.items():
        run = run_batched(function, starts, optimizer, steps, noise_std=noise_std,
                          generator=generator, events={"arrival": near})
        shape = (resolution, resolution)
        labels[name] = classify_points(run.final, mins, tolerance).view(shape)
        arrival[name] = run.events["arrival"].view(shape)
        final[name] = run.final.view(*shape, -1)
    return BasinMap(xs, ys, mins, labels, arrival, final)
