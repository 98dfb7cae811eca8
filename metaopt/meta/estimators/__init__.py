"""Meta-gradient estimators behind one interface (``GradientEstimator.estimate``)."""
from .base import GradientEstimator, MetaGradient, mean_live_loss
from .bptt import TruncatedBPTT
from .es import AntitheticES
from .pes import PersistentES

ESTIMATORS = ("bptt", "es", "pes")


def make_estimator(name: str, num_pairs: int = 8, sigma: float = 0.01) -> GradientEstimator:
    """The estimator named ``name`` (``"bptt"``, ``"es"`` or ``"pes"``) from plain arguments."""
    if name == "bptt":
        return TruncatedBPTT()
    if name == "es":
        return AntitheticES(num_pairs, sigma)
    if name == "pes":
        return PersistentES(num_pairs, sigma)
    raise ValueError(f"estimator: must be one of {ESTIMATORS}, got {name!r}")


__all__ = ["ESTIMATORS", "AntitheticES", "GradientEstimator", "MetaGradient", "PersistentES",
           "TruncatedBPTT", "make_estimator", "mean_live_loss"]
