"""Learning-rate tuning so that "tuned baseline" comparisons are fair and reproducible.

``tune_lr`` runs the optimizer for every learning rate of a log-spaced grid on a *held-out* set of
task seeds and run seeds (by default task seeds 10_000.., disjoint from the evaluation seeds
0..n-1) and picks the learning rate with the lowest score under a stated criterion:

    final_train_loss  mean over runs of the final normalised full-batch train loss
    final_test_loss   mean over runs of the normalised final test loss
    mean_train_loss   mean over runs and steps of the normalised per-step train loss
                      (area under the training curve: rewards speed, not only the end point)

A learning rate with any diverged run scores +inf. Ties go to the smaller learning rate (the grid
is scanned in increasing order and only a strictly better score replaces the incumbent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from metaopt.task import TaskFamily

from .harness import run_task
from .optimizers import OptimizerFactory
from .results import RunResult

__all__ = ["CRITERIA", "HELD_OUT_TASK_SEED_OFFSET", "TuningResult", "log_grid", "tune_lr",
           "tune_lr_interior"]

CRITERIA = ("final_train_loss", "final_test_loss", "mean_train_loss")
HELD_OUT_TASK_SEED_OFFSET = 10_000


def log_grid(low: float, high: float, num: int) -> list[float]:
    """``num`` log-spaced values from ``low`` to ``high`` inclusive."""
    if not 0 < low <= high or num < 1:
        raise ValueError(f"need 0 < low <= high and num >= 1, got {low}, {high}, {num}")
    if num == 1:
        return [float(low)]
    return [float(v)
            for v in torch.logspace(math.log10(low), math.log10(high), num, dtype=torch.float64)]


def _score(runs: Sequence[RunResult], criterion: str, normalize) -> float:
    if any(r.diverged for r in runs):
        return math.inf
    if criterion == "final_train_loss":
        values = [r.final_normalized_loss for r in runs]
    elif criterion == "final_test_loss":
        values = [normalize(r, r.final_test_loss) for r in runs]
    else:
        values = [sum(normalize(r, v) for v in r.train_losses) / max(len(r.train_losses), 1)
                  for r in runs]
    score = sum(values) / len(values)
    return score if math.isfinite(score) else math.inf


@dataclass
class TuningResult:
    """The chosen ``best_lr``, its score, and the score of every grid point."""

    optimizer: str
    criterion: str
    best_lr: float
    best_score: float
    scores: dict[float, float] = field(default_factory=dict)
    task_seeds: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "criterion": self.criterion, "best_lr": self.best_lr,
                "best_score": self.best_score if math.isfinite(self.best_score) else None,
                "scores": {str(k): (v if math.isfinite(v) else None)
                           for k, v in self.scores.items()},
                "task_seeds": list(self.task_seeds), "seeds": list(self.seeds)}


def tune_lr(
    factory: OptimizerFactory,
    family: TaskFamily,
    steps: int,
    *,
    lrs: Sequence[float] | None = None,
    criterion: str = "final_train_loss",
    task_seeds: Sequence[int] = tuple(
        range(HELD_OUT_TASK_SEED_OFFSET, HELD_OUT_TASK_SEED_OFFSET + 2)),
    seeds: Sequence[int] = (0,),
    **run_kwargs: Any,
) -> TuningResult:
    """Grid-search ``lr`` for ``factory`` (its other hyperparameters fixed) on ``family``.

    ``lrs`` defaults to ``log_grid(1e-4, 1.0, 9)``. Returns the best learning rate; if every grid
    point diverges, ``best_lr`` is the smallest one and ``best_score`` is inf.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    grid = sorted(float(v) for v in (lrs if lrs is not None else log_grid(1e-4, 1.0, 9)))
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    tasks = [(s, family.sample_seed(s)) for s in task_seeds]

    def normalize(run: RunResult, value: float) -> float:
        return float(dict(tasks)[run.task_seed].normalized_loss(value))

    scores: dict[float, float] = {}
    best_lr, best_score = grid[0], math.inf
    for lr in grid:
        candidate = factory.with_hyperparameters(lr=lr)
        runs = [run_task(task, candidate, steps, seed=seed, task_seed=task_seed, track_memory=False,
                         **run_kwargs)
                for task_seed, task in tasks for seed in seeds]
        scores[lr] = _score(runs, criterion, normalize)
        if scores[lr] < best_score:
            best_lr, best_score = lr, scores[lr]
    return TuningResult(factory.label, criterion, best_lr, best_score, scores, tuple(task_seeds),
                        tuple(seeds))


def tune_lr_interior(
    factory: OptimizerFactory,
    family: TaskFamily,
    steps: int,
    *,
    low: float = 1e-4,
    high: float = 1.0,
    per_decade: int = 2,
    limits: tuple[float, float] = (1e-8, 1e3),
    **tune_kwargs: Any,
) -> TuningResult:
    """``tune_lr`` on a log grid (``per_decade`` points per decade) widened one decade at a time
    on the side where the best learning rate sits, until the best is interior (a grid point with
    a worse neighbour on each side) or the grid reaches ``limits``.

    A baseline whose best lr is the edge of its grid is not tuned: the protocol of VeLO / Celo
    asks for an interior optimum. The result's ``scores`` hold every grid point tried.
    """
    if not (0 < limits[0] <= low <= high <= limits[1]) or per_decade < 1:
        raise ValueError(f"need 0 < limits[0] <= low <= high <= limits[1] and per_decade >= 1, "
                         f"got low={low}, high={high}, limits={limits}, per_decade={per_decade}")

    def grid(a: float, b: float) -> list[float]:
        return log_grid(a, b, max(2, round(per_decade * math.log10(b / a)) + 1))

    scores: dict[float, float] = {}
    result = None
    todo = grid(low, high)
    while todo:
        result = tune_lr(factory, family, steps, lrs=todo, **tune_kwargs)
        scores.update(result.scores)
        lrs = sorted(scores)
        best = min(lrs, key=lambda lr: (scores[lr], lr))
        if math.isinf(scores[best]):  # everything diverged: look lower
            best = lrs[0]
        index = lrs.index(best)
        todo = []
        if index == 0 and lrs[0] / 10 >= limits[0] * (1 - 1e-9):
            todo = grid(lrs[0] / 10, lrs[0])[:-1]
        elif index == len(lrs) - 1 and lrs[-1] * 10 <= limits[1] * (1 + 1e-9):
            todo = grid(lrs[-1], lrs[-1] * 10)[1:]
    best = min(sorted(scores), key=lambda lr: (scores[lr], lr))
    return TuningResult(factory.label, result.criterion, best, scores[best],
                        dict(sorted(scores.items())), result.task_seeds, result.seeds)
