"""Meta-training glue for the hybrid GD-ODE optimizer (``controller.kind=hybrid|hybrid_garo``).

``scripts/meta_train.py`` calls ``build_learned`` instead of building a ``GAROLearnedRule``,
``export`` instead of the GARO export, and ``evaluation_factories`` for its final table. Config
objects stop here: the library gets plain arguments.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from metaopt.checkpoint import save_checkpoint
from metaopt.hybrid.garo_module import GARO_FEATURES, HybridControllers
from metaopt.hybrid.optimizer import HybridGDODE, make_gd_rule, make_ode_rule
from metaopt.hybrid.policy import SwitchingPolicy
from metaopt.hybrid.rule import HybridRule
from metaopt.meta.hybrid_learned import HybridGAROLearnedRule, HybridLearnedRule


def gate_kind(cfg) -> str:
    """``hybrid.gate``; ``auto``: straight-through for BPTT (differentiable, and the unroll is the
    runtime's hard trajectory), hard decisions for ES/PES (see ``metaopt.meta.hybrid_learned``)."""
    if cfg.hybrid.gate == "auto":
        return "straight_through" if cfg.estimator.name == "bptt" else "hard"
    if cfg.hybrid.gate != "hard" and cfg.estimator.name != "bptt":
        return "hard"  # gradient-free estimators gain nothing from a relaxation
    return cfg.hybrid.gate


def build_learned(cfg, garo_controller, garo_rule, device, dtype):
    """The learned rule of ``controller.kind`` (``hybrid`` or ``hybrid_garo``)."""
    h = cfg.hybrid
    joint = cfg.controller.kind == "hybrid_garo"
    policy = SwitchingPolicy(hidden_size=h.policy_hidden,
                             init_ode_probability=h.init_ode_probability,
                             extra_features=GARO_FEATURES if joint and h.garo_features else (),
                             generator=torch.Generator().manual_seed(cfg.seed + 1)
                             ).to(device=device, dtype=dtype)
    rule = HybridRule(make_gd_rule(h.gd), make_ode_rule(h.ode), min_dwell=h.min_dwell,
                      window=h.window, ode_cfl=h.ode_cfl)
    gate = dict(relaxed=gate_kind(cfg) != "hard", compute_cost=h.compute_cost,
                straight_through=gate_kind(cfg) == "straight_through")
    if joint:
        return HybridGAROLearnedRule(policy, garo_controller, garo_rule, rule, h.ode_scale,
                                     train_garo=h.train_garo, **gate)
    return HybridLearnedRule(policy, rule, {"lr": h.lr, "momentum": h.momentum,
                                            "weight_decay": h.weight_decay}, h.ode_lr, **gate)


def optimizer_options(cfg) -> dict:
    """``HybridGDODE`` options that reproduce the trained setting at runtime."""
    h = cfg.hybrid
    if cfg.controller.kind == "hybrid_garo":  # GARO's step size sets both modules' (garo_module)
        return {"gd": "garo", "direction": cfg.controller.direction,
                "scale": cfg.controller.scale, "ode": h.ode, "ode_scale": h.ode_scale,
                "ode_cfl": h.ode_cfl, "min_dwell": h.min_dwell, "window": h.window}
    return {"lr": h.lr, "gd": h.gd, "momentum": h.momentum, "weight_decay": h.weight_decay,
            "ode": h.ode, "ode_scale": h.ode_lr / h.lr, "ode_cfl": h.ode_cfl,
            "min_dwell": h.min_dwell, "window": h.window}


def policy_module(learned) -> SwitchingPolicy:
    return learned.module["policy"] if cfg_kind(learned) == "hybrid_garo" else learned.module


def cfg_kind(learned) -> str:
    return "hybrid_garo" if isinstance(learned, HybridGAROLearnedRule) else "hybrid"


def export(cfg, learned, path: Path, training: dict) -> Path:
    """The trained policy as a ``HybridGDODE`` checkpoint (``metaopt.load_optimizer``); for
    ``hybrid_garo`` both trained modules, the policy and the GARO controller
    (``HybridControllers``), with GARO as the GD module."""
    module = HybridControllers.of(learned.module["policy"], learned.module["garo"]) \
        if cfg_kind(learned) == "hybrid_garo" else learned.module
    return save_checkpoint(path, module, optimizer_options(cfg),
                           {**training, "kind": cfg.controller.kind}, optimizer_class="HybridGDODE")


def evaluation_factories(cfg, learned, untrained) -> dict:
    """Learned policy vs the heuristic vs GD only vs ODE only, all with the same modules."""
    options = optimizer_options(cfg)
    joint = cfg_kind(learned) == "hybrid_garo"
    untrained_policy = untrained["policy"] if joint else untrained
    trained = {"controller": learned.module["garo"]} if joint else {}  # (GARO: the GD module)
    variants = {"hybrid_learned": {"policy": policy_module(learned), **trained},
                "hybrid_untrained": {"policy": untrained_policy,
                                     **({"controller": untrained["garo"]} if joint else {})},
                "hybrid_heuristic": {"policy": "heuristic", **trained},
                "gd_only": {"policy": "gd", **trained}, "ode_only": {"policy": "ode", **trained}}
    out = {}
    for label, extra in variants.items():
        def factory(params, extra=extra):
            kwargs = {**options, **extra}
            if isinstance(kwargs["policy"], SwitchingPolicy):
                kwargs["policy"] = copy.deepcopy(kwargs["policy"])
            return HybridGDODE(params, **kwargs)
        factory.label = label
        out[label] = factory
    return out
