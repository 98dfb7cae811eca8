"""One task's loss curves, every optimizer on one axis (a PNG for reports and W&B).

x: gradient evaluations (``eval_steps · grad_evals / steps_completed``: an optimizer that
evaluates the gradient k times a step is drawn k times as far), y: full-batch train loss on a log
scale, the median over the runs of an optimizer with a min–max band. A diverged run is marked
with an ``x`` at its last finite loss and its optimizer's legend entry says how many of its runs
diverged. Needs matplotlib (the ``plots`` extra); without it nothing is drawn and None returned.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_loss_curves"]

FLOOR = 1e-12  # losses at or below 0 cannot sit on a log axis


def _curve(run: Mapping[str, Any]) -> dict[float, float]:
    per_step = run["grad_evals"] / run["steps_completed"] if run.get("steps_completed") else 1.0
    points = zip(run["eval_steps"], run["eval_train_losses"], strict=True)
    return {s * per_step: max(v, FLOOR) for s, v in points if v is not None and math.isfinite(v)}


def plot_loss_curves(runs: Sequence[Mapping[str, Any]], path: str | Path,
                     title: str = "") -> Path | None:
    """``runs``: ``RunResult.to_dict()`` records of one task (grouped by ``optimizer``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for optimizer in dict.fromkeys(r["optimizer"] for r in runs):
        mine = [r for r in runs if r["optimizer"] == optimizer]
        curves = [_curve(r) for r in mine]
        xs = sorted(set().union(*curves))
        diverged = sum(bool(r["diverged"]) for r in mine)
        label = optimizer + (f" (diverged {diverged}/{len(mine)})" if diverged else "")
        if not xs:
            ax.plot([], [], label=label)
            continue
        columns = [[c[x] for c in curves if x in c] for x in xs]
        line, = ax.plot(xs, [statistics.median(c) for c in columns], label=label)
        if len(curves) > 1:
            ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        for run, curve in zip(mine, curves, strict=True):
            if run["diverged"] and curve:
                last = max(curve)
                ax.plot([last], [curve[last]], "x", color=line.get_color(), markersize=10,
                        markeredgewidth=2)
    ax.set_yscale("log")
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel("train loss (full batch)")
    ax.set_title(title or "loss curves: median over runs, band = min–max, x = diverged")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
