"""One generic explicit Runge–Kutta step on the gradient flow dθ/dt = −∇L(θ) − wd·θ.

Runge–Kutta gradient-flow optimizers. Gradient descent is the Euler step of the gradient flow;
any Butcher tableau (``tableaus.py``) gives another optimizer. With slopes written as gradients
``k_i = ∇L(y_i) + wd·y_i`` (so y' = −k) and step size h = lr::

    y_i = θ − h · Σ_{j<i} a_ij k_j,      θ_next = θ − h · Σ_i b_i k_i

For classic RK4 this is exactly the classic ``x_{k+1} = x_k − α/6 (k1 + 2k2 + 2k3 + k4)``.
Embedded pairs also return ``error = h · Σ_i (b_i − b̂_i) k_i``, the local error estimate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    GradFn,
    State,
    StepSize,
    TensorList,
    add_scaled,
    per_tensor,
    with_weight_decay,
)
from .hyper import ODEHyper
from .runge_kutta_inplace import InPlaceSchedule
from .tableaus import ButcherTableau, get_tableau


@dataclass
class RungeKuttaStep:
    loss: Tensor                  # loss at the starting point θ
    params: TensorList            # θ_next
    slopes: list[TensorList]      # k_1 … k_s (k_1 is the gradient at θ, weight decay included)
    error: TensorList | None   # local error estimate for embedded pairs, else None


def gradient_slope(grad_fn: GradFn, weight_decay: Sequence) -> GradFn:
    """Wrap ``grad_fn`` so it returns the slope ∇L(y) + wd·y of the (decayed) gradient flow."""
    def slope(point):
        loss, grads = grad_fn(point)
        return loss, with_weight_decay(grads, point, weight_decay)
    return slope


def explicit_rk_step(params: Sequence[Tensor], slope_fn: GradFn, tableau: ButcherTableau,
                     step_size: StepSize, first: tuple[Tensor, TensorList] | None = None
                     ) -> RungeKuttaStep:
    """Take one step of ``tableau`` with step ``step_size`` (one per tensor or shared).

    ``first`` = (loss, k_1) reuses an already evaluated first slope (rejected adaptive steps,
    FSAL); otherwise ``slope_fn`` is called ``tableau.stages`` times.
    """
    neg_h = [-h for h in per_tensor(step_size, len(params))]
    loss, k1 = first if first is not None else slope_fn(params)
    slopes = [k1]
    point = None
    for i in range(1, tableau.stages):
        point = add_scaled(params, slopes, tableau.a[i], neg_h)
        slopes.append(slope_fn(point)[1])
    if tableau.fsal:
        # The last stage was evaluated at θ − h Σ b_j k_j: that point *is* θ_next.
        new_params = point
    else:
        new_params = add_scaled(params, slopes, tableau.b, neg_h)
    error = None
    if tableau.b_error is not None:
        zeros = [torch.zeros_like(p) for p in params]
        error = add_scaled(zeros, slopes, tableau.b_error, neg_h)
    return RungeKuttaStep(loss, new_params, slopes, error)


class RungeKuttaRule:
    """Fixed-step explicit Runge–Kutta integration of the gradient flow, one step per call.

    hyper: ``ODEHyper(lr, weight_decay=0)``, ``lr`` the step size h (shared or per tensor).
    """

    def __init__(self, method: str = "rk4"):
        self.tableau = get_tableau(method)
        self.schedule = InPlaceSchedule.of(self.tableau)

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "schedule" not in state:  # pickled before the in-place schedule existed
            self.schedule = InPlaceSchedule.of(self.tableau)

    def init(self, params: Sequence[Tensor]) -> State:
        return {}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: ODEHyper) -> tuple[TensorList, State]:
        hyper, n = ODEHyper.coerce(hyper), len(params)
        slope_fn = gradient_slope(grad_fn, per_tensor(hyper.weight_decay, n))
        result = explicit_rk_step(params, slope_fn, self.tableau, per_tensor(hyper.lr, n))
        return result.params, state

    def step_(self, params: list[Tensor], evaluate, first_grads: Sequence[Tensor],
              hyper: ODEHyper, workspace: tuple[TensorList, list, list]) -> None:
        """In-place twin of ``step`` for the runtime optimizer (``no_grad``; mutates ``params``).

        ``evaluate()`` returns (loss, grads) at wherever ``params`` currently are, grads owned by
        the caller; ``first_grads`` is the gradient at θ (only read). ``workspace`` = (θ's
        snapshot, already taken; the ``spare`` and ``total`` slots), reused across steps. The
        passes are ``InPlaceSchedule``'s (``runge_kutta_inplace.py``), derived from the same
        tableau: same math as ``step``, summed in a different order
        (``tests/rules/test_runge_kutta.py`` holds them equal in float64).
        """
        hyper, n = ODEHyper.coerce(hyper), len(params)
        neg_h = [-float(h) for h in per_tensor(hyper.lr, n)]
        weight_decay = [float(w) for w in per_tensor(hyper.weight_decay, n)]
        self.schedule.run(params, evaluate, first_grads, neg_h, weight_decay, *workspace)
