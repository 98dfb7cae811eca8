"""Runge–Kutta gradient-flow optimizers: explicit RK steps of dθ/dt = −∇L(θ) (Hairer, Nørsett &
Wanner).

Thin torch.optim adapters over ``metaopt.rules.RungeKuttaRule`` and
``metaopt.rules.AdaptiveRungeKuttaRule``; the update math lives there.
"""
from __future__ import annotations

import torch

from ..adapters.closure_rule import ClosureRuleOptimizer, check_positive
from ..rules import AdaptiveRungeKuttaRule, RungeKuttaRule, get_tableau


class RungeKutta(ClosureRuleOptimizer):
    r"""One explicit Runge–Kutta step of dθ/dt = −∇L(θ) − wd·θ per ``step(closure)``.

    ``method`` is any fixed tableau: ``euler`` (= SGD), ``midpoint``, ``heun``, ``ralston``,
    ``heun3``, ``rk4`` (classic), ``rk4_38`` (3/8 rule). The step size is the
    group's ``lr``; one step costs ``stages`` closure evaluations.
    """

    def __init__(self, params, lr: float = 1e-2, method: str = "rk4", weight_decay: float = 0.0):
        tableau = get_tableau(method)
        if tableau.adaptive:
            raise ValueError(f"method: {method!r} is an embedded pair; use AdaptiveRK for it")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay),
                         RungeKuttaRule(method))
        self.method = method
        # Scratch buffers (θ snapshot, spare and sum slots), never pickled. Created here
        # rather than with getattr(..., default): torch.compile(opt.step) cannot trace an
        # attribute that appears mid-step.
        self._workspace: tuple = ([], [], [])

    def __setstate__(self, state):
        super().__setstate__(state)
        self._workspace = ([], [], [])  # rebuilt on the next step

    def _update(self, params, hyper, grad_fn):
        # The benchmark asks for the in-place path (metaopt/rules/runge_kutta_inplace.py): the
        # stage points are written into the live tensors, no allocation beyond the closure's.
        workspace = self._workspace
        theta = workspace[0]
        if len(theta) != len(params) or any(t.shape != p.shape or t.dtype != p.dtype or
                                             t.device != p.device
                                             for t, p in zip(theta, params)):
            for buffers in workspace:  # refilled in place (compile-friendly: no rebinding)
                buffers.clear()
            theta[:] = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(theta, params)
        grad_fn.start = theta  # the θ snapshot, restored if the step fails
        self.rule.step_(params, grad_fn.at_params, grad_fn.start_grads, hyper, workspace)
        return {}


class RK4(RungeKutta):
    """Classic fourth-order Runge–Kutta: θ ← θ − lr/6 (k1 + 2k2 + 2k3 + k4)."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, method="rk4", weight_decay=weight_decay)


class Ralston(RungeKutta):
    """Ralston's RK2: k2 = ∇L(θ − 2lr/3 · k1), θ ← θ − lr/4 (k1 + 3k2)."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, method="ralston", weight_decay=weight_decay)


class Heun(RungeKutta):
    """Heun's RK2: k2 = ∇L(θ − lr·k1), θ ← θ − lr/2 (k1 + k2)."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, method="heun", weight_decay=weight_decay)


class AdaptiveRK(ClosureRuleOptimizer):
    """One accepted embedded-pair step (``bosh3`` or ``dopri5``) per ``step(closure)``.

    The first step has size ``lr``; afterwards torchdiffeq's controller picks the step from the
    error estimate and carries it (as a multiple of lr) across steps. Rejected attempts retry
    within the same call, at most ``max_rejections`` times. ``state[p]`` records ``accepted``,
    ``rejected`` and ``step_scale`` (the next step is ``step_scale · lr``, at most
    ``max_step_scale · lr``).
    """

    def __init__(self, params, lr: float = 1e-2, method: str = "dopri5", rtol: float = 1e-3,
                 atol: float = 1e-6, weight_decay: float = 0.0, max_rejections: int = 50,
                 max_step_scale: float = 1e3):
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        check_positive("max_step_scale", max_step_scale)
        if not isinstance(max_rejections, int) or max_rejections < 0:
            raise ValueError(f"max_rejections: must be an int >= 0, got {max_rejections!r}")
        rule = AdaptiveRungeKuttaRule(method, rtol=rtol, atol=atol, max_rejections=max_rejections,
                                      max_step_scale=max_step_scale)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), rule)
        self.method = method
