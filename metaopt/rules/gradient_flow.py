"""Gradient flow dθ/dt = −∇L(θ) − wd·θ integrated by torchdiffeq over one step of length lr.

The continuous-time gradient flow of the hybrid GD–ODE optimizer, with adaptive time-stepping
(on μ-strongly convex L the flow contracts as e^{−2μt}). One call computes θ(lr) = φ_lr(θ) with
``torchdiffeq.odeint`` on the flattened parameters; the last accepted solver step (in units of lr)
seeds the next call's
``first_step``, so the controller's knowledge of the stiffness is carried across steps.

The solver integrates the displacement z = θ − θ_n (z(0) = 0) rather than θ itself, so a tensor
whose vector field vanishes stays bit-exactly where it is (torchdiffeq's dense-output
interpolation would otherwise round it by an ulp); the relative tolerance then measures the error
against the size of the update, which is scale-free in the parameters' magnitudes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor, with_weight_decay
from .hyper import ODEHyper
from .ode_common import check_method, flatten, integrate_unit_interval, per_element, unflatten


class GradientFlowRule:
    """hyper: ``ODEHyper(lr, weight_decay=0)``, ``lr`` the flow time per step (shared or per
    tensor).
    state: ``first_step`` (solver step in units of lr, or None), ``accepted``, ``rejected``.
    ``step_size`` (fixed-grid methods) is also in units of lr: 1.0 means one solver step.
    """

    def __init__(self, method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-6,
                 step_size: float = 1.0):
        self.method = check_method(method)
        self.rtol, self.atol, self.step_size = rtol, atol, step_size

    def init(self, params: Sequence[Tensor]) -> State:
        return {"first_step": None, "accepted": 0, "rejected": 0}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: ODEHyper) -> tuple[TensorList, State]:
        hyper, n = ODEHyper.coerce(hyper), len(params)
        weight_decay = per_tensor(hyper.weight_decay, n)
        theta, shapes = flatten(params)
        time_scale = per_element(per_tensor(hyper.lr, n), params)

        def field(s, z):
            points = unflatten(theta + z, shapes)
            _, grads = grad_fn(points)
            slope, _ = flatten(with_weight_decay(grads, points, weight_decay))
            return -time_scale * slope

        z1, stats = integrate_unit_interval(field, torch.zeros_like(theta), self.method,
                                            self.rtol, self.atol, state["first_step"],
                                            self.step_size)
        first_step = stats.last_step if stats.last_step is not None else state["first_step"]
        return unflatten(theta + z1, shapes), {"first_step": first_step,
                                       "accepted": state["accepted"] + stats.accepted,
                                       "rejected": state["rejected"] + stats.rejected}
