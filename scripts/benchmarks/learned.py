"""Learned optimizers vs lr-tuned baselines on held-out tasks (VeLO / Celo protocol).

    python scripts/benchmark.py learned [--config configs/benchmark_learned.yaml]

Per task (``configs/benchmark_learned.yaml``) and ``seeds`` held-out task seeds (≥ 2**30, never
drawn in meta-training):

1. every baseline's lr is tuned on those seeds at the task's horizon ``T`` (criterion: mean final
   normalised train loss) on a log grid widened until the best lr is interior
   (``metaopt.evaluation.tune_lr_interior``);
2. tuned Adam runs to ``reference_extension · T`` steps: its full-batch train-loss curve is the
   reference of ``speedup = steps Adam needs to reach the learned optimizer's final loss / T``
   (``metaopt.evaluation.speedup``; a lower bound when Adam never gets there);
3. each checkpoint runs ``T`` steps (told ``num_training_steps=T``), then ``horizon_multiple · T``
   steps (on the first ``long_seeds`` seeds), and ``T`` steps on the task's loss multiplied by
   each of ``loss_scales`` (the ``augmented`` family with a fixed scale): divergences of each are
   counted.

Rows: per task and optimizer, median final train loss, final-loss ratio to tuned Adam, speedup
(median over seeds), divergences at 1x / 10x / across loss scales, ms per step. The closing row
per checkpoint gives the median speedup over held-out families and over all tasks. Loss curves
and lr_t / momentum_t traces are written as PNGs next to the CSV and logged to W&B (offline).
"""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import metaopt
import tasks
from metaopt.evaluation import (
    TracingFactory,
    make_optimizer,
    run_family,
    speedup,
    tune_lr_interior,
)
from metaopt.meta import held_out_seeds

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "benchmark_learned.yaml"


@dataclass
class TaskSpec:
    label: str = ""
    family: str = ""
    steps: int = 500
    held_out: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineSpec:
    name: str = "adam"
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuningSpec:
    low: float = 1e-4
    high: float = 1.0
    per_decade: int = 2


@dataclass
class LearnedBenchmarkConfig:
    checkpoints: list[str] = field(default_factory=lambda: ["garo_general"])
    seeds: int = 3
    reference_extension: int = 4
    horizon_multiple: int = 10
    long_seeds: int = 1  # the 10x-horizon check runs on this many of the seeds (it costs 10 T)
    loss_scales: list[float] = field(default_factory=lambda: [0.01, 100.0])
    tuning: TuningSpec = field(default_factory=TuningSpec)
    baselines: list[BaselineSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)


def load(path: Path | None) -> LearnedBenchmarkConfig:
    schema = OmegaConf.structured(LearnedBenchmarkConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(path or DEFAULT_CONFIG)))


def learned_factory(checkpoint: str, steps: int):
    def factory(params):
        return metaopt.load_optimizer(checkpoint, params, num_training_steps=steps)
    factory.label = checkpoint
    return factory


def _final(run) -> float:
    """Full-batch train loss after ``T`` steps (the eval curve holds later points too)."""
    return math.inf if run.diverged else float(run.final_train_loss)


