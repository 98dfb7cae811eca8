"""The Su–Boyd–Candès ODE of Nesterov's accelerated gradient, integrated with torchdiffeq.

Nesterov's accelerated gradient as an ODE (Su, Boyd & Candès 2014, "A differential equation for
modeling Nesterov's accelerated gradient method"):

    Ẍ + (3/t)·Ẋ + ∇f(X) = 0    as the first-order system    Ẋ = V,   V̇ = −(3/t)·V − ∇f(X)

Each step advances the clock t by lr; X, V and t live in the optimizer state. The friction 3/t
is singular at t = 0, so the clock starts at ``t0`` > 0 with V = 0 (Su et al. start at rest).
Per-tensor step sizes get per-tensor clocks, integrated jointly over s ∈ [0, 1]. As in
``gradient_flow.py`` the solver state is the displacement X − X_n (with V), so a tensor at rest
stays bit-exactly at rest.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor, with_weight_decay
from .hyper import ODEHyper
from .ode_common import check_method, flatten, integrate_unit_interval, per_element, unflatten


class NesterovFlowRule:
    """hyper: ``ODEHyper(lr, weight_decay=0)``, ``lr`` the clock advance per step.
    state: ``velocity`` (list like params), ``time`` (per tensor), ``first_step``, counts.
    """

    def __init__(self, method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-6,
                 t0: float = 1.0, step_size: float = 1.0):
        self.method = check_method(method)
        self.rtol, self.atol, self.t0, self.step_size = rtol, atol, t0, step_size

    def init(self, params: Sequence[Tensor]) -> State:
        return {"velocity": [torch.zeros_like(p) for p in params],
                "time": [self.t0] * len(params), "first_step": None,
                "accepted": 0, "rejected": 0}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: ODEHyper) -> tuple[TensorList, State]:
        hyper, n = ODEHyper.coerce(hyper), len(params)
        lrs = per_tensor(hyper.lr, n)
        weight_decay = per_tensor(hyper.weight_decay, n)
        x0, shapes = flatten(params)
        v0, _ = flatten(state["velocity"])
        clock_rate = per_element(lrs, params)
        clock_start = per_element(state["time"], params)
        size = x0.numel()

        def field(s, y):
            z, v = y[:size], y[size:]
            points = unflatten(x0 + z, shapes)
            _, grads = grad_fn(points)
            g, _ = flatten(with_weight_decay(grads, points, weight_decay))
            t = clock_start + clock_rate * s.to(z.dtype)
            return torch.cat([clock_rate * v, clock_rate * (-(3.0 / t) * v - g)])

        y0 = torch.cat([torch.zeros_like(x0), v0])
        y1, stats = integrate_unit_interval(field, y0, self.method, self.rtol, self.atol,
                                            state["first_step"], self.step_size)
        first_step = stats.last_step if stats.last_step is not None else state["first_step"]
        return unflatten(x0 + y1[:size], shapes), {
            "velocity": unflatten(y1[size:], shapes),
            "time": [t + float(lr) for t, lr in zip(state["time"], lrs)],
            "first_step": first_step,
            "accepted": state["accepted"] + stats.accepted,
            "rejected": state["rejected"] + stats.rejected}
