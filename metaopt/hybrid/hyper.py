"""The hybrid GD–ODE rule's typed hyperparameters (``metaopt.rules.hyper`` describes the
containers)."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..rules.hyper import Hyper, ODEHyper


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class HybridHyper(Hyper):
    """``gd``: the GD rule's hyper (a ``GDHyper``, or a ``GAROHyper`` with ``gd_rule`` GARO);
    ``ode``: the ODE rule's ``ODEHyper`` (``lr`` = h or a callable ``(gd_state, ‖g_t‖) -> h``,
    ``weight_decay``); ``policy`` (required: ``.gate(features) -> p`` and ``.hard``);
    ``stability_lr`` (the lr of the stability feature); ``gd_rule`` (a GD rule bound per step,
    e.g. GARO with controller weights; default the ``HybridRule``'s own); ``generator`` (Lanczos
    start vectors; default seeded by the step); ``gd_momentum`` (the GD module's momentum for the
    stability estimate, e.g. GARO's last mom_t; default ``gd``'s ``momentum``, 0 without one).

    ``gd`` and ``ode`` may also be mappings of their fields (the GD / ODE rule converts them)."""

    gd: Any
    ode: Any
    policy: Any
    stability_lr: Any = 0.0
    gd_rule: Any = None
    generator: Any = None
    gd_momentum: Any = None

    def ode_hyper(self) -> ODEHyper:
        """``ode`` as an ``ODEHyper``."""
        return ODEHyper.coerce(self.ode)
