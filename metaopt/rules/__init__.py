"""Pure update rules shared by the runtime optimizers and the differentiable unrolls."""
from .base import GradFn, Rule, State
from .garo import GARORule
from .gradient_flow import GradientFlowRule
from .nesterov_flow import NesterovFlowRule
from .runge_kutta import RungeKuttaRule, RungeKuttaStep, explicit_rk_step
from .step_size_control import AdaptiveRungeKuttaRule, StepRejectedError, error_ratio
from .tableaus import TABLEAUS, ButcherTableau, get_tableau

__all__ = ["GradFn", "Rule", "State", "TABLEAUS", "ButcherTableau", "get_tableau",
           "RungeKuttaRule", "RungeKuttaStep", "explicit_rk_step", "AdaptiveRungeKuttaRule",
           "StepRejectedError", "error_ratio", "GradientFlowRule", "NesterovFlowRule", "GARORule"]
