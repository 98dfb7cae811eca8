"""Shared plumbing for the torchdiffeq-integrated flows (seed: hybrid-gd-ode-optimizer.md §2.2).

Parameters are packed into one flat state vector with ``einops.pack`` so the solver's RMS error
norm runs over every parameter, exactly as ``odeint`` on the flattened parameters would.
Each tensor may carry its own step size (param groups): the flow is integrated over s ∈ [0, 1]
with its vector field multiplied by lr per tensor, i.e. θ(s) = φ_{lr·s} for one shared lr —
the same trajectory as integrating over [0, lr], with a per-group clock when lrs differ.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from einops import pack, unpack
from torch import Tensor
from torchdiffeq import odeint

FIXED_GRID_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2",
                      "heun3")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def check_method(method: str) -> str:
    if method not in FIXED_GRID_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"method: unknown torchdiffeq method {method!r}; choose from "
                         f"{FIXED_GRID_METHODS + ADAPTIVE_METHODS}")
    return method


def flatten(tensors: Sequence[Tensor]) -> tuple[Tensor, list]:
    flat, shapes = pack(list(tensors), "*")
    return flat, shapes


def unflatten(flat: Tensor, shapes: list) -> list[Tensor]:
    return unpack(flat, shapes, "*")


def per_element(values: Sequence, like: Sequence[Tensor]) -> Tensor:
    """One entry per tensor → one entry per element of the packed vector."""
    ref = like[0]
    return torch.cat([torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand(t.numel())
                      for v, t in zip(values, like)])


class _Field:
    """The vector field handed to odeint (fixed-grid solvers take no step callbacks)."""

    def __init__(self, field: Callable[[Tensor, Tensor], Tensor]):
        self.field = field
        self.accepted = 0
        self.rejected = 0
        self.last_step: Optional[float] = None

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.field(t, y)


class _CountingField(_Field):
    """Records accepted and rejected steps of adaptive solvers through torchdiffeq callbacks."""

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.last_step = float(dt)

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def integrate_unit_interval(field: Callable[[Tensor, Tensor], Tensor], y0: Tensor, method: str,
                            rtol: float, atol: float, first_step: Optional[float],
                            step_size: Optional[float]) -> tuple[Tensor, _Field]:
    """y(1) for y' = field(s, y), y(0) = y0, with torchdiffeq; returns the end state and stats."""
    counting = (_CountingField if method in ADAPTIVE_METHODS else _Field)(field)
    s = torch.tensor([0.0, 1.0], dtype=torch.float64, device=y0.device)
    options = {}
    if method in ADAPTIVE_METHODS and first_step is not None:
        options["first_step"] = first_step
    if method in FIXED_GRID_METHODS and step_size is not None:
        options["step_size"] = step_size
    y = odeint(counting, y0, s, rtol=rtol, atol=atol, method=method, options=options)
    return y[-1], counting
