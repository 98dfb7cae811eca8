"""Adaptive Runge–Kutta with embedded error control (Hairer, Nørsett & Wanner, §II.4).

The controller is torchdiffeq's (``RKAdaptiveStepsizeODESolver``), so trajectories and
accept/reject counts match ``torchdiffeq.odeint(method=..., options={"first_step": ...})``:

    ratio  = rms( error / (atol + rtol · max(|θ|, |θ_next|)) )        accept iff ratio ≤ 1
    factor = min(ifactor, max(safety · ratio^(−1/order), dfactor))     (dfactor → 1 if ratio < 1)
    h_next = h · factor

The step is carried across optimizer steps as ``step_scale = h / lr``, so a learning-rate
scheduler still scales the integration step, and a constant lr reproduces torchdiffeq exactly.
Unlike an ODE solve, an optimizer has no end time, so ``step_scale`` is capped
(``max_step_scale``): at a stationary point or with lr = 0 the error estimate is 0 and the
controller would otherwise grow the step ×10 per call until it overflows.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor
from .hyper import ODEHyper
from .runge_kutta import explicit_rk_step, gradient_slope
from .tableaus import get_tableau


class StepRejectedError(RuntimeError):
    """Raised when an adaptive step is rejected more often than ``max_rejections``."""


def error_ratio(error: Sequence[Tensor], start: Sequence[Tensor], end: Sequence[Tensor],
                rtol: float, atol: float) -> float:
    """RMS over every element of error / (atol + rtol · max(|start|, |end|))."""
    with torch.no_grad():
        error, start, end = ([t.detach() for t in ts] for ts in (error, start, end))
        scale = torch._foreach_maximum(torch._foreach_abs(start), torch._foreach_abs(end))
        tolerance = torch._foreach_add(torch._foreach_mul(scale, rtol), atol)
        norms = torch._foreach_norm(torch._foreach_div(error, tolerance))
        count = sum(t.numel() for t in error)
        return math.sqrt(float(torch.stack(norms).double().pow(2).sum()) / count)


def step_factor(ratio: float, order: int, safety: float, ifactor: float, dfactor: float) -> float:
    """torchdiffeq's ``_optimal_step_size`` factor; a non-finite ratio shrinks by ``dfactor``."""
    if not math.isfinite(ratio):
        return dfactor
    if ratio == 0.0:
        return ifactor
    if ratio < 1.0:
        dfactor = 1.0
    return min(ifactor, max(safety / ratio ** (1.0 / order), dfactor))


class AdaptiveRungeKuttaRule:
    """One accepted embedded-pair step per call; rejected attempts retry with a smaller step.

    hyper: ``ODEHyper(lr, weight_decay=0)``, ``lr`` the unit of step size (the first step is
    h = lr).
    state: ``step_scale`` (h / lr for the next attempt), ``accepted``, ``rejected``, ``time``.
    """

    def __init__(self, method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-6,
                 safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2,
                 max_rejections: int = 50, max_step_scale: float = 1e3):
        self.tableau = get_tableau(method)
        if not self.tableau.adaptive:
            raise ValueError(f"method: {method!r} has no embedded error estimate; "
                             "use 'bosh3' or 'dopri5'")
        self.rtol, self.atol = rtol, atol
        self.safety, self.ifactor, self.dfactor = safety, ifactor, dfactor
        self.max_rejections = max_rejections
        self.max_step_scale = max_step_scale

    def init(self, params: Sequence[Tensor]) -> State:
        return {"step_scale": 1.0, "accepted": 0, "rejected": 0, "time": 0.0}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: ODEHyper) -> tuple[TensorList, State]:
        hyper, n = ODEHyper.coerce(hyper), len(params)
        lrs = per_tensor(hyper.lr, n)
        slope_fn = gradient_slope(grad_fn, per_tensor(hyper.weight_decay, n))
        first = slope_fn(params)
        scale, rejected = state["step_scale"], state["rejected"]
        for _ in range(self.max_rejections + 1):
            result = explicit_rk_step(params, slope_fn, self.tableau,
                                      [lr * scale for lr in lrs], first=first)
            ratio = error_ratio(result.error, params, result.params, self.rtol, self.atol)
            factor = step_factor(ratio, self.tableau.order, self.safety, self.ifactor,
                                 self.dfactor)
            if ratio <= 1.0:
                return result.params, {"step_scale": min(scale * factor, self.max_step_scale),
                                       "accepted": state["accepted"] + 1, "rejected": rejected,
                                       "time": state["time"] + scale * float(lrs[0])}
            rejected += 1
            scale *= factor
        raise StepRejectedError(
            f"adaptive {self.tableau.name} step rejected {self.max_rejections + 1} times in a row "
            f"(last error ratio {ratio:.3g}, step {scale:.3g}·lr): the flow is too stiff or "
            "non-finite here; lower lr, loosen rtol/atol or raise max_rejections")
