"""Every runtime optimizer of metaopt, registered once (like PyTorch's OptimizerInfo).

The conformance suite in ``test_conformance.py`` runs the generic torch.optim properties over
each spec. A new optimizer joins by appending an ``OptimizerSpec`` to ``SPECS``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import metaopt.optim as mo
from metaopt.garo import GAROController


@dataclass
class OptimizerSpec:
    name: str
    cls: Callable
    #: constructor kwargs for a well-behaved run on the small (Wx + b)² problem
    kwargs: dict[str, Any]
    #: (invalid kwargs, argument name the ValueError must mention)
    invalid: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: True when step() must get a closure (integrators, probe steps)
    needs_closure: bool = True
    #: steps for the "goes the right direction" check
    steps: int = 10

    def __str__(self) -> str:
        return self.name


_negative_lr = [({"lr": -1.0}, "lr"), ({"weight_decay": -0.1}, "weight_decay")]
_tolerances = [({"rtol": 0.0}, "rtol"), ({"atol": -1.0}, "atol")]

SPECS: list[OptimizerSpec] = [
    OptimizerSpec("RK4", mo.RK4, {"lr": 0.02}, _negative_lr),
    OptimizerSpec("Ralston", mo.Ralston, {"lr": 0.02}, _negative_lr),
    OptimizerSpec("Heun", mo.Heun, {"lr": 0.02}, _negative_lr),
    OptimizerSpec("RungeKutta-rk4_38", mo.RungeKutta, {"lr": 0.02, "method": "rk4_38"},
                  _negative_lr + [({"method": "rk5_nonexistent"}, "method"),
                                  ({"method": "dopri5"}, "method")]),
    OptimizerSpec("RungeKutta-midpoint", mo.RungeKutta, {"lr": 0.02, "method": "midpoint"},
                  _negative_lr),
    OptimizerSpec("RungeKutta-euler", mo.RungeKutta,
                  {"lr": 0.02, "method": "euler", "weight_decay": 1e-3}, _negative_lr),
    OptimizerSpec("AdaptiveRK-dopri5", mo.AdaptiveRK, {"lr": 0.02, "method": "dopri5"},
                  _negative_lr + _tolerances + [({"method": "rk4"}, "method"),
                                                ({"max_rejections": -1}, "max_rejections")]),
    OptimizerSpec("AdaptiveRK-bosh3", mo.AdaptiveRK,
                  {"lr": 0.02, "method": "bosh3", "rtol": 1e-4}, _negative_lr + _tolerances),
    OptimizerSpec("GradientFlow", mo.GradientFlow, {"lr": 0.05},
                  _negative_lr + _tolerances + [({"method": "nope"}, "method")]),
    OptimizerSpec("GradientFlow-rk4", mo.GradientFlow,
                  {"lr": 0.05, "method": "rk4", "step_size": 0.5}, _negative_lr),
    OptimizerSpec("NesterovFlow", mo.NesterovFlow, {"lr": 0.1},
                  _negative_lr + _tolerances + [({"t0": 0.0}, "t0")]),
]

# GARO: ``lr`` is the untrained controller's rate, which a trained one scales by lr_t / init_lr;
# untrained, lr=0.05 is SGD with lr 0.05. Its weight decay is learned: weight_decay_scale
# multiplies it.
_garo_invalid = [({"lr": -1.0}, "lr"), ({"weight_decay_scale": -0.1}, "weight_decay_scale"),
                 ({"direction": "nope"}, "direction"),
                                ({"granularity": "layer"}, "granularity"),
                                ({"beta2": 1.5}, "beta2"), ({"eps": 0.0}, "eps")]
SPECS += [
    OptimizerSpec("GARO", mo.GARO, {"lr": 0.05}, _garo_invalid, needs_closure=False),
    OptimizerSpec("GARO-adam", mo.GARO, {"lr": 0.1, "direction": "adam"}, _garo_invalid,
                  needs_closure=False),
    OptimizerSpec("GARO-group", mo.GARO, {"lr": 0.05, "granularity": "group"}, _garo_invalid,
                  needs_closure=False),
    OptimizerSpec("GARO-tensor-adam", mo.GARO,
                  {"lr": 0.1, "granularity": "tensor", "direction": "adam"}, _garo_invalid,
                  needs_closure=False),
]
# DCAO: probe_every=3 so the 10+10 resume and deepcopy tests cross probe steps.
_dcao_invalid = _negative_lr + [({"momentum": 1.0}, "momentum"),
                                ({"probe_every": 0}, "probe_every"),
                                ({"k": 0}, "k"), ({"lanczos_iters": 2}, "lanczos_iters"),
                                ({"alpha": -1.0}, "alpha"), ({"schedule": "nope"}, "schedule"),
                                ({"stability_factor": 0.0}, "stability_factor")]
SPECS += [
    OptimizerSpec("DCAO", mo.DCAO, {"lr": 0.02, "momentum": 0.5, "probe_every": 3, "k": 3,
                                    "lanczos_iters": 6, "weight_decay": 1e-3}, _dcao_invalid),
    OptimizerSpec("DCAO-eos", mo.DCAO, {"lr": 1.0, "momentum": 0.5, "probe_every": 3, "k": 3,
                                        "lanczos_iters": 6, "schedule": "edge_of_stability"},
                  _dcao_invalid),
]
# HybridGDODE: grad_threshold=0.5 / min_dwell=2 make the heuristic switch GD -> ODE within the
# first 10 steps on (Wx + b)², so the 10+10 resume and deepcopy tests cross a switch
# (tests/optim/test_hybrid.py asserts that it does).
_hybrid_invalid = _negative_lr + [({"gd": "nope"}, "gd"), ({"ode": "nope"}, "ode"),
                                  ({"policy": "nope"}, "policy"), ({"momentum": 1.0}, "momentum"),
                                  ({"min_dwell": 0}, "min_dwell"),
                                  ({"hysteresis": 0.5}, "hysteresis"),
                                  ({"criteria": ("nope",)}, "criteria"),
                                  ({"ode_scale": -1.0}, "ode_scale")]
HYBRID_SWITCHING = {"lr": 0.01, "momentum": 0.5, "grad_threshold": 0.5, "min_dwell": 2,
                    "criteria": ("gradient",)}
SPECS += [
    OptimizerSpec("HybridGDODE", mo.HybridGDODE, HYBRID_SWITCHING, _hybrid_invalid),
    OptimizerSpec("HybridGDODE-adam-nesterov", mo.HybridGDODE,
                  {**HYBRID_SWITCHING, "gd": "adam", "lr": 0.05, "ode": "nesterov_flow",
                   "ode_scale": 0.2, "weight_decay": 1e-3}, _hybrid_invalid),
    OptimizerSpec("HybridGDODE-rmsprop-dopri5", mo.HybridGDODE,
                  {**HYBRID_SWITCHING, "gd": "rmsprop", "lr": 0.01, "ode": "dopri5"},
                  _hybrid_invalid),
    OptimizerSpec("HybridGDODE-gd-only", mo.HybridGDODE, {"lr": 0.01, "policy": "gd"},
                  _hybrid_invalid, needs_closure=False),
    # the GD module a scale-free GARO controller, the ODE step from its step size
    OptimizerSpec("HybridGDODE-garo", mo.HybridGDODE,
                  {**HYBRID_SWITCHING, "gd": "garo", "lr": 1.0,
                   "controller": GAROController(hidden_size=8, init_lr=1.0, init_momentum=0.5,
                                                features="relative")},
                  _hybrid_invalid + [({"direction": "nope"}, "direction"),
                                     ({"scale": "nope"}, "scale")],
                  steps=20),  # (DoG's estimate starts at 1e-4 of the parameters' scale)
]
