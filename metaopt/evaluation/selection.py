"""Checkpoint selection by the learned-optimizer benchmark's own protocol, on validation tasks.

A meta-training run writes a snapshot of its controller at every validation. The one to ship is
the snapshot a user would be best served by on tasks it never saw, measured the way the
benchmark measures it (VeLO, arXiv 2211.09760; Celo, arXiv 2501.12670): per validation task of
horizon ``T`` and held-out task seed,

    speedup = (gradient evaluations lr-tuned Adam needs to reach the candidate's final train
               loss) / (the candidate's gradient evaluations in its T steps)

with Adam's lr tuned on those seeds on a log grid widened until the best is interior
(``tune_lr_interior``) and its curve run to ``extension · T`` so that speedups above 1 resolve;
an optimizer that evaluates the gradient k times a step (the hybrid's RK4 steps) pays k.
A candidate's score is its median speedup over tasks × seeds (a diverged run scores 0); a
candidate that diverged anywhere ranks below every one that did not (a user would rather lose
speed than a run), then the best score wins, ties going to the later snapshot. The validation
tasks must be neither in the training mixture nor among the benchmark's test families.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..task import TaskFamily
from .harness import run_family
from .optimizers import make_optimizer
from .results import RunResult
from .speedup import speedup_in_grad_evals
from .tuning import tune_lr_interior

#: ``(num_training_steps) -> (params -> optimizer)``: a candidate told the run's horizon
CandidateBuilder = Callable[[int], Callable[..., torch.optim.Optimizer]]


@dataclass(frozen=True)
class ValidationTask:
    """One validation task: a family and the horizon ``T`` candidates are scored at."""
    label: str
    family: TaskFamily
    steps: int


@dataclass
class Reference:
    """Tuned Adam on one validation task: its lr and its curve per task seed."""
    lr: float
    runs: dict[int, RunResult] = field(default_factory=dict)


@dataclass
class CandidateScore:
    name: str
    median_speedup: float
    diverged: int
    per_task: dict[str, float]  # median speedup per validation task


def tuned_references(tasks: Sequence[ValidationTask], seeds: Sequence[int], *,
                     extension: int = 4, low: float = 1e-3, high: float = 0.1,
                     per_decade: int = 2) -> dict[str, Reference]:
    """Adam tuned per task (interior best lr), its curve run to ``extension · T``."""
    refs = {}
    for task in tasks:
        eval_every = max(1, task.steps // 25)
        factory = make_optimizer("adam")
        tuned = tune_lr_interior(factory, task.family, task.steps, low=low, high=high,
                                 per_decade=per_decade, task_seeds=seeds, eval_every=eval_every)
        best = factory.with_hyperparameters(lr=tuned.best_lr)
        runs = run_family(task.family, best, extension * task.steps, task_seeds=seeds,
                          eval_every=eval_every, track_memory=False)
        refs[task.label] = Reference(tuned.best_lr, {r.task_seed: r for r in runs})
    return refs


def score_candidate(name: str, build: CandidateBuilder, tasks: Sequence[ValidationTask],
                    refs: Mapping[str, Reference], seeds: Sequence[int]) -> CandidateScore:
    """The candidate's median speedup over tasks × seeds against the tuned references."""
    everything, per_task, diverged = [], {}, 0
    for task in tasks:
        runs = run_family(task.family, build(task.steps), task.steps, task_seeds=seeds,
                          eval_every=max(1, task.steps // 25), track_memory=False)
        ups = []
        for run in runs:
            ref = refs[task.label].runs[run.task_seed]
            ups.append(speedup_in_grad_evals(ref, run).value)
            diverged += int(run.diverged)
        per_task[task.label] = statistics.median(ups)
        everything += ups
    return CandidateScore(name, statistics.median(everything), diverged, per_task)


def select(candidates: Mapping[str, CandidateBuilder], tasks: Sequence[ValidationTask],
           seeds: Sequence[int], refs: Mapping[str, Reference] | None = None
           ) -> tuple[str, list[CandidateScore]]:
    """``(best name, every score in candidate order)``; candidates are given oldest first."""
    if not candidates:
        raise ValueError("candidates: nothing to select from")
    refs = refs if refs is not None else tuned_references(tasks, seeds)
    scores = [score_candidate(name, build, tasks, refs, seeds)
              for name, build in candidates.items()]
    order = {s.name: i for i, s in enumerate(scores)}
    best = max(scores, key=lambda s: (s.diverged == 0, s.median_speedup, order[s.name]))
    return best.name, scores
