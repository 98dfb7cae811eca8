"""Learned and tuning-free optimizers vs lr-tuned Adam on held-out tasks (VeLO / Celo protocol).

    metaopt benchmark learned [--config configs/benchmark_learned.yaml]
    python scripts/benchmark.py learned [--config ...]

Per task (``configs/benchmark_learned.yaml``) and ``seeds`` held-out task seeds (≥ 2**30, never
drawn in meta-training):

1. every baseline's lr is tuned on those seeds at the task's horizon ``T`` (criterion: mean final
   normalised train loss) on a log grid widened until the best lr is interior
   (``metaopt.evaluation.tune_lr_interior``); tuned Adam (``adam_tuned``) also runs to
   ``reference_extension · T`` steps: its full-batch train-loss curve is the reference of

       speedup = gradient evaluations tuned Adam needs to reach the contender's final loss
                 / the contender's gradient evaluations

   (``metaopt.evaluation.speedup_in_grad_evals``; capped at ``reference_extension`` when Adam
   never gets there, a lower bound; 0 for a diverged run);
2. every contender — the tuning-free optimizers at their documented defaults (``contenders``,
   told the horizon where they take one) and the learned ``checkpoints`` (told
   ``num_training_steps``) — runs ``T`` steps on every seed, ``horizon_multiple · T`` steps on
   the first ``long_seeds`` seeds and ``T`` steps on the task's loss multiplied by each of
   ``loss_scales`` (the ``augmented`` family, fixed scale) on the first ``scale_seeds`` seeds:
   divergences of each are counted.

Rows: per task and optimizer, median final train loss, final-loss ratio to tuned Adam, speedup
(median over seeds), divergences at 1x / 10x / across loss scales, gradient evaluations per step,
ms per step. The closing rows give per contender the median speedup over held-out families and
over all tasks. A PNG of the loss curves per task (``metaopt.evaluation.plot_loss_curves``) and
the learned optimizers' lr_t traces are written next to the CSV and logged to W&B (offline).
Cost of the default config: see the config's header.
"""
from __future__ import annotations

import math
import os
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
    plot_loss_curves,
    resolve_optimizer,
    run_family,
    speedup_in_grad_evals,
    tune_lr_interior,
)
from metaopt.meta import held_out_seeds

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "benchmark_learned.yaml"
REFERENCE = "adam_tuned"


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
class ContenderSpec:
    name: str = "prodigy"
    label: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuningSpec:
    low: float = 1e-4
    high: float = 10.0
    per_decade: int = 2


@dataclass
class LearnedBenchmarkConfig:
    checkpoints: list[str] = field(default_factory=lambda: ["garo_general", "hybrid_general"])
    contenders: list[ContenderSpec] = field(default_factory=list)
    seeds: int = 2
    reference_extension: int = 2
    horizon_multiple: int = 10
    long_seeds: int = 1   # the 10x-horizon check runs on this many of the seeds (it costs 10 T)
    scale_seeds: int = 1  # the loss-scale checks run on this many of the seeds
    loss_scales: list[float] = field(default_factory=lambda: [0.01, 100.0])
    tuning: TuningSpec = field(default_factory=TuningSpec)
    baselines: list[BaselineSpec] = field(default_factory=lambda: [BaselineSpec()])
    tasks: list[TaskSpec] = field(default_factory=list)


def load(path: Path | None) -> LearnedBenchmarkConfig:
    schema = OmegaConf.structured(LearnedBenchmarkConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(path or DEFAULT_CONFIG)))
    if not any(b.name == "adam" for b in cfg.baselines):
        raise ValueError("baselines: must include adam (tuned Adam is the speedup reference)")
    return cfg


def learned_factory(checkpoint: str, steps: int):
    def factory(params):
        return metaopt.load_optimizer(checkpoint, params, num_training_steps=steps)
    factory.label = checkpoint
    return factory


def contender_factory(spec: ContenderSpec, steps: int):
    """The named optimizer at its defaults (+ overrides), told the horizon if it takes one."""
    horizon = {"total_steps": steps} if "total_steps" in resolve_optimizer(spec.name)[1] else {}
    return make_optimizer(spec.name, label=spec.label or spec.name,
                          **{**horizon, **spec.hyperparameters})


def _final(run) -> float:
    """Full-batch train loss after ``T`` steps (inf when the run diverged)."""
    return math.inf if run.diverged else float(run.final_train_loss)


