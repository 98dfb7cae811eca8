"""Runtime optimizers: ``torch.optim.Optimizer`` subclasses over the rules in ``metaopt.rules``."""
from ..dcao.optimizer import DCAO
from ..garo.optimizer import GARO, GlobalAdaptiveSGD
from ..hybrid.optimizer import HybridGDODE
from .ode_flow import GradientFlow, NesterovFlow
from .runge_kutta import RK4, AdaptiveRK, Heun, Ralston, RungeKutta

__all__ = ["RK4", "Ralston", "Heun", "RungeKutta", "AdaptiveRK", "GradientFlow", "NesterovFlow",
           "GARO", "GlobalAdaptiveSGD", "DCAO", "HybridGDODE"]
