"""Shared plumbing for the torchdiffeq-integrated flows (the hybrid GD/ODE optimizer's ODE modules).

Parameters are packed into one flat state vector with ``einops.pack`` so the solver's RMS error
norm runs over every parameter, exactly as ``odeint`` on the flattened parameters would.
Each tensor may carry its own step size (param groups): the flow is integrated over s ∈ [0, 1]
with its vector field multiplied by lr per tensor, i.e. θ(s) = φ_{lr·s} for one shared lr —
the same trajectory as integrating over [0, lr], with a per-group clock when lrs differ.

Half precision: torchdiffeq's step-size controller works in the state's dtype, and in float16 its
error norms underflow to dt = 0 on the first step. float16/bfloat16 states are therefore
integrated in float32 (the vector field is still evaluated at the half-precision parameters) and
cast back. A solve that still collapses (a non-finite gradient: NaN error estimates shrink dt to
0) raises ``FloatingPointError`` saying so instead of torchdiffeq's bare ``AssertionError``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from einops import pack, unpack
from torch import Tensor

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

    def __init__(self, field: Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype):
        self.field, self.dtype = field, dtype
        self.calls = 0
        self.accepted = 0
        self.rejected = 0
        self.last_step: float | None = None

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.field(t, y).to(self.dtype)
        if self.calls == 0 and not bool(torch.isfinite(out).all()):
            # odeint's first call is at (0, y0): the gradient at the current parameters
            raise FloatingPointError(
                "ODE flow: the vector field (gradient) is non-finite at the current parameters; "
                "the parameters are left unchanged")
        self.calls += 1
        return out


class _CountingField(_Field):
    """Records accepted and rejected steps of adaptive solvers through torchdiffeq callbacks."""

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1
        self.last_step = float(dt)

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def integrate_unit_interval(field: Callable[[Tensor, Tensor], Tensor], y0: Tensor, method: str,
                            rtol: float, atol: float, first_step: float | None,
                            step_size: float | None) -> tuple[Tensor, _Field]:
    """y(1) for y' = field(s, y), y(0) = y0, with torchdiffeq; returns the end state and stats."""
    work = torch.float32 if y0.dtype in (torch.float16, torch.bfloat16) else y0.dtype
    counting = (_CountingField if method in ADAPTIVE_METHODS else _Field)(field, work)
    s = torch.tensor([0.0, 1.0], dtype=torch.float64, device=y0.device)
    options = {}
    if method in ADAPTIVE_METHODS and first_step is not None:
        options["first_step"] = first_step
    if method in FIXED_GRID_METHODS and step_size is not None:
        options["step_size"] = step_size
    from torchdiffeq import odeint  # imported on first use: it imports scipy.integrate (~1 s)
    try:
        y = odeint(counting, y0.to(work), s, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as error:  # torchdiffeq: "underflow in dt 0.0"
        raise FloatingPointError(
            f"ODE flow ({method}): the solver's step size underflowed ({error}); the vector field "
            "became non-finite or too rough for rtol/atol along the step. Lower lr or loosen "
            "rtol/atol; the parameters are left unchanged") from None
    if not bool(torch.isfinite(y[-1]).all()):
        raise FloatingPointError(f"ODE flow ({method}): the solve produced non-finite "
                                 "parameters; lower lr; the parameters are left unchanged")
    return y[-1].to(y0.dtype), counting
