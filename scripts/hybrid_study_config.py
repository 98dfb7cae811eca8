"""Typed configuration of ``scripts/hybrid_study.py`` (OmegaConf structured config).

``StudyConfig``: the study's test functions, its ``grid × grid`` lattice of starts, the steps
and target gap, the learned hybrid's checkpoint, the baselines' lr tuning grid, the MLP tasks
and the heuristic's threshold sweep; ``HybridSettings``: the GD / ODE modules and the
``HeuristicSwitch`` of the hybrid runs (``HybridGDODE``'s keywords). YAML and ``key=value``
overrides are merged into these dataclasses by ``hybrid_study.load``, which checks the values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FUNCTIONS = ("rastrigin", "ackley", "himmelblau", "six_hump_camel", "styblinski_tang")


@dataclass
class HybridSettings:
    gd: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    ode: str = "rk4"
    ode_scale: float = 5.0  # ODE step = lr · ode_scale (capped at ode_cfl / curvature)
    ode_cfl: float = 1.0
    min_dwell: int = 5
    window: int = 10
    criteria: list[str] = field(default_factory=lambda: ["gradient", "curvature", "stagnation"])
    grad_threshold: float = 0.01
    curvature_threshold: float = 2.0
    stagnation_threshold: float = 0.001
    hysteresis: float = 2.0


@dataclass
class StudyConfig:
    out_dir: str = "results/hybrid_study"
    functions: list[str] = field(default_factory=lambda: list(FUNCTIONS))
    grid: int = 20  # grid × grid starts (≥ 400 with the default)
    steps: int = 150
    target: float = 1e-3  # the target gap f − f*
    learned: str = ""  # a switch-only HybridGDODE checkpoint (path or shipped name); "" skips
    hybrid: HybridSettings = field(default_factory=HybridSettings)
    tuning_low: float = 1e-3  # initial log grid of the Adam / SGD-momentum lr, widened until
    tuning_high: float = 1.0  # the best lr (mean final gap) is interior
    tuning_per_decade: int = 2
    timing_steps: int = 10
    mlp_tasks: int = 3  # MLP tasks from tasks.get("mlp") (0: skip)
    mlp_steps: int = 150
    plots: bool = True
    seed: int = 0
    wandb_mode: str = "disabled"  # disabled | offline | online (results.jsonl is always written)
    hybrid_adam: bool = True  # also the heuristic hybrid with tuned Adam as its GD module
    sweep: bool = False  # instead of the study: each heuristic criterion alone and combined,
    # over the threshold grids below (how the HeuristicSwitch defaults were measured)
    sweep_grad: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    sweep_curvature: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    sweep_stagnation: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2])
