"""Pure update rules shared by the runtime optimizers and the differentiable unrolls."""
from .base import GradFn, Rule, State
from .curvature import CurvatureProbe, probe_curvature, spectral_gap, spectral_radius
from .gradient_flow import GradientFlowRule
from .hyper import GDHyper, Hyper, HyperError, ODEHyper
from .lanczos import LanczosResult
from .nesterov_flow import NesterovFlowRule
from .runge_kutta import RungeKuttaRule, RungeKuttaStep, explicit_rk_step
from .step_size_control import AdaptiveRungeKuttaRule, StepRejectedError, error_ratio
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = ["GradFn", "Rule", "State", "TABLEAUS", "ButcherTableau", "get_tableau",
           "RungeKuttaRule", "RungeKuttaStep", "explicit_rk_step", "AdaptiveRungeKuttaRule",
           "StepRejectedError", "error_ratio", "GradientFlowRule", "NesterovFlowRule",
           "Hyper", "HyperError", "GDHyper", "ODEHyper"]
from .adam import AdamRule
from .rmsprop import RMSpropRule
from .sgd import SGDRule

__all__ += ["SGDRule", "AdamRule", "RMSpropRule"]
__all__ += ["CurvatureProbe", "probe_curvature", "spectral_radius", "spectral_gap",
            "LanczosResult"]
