"""Evaluate optimizers x task families x seeds from a YAML config; print a table, write CSV + JSON.

    python scripts/evaluate.py --config configs/eval_baselines.yaml steps=300 seeds=[0,1,2]

The config is typed by the dataclasses below (OmegaConf structured config): unknown keys and
wrongly-typed values fail before any work, naming the key; so do unknown task families, task
keywords, optimizer names and optimizer hyperparameters. Config stops here: the library functions
(``tasks.get``, ``metaopt.evaluation.*``) receive plain arguments.

Outputs in ``out_dir``: ``config.yaml`` (resolved), ``runs.csv`` (one row per run),
``summary.csv`` (one row per optimizer x family), ``results.json`` (config, tuned learning rates,
summary, every run with its curves, and the controllers' per-step traces), and with ``plots``
``plots/loss_<family>.png`` (median optimality gap per optimizer, log scale) and
``plots/traces_<family>.png`` (GARO's lr_t / momentum_t / wd_t, DCAO's curvature and schedule, a
hybrid's mode). An optimizer ``name`` is a baseline name, any ``metaopt.create_optimizer`` name
(``metaopt list``), a shipped checkpoint (``garo_quadratics``) or a checkpoint file / directory
path. W&B logging when ``wandb.mode`` is ``online`` or
``offline`` (default ``disabled``); ``WANDB_DIR`` is set to ``out_dir`` so nothing is written
elsewhere, and offline mode never needs a login.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import tasks
from metaopt.checkpoint import CheckpointError
from metaopt.evaluation import (
    CRITERIA,
    SUMMARY_COLUMNS,
    TARGET_KINDS,
    RunResult,
    evaluate,
    format_table,
    log_grid,
    make_optimizer,
    resolve_optimizer,
    summarize,
    tune_lr,
)
from metaopt.evaluation.traces import TracingFactory
from metaopt.factory import NamedOptimizerFactory
from scripts.meta_train_schema import WandbConfig as TrainWandbConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TaskConfig:
    name: str = MISSING  # a name from tasks.names()
    label: str | None = None  # display name in tables (default: name)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to tasks.get(name, **kwargs)


@dataclass
class OptimizerConfig:
    name: str = MISSING  # baseline, create_optimizer name, pretrained name or checkpoint path
    label: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    tune_lr: bool = False  # replace lr by the best of the tuning grid, per task family


@dataclass
class TuningConfig:
    lr_min: float = 1e-4
    lr_max: float = 1.0
    num_lrs: int = 9
    criterion: str = "final_train_loss"  # one of metaopt.evaluation.CRITERIA
    task_seeds: list[int] = field(default_factory=lambda: [10_000, 10_001])  # held out from
    # evaluation
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None  # default: the evaluation's steps


@dataclass
class WandbConfig(TrainWandbConfig):
    mode: str = "disabled"  # an evaluation logs to W&B only when asked


@dataclass
class EvalConfig:
    tasks: list[TaskConfig] = field(default_factory=list)
    optimizers: list[OptimizerConfig] = field(default_factory=list)
    steps: int = 200
    eval_every: int = 20
    task_seeds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    target: float | None = 0.01
    target_kind: str = "relative"  # absolute | relative (fraction of the initial optimality gap)
    divergence_factor: float = 1e6
    init: str = "canonical"  # canonical | seed
    track_memory: bool = True
    device: str = "cpu"
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default (tiny tasks run best
    # with 1)
    dtype: str = "float32"
    out_dir: str = "results/eval"
    plots: bool = True  # PNG loss curves and controller traces in out_dir/plots (matplotlib)
    traces: bool = True  # record controllers' per-step decisions (adds µs to their ms_per_step)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


class ConfigError(ValueError):
    """A configuration problem found before any work was done."""


def load_config(config_path: str | None, overrides: list[str]) -> EvalConfig:
    """Schema <- YAML <- ``key=value`` overrides; any unknown key or bad type raises ConfigError."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    try:
        merged = OmegaConf.structured(EvalConfig)
        if config_path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(config_path))
    except (OmegaConfBaseException, TypeError) as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(f"invalid config key {key!r} in {config_path}: {error}") from error
    except OSError as error:
        raise ConfigError(f"cannot read config {config_path!r}: {error}") from error
    for override in overrides:  # one at a time, so an error names the override's key
        key, text = override.split("=", 1)
        try:
            # parse the value as YAML (lists, dicts, numbers), then update in place: unlike a dict
            # merge this addresses list elements (``tasks.0.name=...``) and keeps struct checks
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
            OmegaConf.update(merged, key, value, merge=True)
        except (OmegaConfBaseException, TypeError, ValueError) as error:
            raise ConfigError(f"invalid override {key!r}: {error}") from error
    try:
        OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"missing value for {getattr(error, 'full_key', None)!r}: "
                          f"{error}") from error
    return merged


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")


