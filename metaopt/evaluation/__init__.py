"""Evaluation harness: optimizers x tasks x seeds -> per-run records and summary tables.

* ``run_task`` / ``run_family`` / ``evaluate``: run optimizer factories (``params -> Optimizer``,
  always driven through ``step(closure)``) and record losses, accuracy, steps-to-target, gradient
  evaluations, time per step, memory and divergence (an outcome, never a crash).
* ``make_optimizer`` / ``optimizer_names``: named torch.optim baselines, plus ``metaopt.optim``
  classes by name.
* ``tune_lr`` / ``log_grid``: learning-rate tuning on held-out seeds under a stated criterion;
  ``tune_lr_interior`` widens the grid until the best lr is interior.
* ``speedup``: steps a reference needs to reach a candidate's final loss / the candidate's steps;
  ``speedup_in_grad_evals`` counts both in gradient evaluations.
* ``CONTENDERS``: tuning-free optimizers by name (Prodigy, D-Adapt Adam, DoG, schedule-free
  AdamW); ``evaluation_mode``: losses measured in a schedule-free optimizer's eval mode.
* ``plot_loss_curves``: one task's loss curves per optimizer, diverged runs marked (PNG).
* ``CosineAdam`` (``"adam_cosine"``): the cosine-decay Adam baseline.
* ``RunResult`` / ``summarize`` / ``format_table``: results as rows and tables.
* ``TracingFactory`` / ``optimizer_trace``: per-step controller decisions (lr_t, curvature, mode).
"""

from .contenders import CONTENDERS, evaluation_mode
from .curves import plot_loss_curves
from .harness import TARGET_KINDS, evaluate, run_family, run_task
from .optimizers import (
    BASELINES,
    OptimizerFactory,
    make_optimizer,
    optimizer_names,
    resolve_optimizer,
)
from .results import SUMMARY_COLUMNS, RunResult, format_table, summarize
from .schedules import CosineAdam
from .speedup import Speedup, speedup, speedup_in_grad_evals, steps_to_reach
from .traces import TracingFactory, optimizer_trace
from .tuning import (
    CRITERIA,
    HELD_OUT_TASK_SEED_OFFSET,
    TuningResult,
    log_grid,
    tune_lr,
    tune_lr_interior,
)

__all__ = [
    "BASELINES",
    "CONTENDERS",
    "CRITERIA",
    "CosineAdam",
    "Speedup",
    "HELD_OUT_TASK_SEED_OFFSET",
    "SUMMARY_COLUMNS",
    "TARGET_KINDS",
    "OptimizerFactory",
    "RunResult",
    "TracingFactory",
    "TuningResult",
    "evaluate",
    "evaluation_mode",
    "format_table",
    "log_grid",
    "make_optimizer",
    "optimizer_names",
    "optimizer_trace",
    "plot_loss_curves",
    "resolve_optimizer",
    "run_family",
    "run_task",
    "speedup",
    "speedup_in_grad_evals",
    "steps_to_reach",
    "summarize",
    "tune_lr",
    "tune_lr_interior",
]
