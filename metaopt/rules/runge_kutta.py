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
    add_into,
    add_scaled,
    axpy_,
    per_tensor,
    scale_into,
    with_weight_decay,
)
from .hyper import ODEHyper
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

    def init(self, params: Sequence[Tensor]) -> State:
        return {}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: ODEHyper) -> tuple[TensorList, State]:
        hyper, n = ODEHyper.coerce(hyper), len(params)
        slope_fn = gradient_slope(grad_fn, per_tensor(hyper.weight_decay, n))
        result = explicit_rk_step(params, slope_fn, self.tableau, per_tensor(hyper.lr, n))
        return result.params, state

    def step_(self, params: list[Tensor], evaluate, first: tuple[Tensor, TensorList],
              hyper: ODEHyper, workspace: tuple[TensorList, TensorList, TensorList]) -> None:
        """In-place twin of ``step`` for the runtime optimizer (``no_grad``; mutates ``params``).

        ``evaluate()`` returns (loss, grads) at wherever ``params`` currently are, grads owned by
        the caller; ``first`` is that pair at θ. ``workspace`` = (θ snapshot, Σ b_i k_i, copy of
        the first gradient) buffers reused across steps, so a step allocates nothing beyond the
        closure's own gradients, and every gradient tensor is dropped as soon as no later stage
        reads it — holding one across closures makes glibc return and re-fault memory every step
        (measured: ~400 extra page faults per RK4 step). The copy of the first gradient is
        handed back in the ``first`` list at the end, so the caller can leave ``p.grad`` at θ's
        gradient; the last stage's tensors become the next copy buffer. Same math as ``step``,
        summed in a different order (``tests/rules/test_runge_kutta.py`` holds them equal in
        float64).
        """
        tableau, n, hyper = self.tableau, len(params), ODEHyper.coerce(hyper)
        neg_h = [-h for h in per_tensor(hyper.lr, n)]
        weight_decay = per_tensor(hyper.weight_decay, n)
        theta, weighted_sum, first_grad = workspace
        torch._foreach_copy_(theta, params)
        first_grads = first[1]
        torch._foreach_copy_(first_grad, first_grads)
        stage0 = list(first_grads)
        first_grads[:] = [None] * n  # the caller's list must not pin them through the closures
        last_use = {j: max([i for i in range(j + 1, tableau.stages) if tableau.a[i][j] != 0.0],
                           default=0) for j in range(tableau.stages)}
        slopes: dict[int, TensorList] = {}
        summed = False
        grads = None
        for i in range(tableau.stages):
            if i > 0:
                # Release the last slope before the closure runs, so backward can reuse its memory.
                grads = None
                terms = [(j, a_ij) for j, a_ij in enumerate(tableau.a[i]) if a_ij != 0.0]
                for t, (j, a_ij) in enumerate(terms):
                    scale = [a_ij * h for h in neg_h]
                    if t == 0 and i > 1:  # θ + a·k straight into the live tensors: one pass
                        add_into(params, theta, slopes[j], scale)
                    else:  # (at stage 1 the live tensors still hold θ)
                        axpy_(params, slopes[j], scale)
                    if last_use[j] == i:
                        del slopes[j]
                if not terms and i > 1:
                    torch._foreach_copy_(params, theta)
            if i == 0:
                grads, stage0 = stage0, None
            else:
                _, grads = evaluate()
            if i > 0:  # stage slopes are fresh tensors owned here: decay them in place
                for g, p, wd in zip(grads, params, weight_decay):
                    if wd != 0.0:
                        g.add_(p, alpha=wd)
            else:
                grads = with_weight_decay(grads, params, weight_decay)
            if tableau.b[i] != 0.0:
                if summed:
                    torch._foreach_add_(weighted_sum, grads, alpha=tableau.b[i])
                else:
                    scale_into(weighted_sum, grads, tableau.b[i])
                    summed = True
            if last_use[i] > i:
                slopes[i] = grads
        add_into(params, theta, weighted_sum, neg_h)
        # Hand the copy of θ's gradient back and keep the last stage's tensors as next step's
        # copy buffer: a swap, not another pass.
        first_grads[:] = first_grad
        first_grad[:] = grads