def _median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def bench_task(spec: TaskSpec, cfg: LearnedBenchmarkConfig, out: Path) -> tuple[list, list, list]:
    family = tasks.get(spec.family, **spec.kwargs)
    seeds, T = held_out_seeds(cfg.seeds), spec.steps
    eval_every = max(1, T // 25)
    common = dict(task_seeds=seeds, eval_every=eval_every, track_memory=False)
    rows, runs, traces = [], [], []
    finals: dict[str, dict[int, float]] = {}
    reference = None
    for base in cfg.baselines:
        extra = {"total_steps": T} if base.name == "adam_cosine" else {}
        factory = make_optimizer(base.name, **base.hyperparameters, **extra)
        tuned = tune_lr_interior(factory, family, T, low=cfg.tuning.low, high=cfg.tuning.high,
                                 per_decade=cfg.tuning.per_decade, task_seeds=seeds,
                                 eval_every=eval_every)
        label = f"{base.name}(lr={tuned.best_lr:.2g})"
        best = factory.with_hyperparameters(label=label, lr=tuned.best_lr)
        results = run_family(family, best, T, **common)
        finals[label] = {r.task_seed: _final(r) for r in results}
        runs += [r.to_dict() for r in results]
        rows.append(_row(spec, label, results, tuned.best_lr, tuned.scores))
        if base.name == "adam":
            reference = (label, {r.task_seed: r for r in run_family(
                family, best, cfg.reference_extension * T, **common)})
    for checkpoint in cfg.checkpoints:
        factory = TracingFactory(learned_factory(checkpoint, T))
        results = run_family(family, factory, T, **common)
        runs += [r.to_dict() for r in results]
        traces += [{"family": family.name, "optimizer": checkpoint, "trace": t}
                    for t in factory.traces[:1]]
        long = run_family(family, learned_factory(checkpoint, cfg.horizon_multiple * T),
                          cfg.horizon_multiple * T,
                          **{**common, "eval_every": T, "task_seeds": seeds[:cfg.long_seeds]})
        scaled = []
        for scale in cfg.loss_scales:
            augmented = tasks.get("augmented", family={"name": spec.family, "kwargs": spec.kwargs},
                                  loss_scale=[scale, scale])
            scaled += run_family(augmented, learned_factory(checkpoint, T), T,
                                 **{**common, "eval_every": T})
        row = _row(spec, checkpoint, results)
        row.update(diverged_10x=sum(r.diverged for r in long),
                   diverged_scaled=sum(r.diverged for r in scaled))
        if reference is not None:
            label, ref = reference
            ups = [speedup(ref[r.task_seed].eval_steps, ref[r.task_seed].eval_train_losses,
                           _final(r), T) for r in results]
            row["speedup_vs_adam"] = _median([u.value for u in ups])
            row["speedup_lower_bound"] = any(not u.reached for u in ups)
            row["final_ratio_vs_adam"] = _median(
                [_final(r) / finals[label][r.task_seed] for r in results])
        rows.append(row)
    return rows, runs, traces


def _row(spec: TaskSpec, name: str, results, lr=None, scores=None) -> dict[str, Any]:
    return {"task": spec.label, "held_out_family": spec.held_out, "optimizer": name,
            "steps": spec.steps, "final_train_loss": _median([_final(r) for r in results]),
            "diverged_1x": sum(r.diverged for r in results),
            "ms_per_step": 1e3 * _median([r.wall_time_per_step for r in results]),
            "tuned_lr": lr, "lr_grid": None if scores is None else
            f"{min(scores):.0e}..{max(scores):.0e}"}


def summary_rows(rows: list[dict], checkpoints: list[str]) -> list[dict]:
    out = []
    for checkpoint in checkpoints:
        mine = [r for r in rows if r["optimizer"] == checkpoint and "speedup_vs_adam" in r]
        held = [r["speedup_vs_adam"] for r in mine if r["held_out_family"]]
        out.append({"task": "MEDIAN", "optimizer": checkpoint,
                    "speedup_vs_adam": _median([r["speedup_vs_adam"] for r in mine]),
                    "held_out_family": f"held-out families: {_median(held):.3g}",
                    "diverged_1x": sum(r["diverged_1x"] for r in mine),
                    "diverged_10x": sum(r["diverged_10x"] for r in mine),
                    "diverged_scaled": sum(r["diverged_scaled"] for r in mine)})
    return out


def run(args) -> list[dict[str, Any]]:
    cfg = load(getattr(args, "config", None))
    out = Path(args.out) / "learned"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rows, runs, traces = [], [], []
    for spec in cfg.tasks:
        print(f"learned: {spec.label} ...", file=sys.stderr, flush=True)
        task_rows, task_runs, task_traces = bench_task(spec, cfg, out)
        rows += task_rows
        runs += task_runs
        traces += task_traces
    rows += summary_rows(rows, cfg.checkpoints)
    _plots(runs, traces, out)
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


COLUMNS = ("task", "held_out_family", "optimizer", "steps", "final_train_loss",
           "final_ratio_vs_adam", "speedup_vs_adam", "speedup_lower_bound", "diverged_1x",
           "diverged_10x", "diverged_scaled", "ms_per_step", "tuned_lr", "lr_grid")


def _plots(runs, traces, out: Path) -> None:
    """Loss curves and controller traces as PNGs (scripts/plots.py), logged to W&B offline."""
    from metaopt.logging import make_logger
    from scripts import plots

    offsets = {}
    for r in runs:  # loss curves drawn as raw losses (the held-out tasks have no known minimum)
        offsets[(r["family"], r["task_seed"])] = 0.0
    pngs = plots.loss_curves(runs, offsets, out) + plots.trace_curves(traces, out)
    logger = make_logger(out, wandb_mode="offline", tags=["benchmark", "learned"])
    for png in pngs:
        logger.log_image(f"learned/{png.stem}", png, 0)
    logger.close()
    print(f"learned: plots {[p.name for p in pngs]} in {out}", file=sys.stderr)
