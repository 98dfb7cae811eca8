"""Convergence detection on a loss curve: steps to a target and plateaus (a GDSearch
instrument: convergence speed, quantified).

* ``steps_to_target(losses, target)``: the first index t with L_t ≤ target (None if never).
  With ``relative=True`` the target is a fraction of the initial optimality gap,
  L_t − L* ≤ target·(L_0 − L*) (the evaluation harness's convention, L* = ``minimum``).
* ``detect_plateaus(losses, window, rel_tol, min_length)``: a step t ≥ w is *flat* when the loss
  changed by at most rel_tol over the window ending at t,

      |L_t − L_{t−w}| ≤ rel_tol · (|L_{t−w} − L*| + floor),

  i.e. a relative change measured against the remaining gap, so the test means the same thing at
  every loss scale. A plateau is a maximal union of flat windows [t−w, t] spanning at least
  ``min_length`` steps. Non-finite losses are never flat.

Functions take a 1-D sequence (list, numpy array or tensor) and return plain Python data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["ConvergenceReport", "Plateau", "analyze_convergence", "as_losses",
           "detect_plateaus", "steps_to_target"]


def as_losses(losses) -> torch.Tensor:
    """A float64 1-D CPU tensor of the losses (None → NaN)."""
    if isinstance(losses, torch.Tensor):
        values = losses.detach().to("cpu", torch.float64)
    else:
        values = torch.tensor([math.nan if v is None else float(v) for v in losses],
                              dtype=torch.float64)
    if values.ndim != 1:
        raise ValueError(f"losses must be 1-D, got shape {tuple(values.shape)}")
    return values


def steps_to_target(losses, target: float, *, relative: bool = False,
                    minimum: float = 0.0) -> int | None:
    """First index t with ``L_t ≤ target`` (``relative``:
    ``L_t − minimum ≤ target·(L_0 − minimum)``)."""
    values = as_losses(losses)
    if values.numel() == 0:
        return None
    threshold = minimum + target * (float(values[0]) - minimum) if relative else target
    hits = torch.nonzero(values <= threshold).flatten()  # NaN compares False
    return int(hits[0]) if hits.numel() else None


@dataclass(frozen=True)
class Plateau:
    start: int    # first step of the plateau
    end: int      # last step of the plateau (inclusive)
    level: float  # mean loss over [start, end]

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def detect_plateaus(losses, window: int = 20, rel_tol: float = 1e-3, min_length: int | None = None,
                    *, minimum: float = 0.0, floor: float = 1e-12) -> list[Plateau]:
    """Maximal stretches where the loss moved by ≤ rel_tol of its remaining gap per ``window``
    steps."""
    if window < 1:
        raise ValueError(f"window: must be >= 1, got {window}")
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol: must be >= 0, got {rel_tol}")
    min_length = window + 1 if min_length is None else int(min_length)
    values = as_losses(losses)
    n = values.numel()
    if n <= window:
        return []
    before, after = values[:-window], values[window:]
    flat = (after - before).abs() <= rel_tol * ((before - minimum).abs() + floor)
    flat &= torch.isfinite(before) & torch.isfinite(after)
    # Flat window ending at t covers [t − w, t]: mark coverage with a difference array.
    cover = torch.zeros(n + 1, dtype=torch.int64)
    ends = torch.nonzero(flat).flatten() + window
    cover.index_add_(0, ends - window, torch.ones_like(ends))
    cover.index_add_(0, ends + 1, -torch.ones_like(ends))
    covered = (cover.cumsum(0)[:n] > 0).tolist()
    plateaus, t = [], 0
    while t < n:
        if covered[t]:
            start = t
            while t + 1 < n and covered[t + 1]:
                t += 1
            if t - start + 1 >= min_length:
                plateaus.append(Plateau(start, t, float(values[start:t + 1].mean())))
        t += 1
    return plateaus


@dataclass(frozen=True)
class ConvergenceReport:
    initial_loss: float
    final_loss: float
    best_loss: float
    best_step: int
    steps_to_target: int | None
    plateaus: list[Plateau] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.steps_to_target is not None


def analyze_convergence(losses, target: float, *, relative: bool = False, minimum: float = 0.0,
                        window: int = 20, rel_tol: float = 1e-3,
                        min_length: int | None = None) -> ConvergenceReport:
    """Steps to target, best/final loss and plateaus of one loss curve."""
    values = as_losses(losses)
    if values.numel() == 0:
        raise ValueError("losses: empty")
    finite = torch.where(torch.isfinite(values), values, torch.full_like(values, math.inf))
    best_step = int(torch.argmin(finite))
    return ConvergenceReport(
        initial_loss=float(values[0]), final_loss=float(values[-1]),
        best_loss=float(finite[best_step]), best_step=best_step,
        steps_to_target=steps_to_target(values, target, relative=relative, minimum=minimum),
        plateaus=detect_plateaus(values, window, rel_tol, min_length, minimum=minimum))