def _median(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _contenders(cfg: LearnedBenchmarkConfig):
    """``(label, factory_for(steps), traced)`` for every contender, checkpoints last."""
    out = [(spec.label or spec.name, lambda steps, spec=spec: contender_factory(spec, steps), False)
           for spec in cfg.contenders]
    out += [(c, lambda steps, c=c: learned_factory(c, steps), True) for c in cfg.checkpoints]
    return out


def bench_task(spec: TaskSpec, cfg: LearnedBenchmarkConfig) -> tuple[list, list, list]:
    family = tasks.get(spec.family, **spec.kwargs)
    seeds, T = held_out_seeds(cfg.seeds), spec.steps
    eval_every = max(1, T // 25)
    common = dict(task_seeds=seeds, eval_every=eval_every, track_memory=False)
    rows, runs, traces = [], [], []
    reference: dict[int, Any] = {}
    finals: dict[int, float] = {}
    for base in cfg.baselines:
        extra = {"total_steps": T} if "total_steps" in resolve_optimizer(base.name)[1] else {}
        factory = make_optimizer(base.name, **{**extra, **base.hyperparameters})
        tuned = tune_lr_interior(factory, family, T, low=cfg.tuning.low, high=cfg.tuning.high,
                                 per_decade=cfg.tuning.per_decade, task_seeds=seeds,
                                 eval_every=T)  # the criterion reads the final loss only
        label = REFERENCE if base.name == "adam" else f"{base.name}_tuned"
        best = factory.with_hyperparameters(label=label, lr=tuned.best_lr)
        results = run_family(family, best, T, **common)
        runs += [r.to_dict() for r in results]
        row = _row(spec, label, results)
        row.update(tuned_lr=tuned.best_lr,
                   lr_grid=f"{min(tuned.scores):.0e}..{max(tuned.scores):.0e}")
        rows.append((row, results))
        if base.name == "adam":
            finals = {r.task_seed: _final(r) for r in results}
            reference = {r.task_seed: r for r in run_family(
                family, best, cfg.reference_extension * T, **common)}
    for label, factory_for, traced in _contenders(cfg):
        factory = TracingFactory(factory_for(T)) if traced else factory_for(T)
        results = run_family(family, factory, T, **common)
        runs += [r.to_dict() for r in results]
        if traced:
            traces += [{"family": spec.label, "optimizer": label, "trace": t}
                       for t in factory.traces[:1]]
        long = run_family(family, factory_for(cfg.horizon_multiple * T), cfg.horizon_multiple * T,
                          **{**common, "eval_every": T, "task_seeds": seeds[:cfg.long_seeds]})
        scaled = []
        for scale in cfg.loss_scales:
            augmented = tasks.get("augmented", family={"name": spec.family, "kwargs": spec.kwargs},
                                  loss_scale=[scale, scale])
            scaled += run_family(augmented, factory_for(T), T, **{
                **common, "eval_every": T, "task_seeds": seeds[:cfg.scale_seeds]})
        row = _row(spec, label, results)
        row.update(diverged_10x=sum(r.diverged for r in long),
                   diverged_scaled=sum(r.diverged for r in scaled))
        rows.append((row, results))
    for row, results in rows:
        ups = [speedup_in_grad_evals(reference[r.task_seed], r) for r in results]
        row["speedup_vs_adam"] = _median([u.value for u in ups])
        row["speedup_lower_bound"] = any(not u.reached for u in ups)
        row["final_ratio_vs_adam"] = _median([_final(r) / finals[r.task_seed] for r in results])
    for run in runs:
        run["family"] = spec.label  # one PNG per benchmark task, whatever its family
    return [row for row, _ in rows], runs, traces


def _row(spec: TaskSpec, name: str, results) -> dict[str, Any]:
    evals = [r.grad_evals / r.steps_completed for r in results if r.steps_completed]
    return {"task": spec.label, "held_out_family": spec.held_out, "optimizer": name,
            "steps": spec.steps, "final_train_loss": _median([_final(r) for r in results]),
            "diverged_1x": sum(r.diverged for r in results),
            "grad_evals_per_step": _median(evals),
            "ms_per_step": 1e3 * _median([r.wall_time_per_step for r in results])}


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per optimizer: the median speedup over held-out tasks (and all tasks), total divergences."""
    out = []
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == name]
        held = [r["speedup_vs_adam"] for r in mine if r["held_out_family"]]
        out.append({"task": "MEDIAN", "optimizer": name,
                    "speedup_vs_adam": _median(held),
                    "held_out_family": "all tasks: "
                                       f"{_median([r['speedup_vs_adam'] for r in mine]):.3g}",
                    "final_ratio_vs_adam": _median([r["final_ratio_vs_adam"] for r in mine]),
                    **{k: sum(r.get(k) or 0 for r in mine)
                       for k in ("diverged_1x", "diverged_10x", "diverged_scaled")},
                    "ms_per_step": _median([r["ms_per_step"] for r in mine])})
    return out


COLUMNS = ("task", "held_out_family", "optimizer", "steps", "final_train_loss",
           "final_ratio_vs_adam", "speedup_vs_adam", "speedup_lower_bound", "diverged_1x",
           "diverged_10x", "diverged_scaled", "grad_evals_per_step", "ms_per_step", "tuned_lr",
           "lr_grid")


def run(args) -> list[dict[str, Any]]:
    cfg = load(getattr(args, "config", None))
    out = Path(args.out) / "learned"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rows, pngs, traces = [], [], []
    for spec in cfg.tasks:
        print(f"learned: {spec.label} ...", file=sys.stderr, flush=True)
        task_rows, task_runs, task_traces = bench_task(spec, cfg)
        rows += task_rows
        traces += task_traces
        png = plot_loss_curves(task_runs, out / f"loss_{_safe(spec.label)}.png",
                               title=f"{spec.label}: median over seeds, band = min–max, "
                                     f"x = diverged")
        pngs += [png] if png is not None else []
    rows += summary_rows(rows)
    _log(pngs, traces, out)
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _log(pngs: list[Path], traces, out: Path) -> None:
    """The learned optimizers' traces as PNGs (scripts/plots.py); every PNG logged to W&B
    (offline unless WANDB_MODE says otherwise)."""
    from metaopt.logging import make_logger
    from scripts import plots

    pngs = pngs + plots.trace_curves(traces, out)
    mode = os.environ.get("WANDB_MODE", "offline")
    logger = make_logger(out, wandb_mode=mode if mode in ("online", "disabled") else "offline",
                         tags=["benchmark", "learned"])
    for png in pngs:
        logger.log_image(f"learned/{png.stem}", png, 0)
    logger.close()
    print(f"learned: plots {[p.name for p in pngs]} in {out}", file=sys.stderr)
