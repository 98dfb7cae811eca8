"""Optimizers whose step is an ODE solve by torchdiffeq (continuous-time gradient flows).

Adapters over ``metaopt.rules.GradientFlowRule`` and ``metaopt.rules.NesterovFlowRule``.
"""
from __future__ import annotations

from ..adapters.closure_rule import ClosureRuleOptimizer, check_positive
from ..rules import GradientFlowRule, NesterovFlowRule


def _check_tolerances(rtol, atol, step_size):
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    check_positive("step_size", step_size)


class GradientFlow(ClosureRuleOptimizer):
    """θ ← φ_lr(θ): integrate dθ/dt = −∇L(θ) − wd·θ over [0, lr] with ``torchdiffeq.odeint``.

    ``method`` is any torchdiffeq solver (adaptive: rtol/atol apply; fixed-grid: ``step_size`` is
    the solver step as a fraction of lr). The last accepted solver step seeds the next call.
    """

    def __init__(self, params, lr: float = 1e-2, method: str = "dopri5", rtol: float = 1e-4,
                 atol: float = 1e-6, weight_decay: float = 0.0, step_size: float = 1.0):
        _check_tolerances(rtol, atol, step_size)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay),
                         GradientFlowRule(method, rtol=rtol, atol=atol, step_size=step_size))
        self.method = method


class NesterovFlow(ClosureRuleOptimizer):
    """The Su–Boyd–Candès ODE Ẍ + (3/t)Ẋ + ∇f(X) = 0, advanced by ``lr`` of time per step.

    Integrated as Ẋ = V, V̇ = −(3/t)V − ∇f(X) with torchdiffeq; ``state[p]`` carries the
    velocity V and the clock t, which starts at ``t0`` with V = 0.
    """

    def __init__(self, params, lr: float = 1e-1, method: str = "dopri5", rtol: float = 1e-4,
                 atol: float = 1e-6, weight_decay: float = 0.0, t0: float = 1.0,
                 step_size: float = 1.0):
        _check_tolerances(rtol, atol, step_size)
        check_positive("t0", t0)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay),
                         NesterovFlowRule(method, rtol=rtol, atol=atol, t0=t0,
                                          step_size=step_size))
        self.method = method
