"""PNG plots of the scripts (matplotlib, the optional ``plots`` extra; Agg, no display needed).

* ``loss_curves``: one figure per task family, the median optimality gap (full-batch train
  loss − the task's known minimum, log scale) of every optimizer over its runs, with the
  min–max band across task seeds and seeds;
* ``trace_curves``: one figure per task family, a panel per traced quantity (lr_t, momentum_t,
  wd_t, DCAO's spectral radius, a hybrid's mode ...), one line per optimizer (its first run);
* ``meta_training_curve``: meta-loss per outer step and the held-out validation meta-loss,
  read back from a run's ``metrics.jsonl``;
* ``log_wandb_charts``: the PNGs as W&B images, loss curves and traces as native W&B charts.

Every function returns the written path, or None when matplotlib is not installed.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["log_wandb_charts", "loss_curves", "meta_training_curve", "safe_name", "trace_curves"]

FLOOR = 1e-12  # a gap of exactly 0 (or below, by rounding) is drawn at this floor on a log axis


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def safe_name(text: str) -> str:
    """A file-name-safe version of a label ("rosenbrock(-1.5,2)" -> "rosenbrock_-1.5_2_")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def loss_curves(runs: Sequence[Mapping[str, Any]], offsets: Mapping[tuple, float],
                out_dir: str | Path) -> list[Path]:
    """``runs``: ``RunResult.to_dict()`` records; ``offsets[(family, task_seed)]``: the task's
    known minimum (``task.loss_offset``). One PNG per family under ``out_dir``."""
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for family in dict.fromkeys(r["family"] for r in runs):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        draw_family_losses(ax, [r for r in runs if r["family"] == family], offsets)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss − known minimum (full batch)")
        ax.set_title(f"{family}: median over runs, band = min–max, x = diverged there")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        path = out_dir / f"loss_{safe_name(family)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def draw_family_losses(ax, runs: Sequence[Mapping[str, Any]],
                       offsets: Mapping[tuple, float]) -> None:
    """One family's panel: per optimizer the median gap with a marker at every evaluation, the
    min–max band, and an ``x`` where each diverged run diverged (at its last finite loss, so a
    run that diverged before any evaluation is still visible); log y axis."""
    for optimizer in dict.fromkeys(r["optimizer"] for r in runs):
        mine = [r for r in runs if r["optimizer"] == optimizer]
        curves = []
        for r in mine:
            offset = offsets.get((r["family"], r["task_seed"]), 0.0)
            curves.append({s: max(v - offset, FLOOR) for s, v in
                           zip(r["eval_steps"], r["eval_train_losses"], strict=False)
                           if v is not None and math.isfinite(v)})
        diverged = [r for r in mine if r.get("diverged")]
        label = optimizer + (f" ({len(diverged)}/{len(mine)} diverged)" if diverged else "")
        steps = sorted(set().union(*curves)) if curves else []
        color = None
        if steps:
            columns = [[c[s] for c in curves if s in c] for s in steps]
            line, = ax.plot(steps, [statistics.median(col) for col in columns], marker="o",
                            markersize=3, label=label)
            color, label = line.get_color(), None
            if len(curves) > 1:
                ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns],
                                color=color, alpha=0.15, linewidth=0)
        for r in diverged:
            x, y = _divergence_point(r, offsets.get((r["family"], r["task_seed"]), 0.0))
            drawn = ax.plot([x], [y], linestyle="none", marker="x", markersize=9,
                            markeredgewidth=2, color=color, label=label)
            color, label = drawn[0].get_color(), None
    ax.set_yscale("log")


def _divergence_point(run: Mapping[str, Any], offset: float) -> tuple[float, float]:
    """(step at which the run diverged, its last finite optimality gap before that)."""
    step = run.get("divergence_step") or 0
    finite = _finite([v for v in run.get("train_losses") or []][:max(step, 1)]) \
        or _finite(run.get("eval_train_losses") or []) or [run.get("initial_loss") or 1.0]
    return float(step), max(finite[-1] - offset, FLOOR)