def build(cfg: EvalConfig):
    """Families and optimizer factories from the config, all validated before any run."""
    _check_choice("target_kind", cfg.target_kind, TARGET_KINDS)
    _check_choice("init", cfg.init, ("canonical", "seed"))
    _check_choice("wandb.mode", cfg.wandb.mode, ("disabled", "offline", "online"))
    _check_choice("tuning.criterion", cfg.tuning.criterion, CRITERIA)
    if not cfg.tasks or not cfg.optimizers:
        raise ConfigError("the config needs at least one entry in `tasks` and one in `optimizers`")
    families, optimizers = {}, {}
    for index, spec in enumerate(cfg.tasks):
        label = spec.label or spec.name
        if label in families:
            raise ConfigError(f"tasks.{index}: duplicate task label {label!r}; set `label`")
        kwargs = OmegaConf.to_container(spec.kwargs, resolve=True)
        try:
            families[label] = tasks.get(spec.name, device=cfg.device, dtype=cfg.dtype, **kwargs)
        except ValueError as error:
            raise ConfigError(f"tasks.{index}: {error}") from error
    for index, spec in enumerate(cfg.optimizers):
        label = spec.label or spec.name
        if label in optimizers:
            raise ConfigError(f"optimizers.{index}: duplicate optimizer label {label!r}; "
                              "set `label`")
        hyperparameters = OmegaConf.to_container(spec.hyperparameters, resolve=True)
        try:
            if _is_baseline(spec.name):
                factory = make_optimizer(spec.name, label=label, **hyperparameters)
            else:  # any create_optimizer name, a shipped checkpoint or a checkpoint path
                factory = NamedOptimizerFactory(spec.name, label=label, **hyperparameters)
        except (ValueError, FileNotFoundError, CheckpointError) as error:
            raise ConfigError(f"optimizers.{index}: {error}") from error
        optimizers[label] = (factory, spec.tune_lr)
    return families, optimizers


def _is_baseline(name: str) -> bool:
    """A name of the harness's registry (baselines with their defaults, metaopt/torch classes)."""
    try:
        resolve_optimizer(name)
    except ValueError:
        return False
    return True


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _init_wandb(cfg: EvalConfig, out_dir: Path):
    if cfg.wandb.mode == "disabled":
        return None
    os.environ["WANDB_DIR"] = str(out_dir)
    import wandb

    return wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                      name=cfg.wandb.run_name, tags=list(cfg.wandb.tags), dir=str(out_dir),
                      config=OmegaConf.to_container(cfg, resolve=True), job_type="evaluate")


