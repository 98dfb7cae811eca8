"""DCAO, the Dynamic Curvature-Aware Optimizer, whole: the step-size schedules from a Lanczos
estimate of the Hessian's extreme eigenvalues (``rule``) and the ``torch.optim`` adapter
(``optimizer``). The curvature numerics it shares with the hybrid live in ``metaopt.rules``."""
from .optimizer import DCAO
from .rule import DCAOHyper, DCAORule, dcao_schedule

__all__ = ["DCAO", "DCAOHyper", "DCAORule", "dcao_schedule"]
