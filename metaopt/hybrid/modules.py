"""The hybrid GD–ODE optimizer's modules by name: the GD module (``make_gd_rule``) and the ODE
module (``make_ode_rule``), spelt as in the optimizer registry (``metaopt.registry``). A GARO
controller as the GD module is built by ``HybridGDODE(gd="garo")`` (``metaopt.hybrid.garo_module``).
"""
from __future__ import annotations

from ..registry import match_name
from ..rules.adam import AdamRule
from ..rules.gradient_flow import GradientFlowRule
from ..rules.nesterov_flow import NesterovFlowRule
from ..rules.rmsprop import RMSpropRule
from ..rules.runge_kutta import RungeKuttaRule
from ..rules.sgd import SGDRule
from ..rules.step_size_control import AdaptiveRungeKuttaRule
from ..rules.tableaus import TABLEAUS

__all__ = ["GD_METHODS", "ODE_METHODS", "POLICIES", "make_gd_rule", "make_ode_rule"]

GD_METHODS = ("sgd", "adam", "rmsprop")  # and "garo" (a controller: metaopt.hybrid.garo_module)
ODE_METHODS = tuple(sorted(TABLEAUS)) + ("gradient_flow", "nesterov_flow")
POLICIES = ("heuristic", "gd", "ode")


def make_gd_rule(gd: str, betas=(0.9, 0.999), alpha: float = 0.99, eps: float = 1e-8):
    """The GD module by name, spelt as in the optimizer registry (``"sgd"``, ``"Adam"``, ...)."""
    gd = match_name(gd, GD_METHODS, "gd")
    if gd == "sgd":
        return SGDRule()
    if gd == "adam":
        return AdamRule(beta1=betas[0], beta2=betas[1], eps=eps)
    if gd == "rmsprop":
        return RMSpropRule(alpha=alpha, eps=eps)
    raise AssertionError(gd)  # match_name returned a name of GD_METHODS


def make_ode_rule(ode: str, rtol: float = 1e-3, atol: float = 1e-6, t0: float = 1.0):
    """The ODE module by name: any Butcher tableau (adaptive pairs get error control), or a
    torchdiffeq flow (``gradient_flow`` with dopri5, ``nesterov_flow``), in any spelling the
    optimizer registry accepts (``"RK4"``, ``"rk4"``)."""
    ode = match_name(ode, ODE_METHODS, "ode")
    if ode == "gradient_flow":
        return GradientFlowRule("dopri5", rtol=rtol, atol=atol)
    if ode == "nesterov_flow":
        return NesterovFlowRule("dopri5", rtol=rtol, atol=atol, t0=t0)
    if ode in TABLEAUS:
        if TABLEAUS[ode].adaptive:
            return AdaptiveRungeKuttaRule(ode, rtol=rtol, atol=atol)
        return RungeKuttaRule(ode)
    raise AssertionError(ode)  # match_name returned a name of ODE_METHODS