def main(argv: list[str] | None = None) -> list[RunResult]:
    from scripts.config_groups import describe_keys  # --help lists every key, type and default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=describe_keys(EvalConfig, override_rules=False),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file typed by EvalConfig")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help="a module name or .py file to import first: "
                        "registers your task families (repeatable; metaopt.user_modules)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
    args = parser.parse_args(argv)
    from metaopt.user_modules import UserModuleError, import_user_modules
    try:
        import_user_modules(args.imports)
    except UserModuleError as error:
        raise ConfigError(str(error)) from None
    cfg = load_config(args.config, args.overrides)
    families, optimizers = build(cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    wandb_run = _init_wandb(cfg, out_dir)
    run_kwargs = dict(eval_every=cfg.eval_every, target=cfg.target, target_kind=cfg.target_kind,
                      divergence_factor=cfg.divergence_factor, init=cfg.init)
    lr_grid = log_grid(cfg.tuning.lr_min, cfg.tuning.lr_max, cfg.tuning.num_lrs)

    results: list[RunResult] = []
    tuned: list[dict[str, Any]] = []
    traces: list[dict[str, Any]] = []
    for family_label, family in families.items():
        for optimizer_label, (factory, should_tune) in optimizers.items():
            if should_tune:
                tuning = tune_lr(factory, family, cfg.tuning.steps or cfg.steps, lrs=lr_grid,
                                 criterion=cfg.tuning.criterion,
                                 task_seeds=list(cfg.tuning.task_seeds),
                                 seeds=list(cfg.tuning.seeds), **run_kwargs)
                factory = factory.with_hyperparameters(lr=tuning.best_lr)
                tuned.append({"family": family_label, **tuning.to_dict()})
                print(f"tuned {optimizer_label} on {family_label}: lr={tuning.best_lr:.3g} "
                      f"({tuning.criterion}={tuning.best_score:.4g})", flush=True)
            if cfg.traces:
                factory = TracingFactory(factory)

            def keep_trace(result: RunResult, factory=factory) -> None:
                if cfg.traces and factory.traces and factory.traces[-1]:
                    traces.append({"optimizer": result.optimizer, "family": result.family,
                                   "task_seed": result.task_seed, "seed": result.seed,
                                   "trace": factory.traces[-1]})
            results += evaluate({family_label: family}, {optimizer_label: factory}, cfg.steps,
                                task_seeds=list(cfg.task_seeds), seeds=list(cfg.seeds),
                                track_memory=cfg.track_memory, on_result=keep_trace, **run_kwargs)

    summary = summarize(results)
    print(format_table(summary, SUMMARY_COLUMNS))
    _write_csv(out_dir / "runs.csv", [r.to_row() for r in results])
    _write_csv(out_dir / "summary.csv", summary)
    payload = {"config": OmegaConf.to_container(cfg, resolve=True), "tuning": tuned,
               "summary": summary, "runs": [r.to_dict() for r in results], "traces": traces}
    pngs = write_plots(cfg, families, payload["runs"], traces, out_dir) if cfg.plots else []
    # strict JSON: NaN / inf (diverged runs, empty statistics) become null
    (out_dir / "results.json").write_text(json.dumps(_nan_to_none(payload), indent=1, default=str,
                                                     allow_nan=False))
    if wandb_run is not None:
        import wandb

        wandb_run.log({"summary": wandb.Table(columns=list(summary[0]),
                                              data=[list(r.values()) for r in summary])})
        for row in summary:
            for key in ("final_norm_loss_median", "diverged", "test_acc_mean", "ms_per_step"):
                wandb_run.summary[f"{row['optimizer']}/{row['family']}/{key}"] = row[key]
        from scripts import plots

        plots.log_wandb_charts(wandb_run, payload["runs"], traces, pngs)
        wandb_run.finish()
    print(f"wrote {out_dir}/runs.csv, summary.csv, results.json", flush=True)
    return results


def write_plots(cfg: EvalConfig, families, runs, traces, out_dir: Path) -> list[Path]:
    """PNG loss curves (log scale, optimality gap) and controller traces; see scripts/plots.py."""
    from scripts import plots

    offsets = {(label, seed): float(family.sample_seed(seed).loss_offset)
               for label, family in families.items() for seed in cfg.task_seeds}
    written = plots.loss_curves(runs, offsets, out_dir / "plots")
    written += plots.trace_curves(traces, out_dir / "plots")
    if written:
        print(f"wrote {len(written)} plots to {out_dir / 'plots'}", flush=True)
    return written


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
