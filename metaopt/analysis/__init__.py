"""GDSearch analysis instruments: pure functions that return data (tensors, dataclasses).

Trajectories on 2-D test functions, Hessian spectra (Lanczos top-k, Hutchinson trace, stochastic
Lanczos quadrature density), saddle escape, loss landscapes, basins of attraction, sensitivity,
convergence and anomaly detection. Plots live in ``scripts/studies``.

Each instrument module lists its public names in its own ``__all__``; this package re-exports them
(one import line per module, so engineers adding instruments touch one line each).
"""
from . import (
    anomalies,
    basins,
    batched,
    budget,
    convergence,
    divergence,
    hessian,
    landscape,
    saddles,
    sensitivity,
    training_stats,
    trajectories,
)
from .anomalies import *  # noqa: F401,F403
from .basins import *  # noqa: F401,F403
from .batched import *  # noqa: F401,F403
from .budget import *  # noqa: F401,F403
from .convergence import *  # noqa: F401,F403
from .divergence import *  # noqa: F401,F403
from .hessian import *  # noqa: F401,F403
from .landscape import *  # noqa: F401,F403
from .saddles import *  # noqa: F401,F403
from .sensitivity import *  # noqa: F401,F403
from .training_stats import *  # noqa: F401,F403
from .trajectories import *  # noqa: F401,F403

__all__ = [
    *hessian.__all__,
    *batched.__all__,
    *basins.__all__,
    *trajectories.__all__,
    *saddles.__all__,
    *landscape.__all__,
    *anomalies.__all__,
    *budget.__all__,
    *convergence.__all__,
    *divergence.__all__,
    *sensitivity.__all__,
    *training_stats.__all__,
]