def trace_curves(traces: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """``traces``: ``{"family", "optimizer", "trace": {name: [per step]}}`` records (the first
    record per family and optimizer is drawn). One PNG per family with any trace."""
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for family in dict.fromkeys(t["family"] for t in traces):
        first: dict[str, Mapping[str, list]] = {}
        for t in traces:
            if t["family"] == family and t["trace"] and t["optimizer"] not in first:
                first[t["optimizer"]] = t["trace"]
        names = list(dict.fromkeys(k for trace in first.values() for k in trace))
        if not names:
            continue
        fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 2.0 + 1.6 * len(names)),
                                 sharex=True, squeeze=False)
        for ax, name in zip(axes[:, 0], names):
            for optimizer, trace in first.items():
                values = trace.get(name)
                if not values:
                    continue
                if isinstance(values[0], str):  # a categorical trace (a hybrid's mode)
                    categories = sorted(set(values))
                    ax.step(range(len(values)), [categories.index(v) for v in values],
                            where="post", label=optimizer)
                    ax.set_yticks(range(len(categories)), categories)
                else:
                    ax.plot(range(len(values)), values, label=optimizer)
                    if name in ("lr_t", "wd_t", "spectral_radius") and min(_finite(values) or
                                                                           [0]) > 0:
                        ax.set_yscale("log")
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
        axes[0, 0].set_title(f"{family}: controller traces (first run)")
        axes[0, 0].legend(fontsize="small")
        axes[-1, 0].set_xlabel("step")
        path = out_dir / f"traces_{safe_name(family)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def meta_training_curve(metrics_jsonl: str | Path, path: str | Path) -> Path | None:
    """Meta-loss per outer step (and held-out ``val/meta_loss``) from ``metrics.jsonl``."""
    plt = _pyplot()
    metrics_jsonl = Path(metrics_jsonl)
    if plt is None or not metrics_jsonl.is_file():
        return None
    train, held_out = {}, {}
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        if record.get("meta_loss") is not None:
            train[step] = record["meta_loss"]
        if record.get("val/meta_loss") is not None:
            held_out[step] = record["val/meta_loss"]
    if not train and not held_out:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if train:
        ax.plot(sorted(train), [train[s] for s in sorted(train)], label="meta-loss (training)",
                alpha=0.7)
    if held_out:
        ax.plot(sorted(held_out), [held_out[s] for s in sorted(held_out)], "o-",
                label="held-out meta-loss (validation)")
    values = _finite(list(train.values()) + list(held_out.values()))
    # log axis for a loss-like meta-loss, even when a few noisy meta-steps dip below 0 (those
    # points drop out); a log meta-loss (kind=log) is already in log units: linear axis
    if values and sum(v > 0 for v in values) >= 0.9 * len(values):
        ax.set_yscale("log")
    ax.set_xlabel("outer (meta) step")
    ax.set_ylabel("meta-loss")
    ax.set_title("meta-training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_wandb_charts(wandb_run, runs, traces, pngs: list[Path]) -> None:
    """W&B: the PNGs as images, and native line charts of every run's loss curve and trace."""
    import wandb

    for png in pngs:
        wandb_run.log({f"plots/{png.stem}": wandb.Image(str(png))})
    for family in dict.fromkeys(r["family"] for r in runs):
        first = {}
        for r in runs:  # one curve per optimizer: its first run on this family
            if r["family"] == family and r["optimizer"] not in first:
                first[r["optimizer"]] = r
        keys = list(first)
        wandb_run.log({f"loss/{family}": wandb.plot.line_series(
            xs=[first[k]["eval_steps"] for k in keys],
            ys=[[v if v is not None else float("nan") for v in first[k]["eval_train_losses"]]
                for k in keys], keys=keys, title=f"{family}: full-batch train loss",
            xname="step")})
    for t in traces:
        if t["task_seed"] != traces[0]["task_seed"] or t["seed"] != traces[0]["seed"]:
            continue
        numeric = {k: v for k, v in t["trace"].items() if v and not isinstance(v[0], str)}
        for name, values in numeric.items():
            wandb_run.log({f"traces/{t['family']}/{t['optimizer']}/{name}": wandb.plot.line(
                wandb.Table(data=[[i, v] for i, v in enumerate(values)], columns=["step", name]),
                "step", name, title=f"{t['optimizer']} on {t['family']}: {name}")})
