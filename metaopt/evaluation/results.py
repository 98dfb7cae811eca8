"""Result records of the evaluation harness, and their aggregation into table rows.

A ``RunResult`` is one (optimizer, task, seed) run. ``to_row()`` gives the scalar columns (for
CSV / tables / W&B); ``to_dict()`` adds the per-step and per-evaluation curves (for JSON).
``summarize`` aggregates runs per (optimizer, family) group.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SUMMARY_COLUMNS", "RunResult", "format_table", "summarize"]

_CURVE_FIELDS = ("train_losses", "eval_steps", "eval_train_losses", "eval_test_losses",
                 "eval_test_accuracies")


@dataclass
class RunResult:
    """Everything recorded for one run (the hybrid GD–ODE optimizer's evaluation metrics:
    convergence speed as steps-to-target, final loss, computational efficiency as time per step and
    memory).

    Losses: ``train_losses[t]`` is the minibatch loss at the parameters before step ``t`` (the
    closure's first evaluation in that step); ``eval_*`` are full-batch losses on the training and
    test sets every ``eval_every`` steps and after the last step. ``final_*`` come from the last
    evaluation. ``final_normalized_loss = (final_train_loss - offset) / scale`` with the task's
    normaliser. On divergence the finals are NaN and ``diverged`` is True.
    """

    optimizer: str
    family: str
    task: str
    task_seed: int | None
    seed: int
    steps: int
    steps_completed: int = 0
    diverged: bool = False
    divergence_step: int | None = None
    divergence_reason: str | None = None
    initial_loss: float = math.nan
    final_train_loss: float = math.nan
    final_test_loss: float = math.nan
    final_train_accuracy: float | None = None
    final_test_accuracy: float | None = None
    generalization_gap: float = math.nan
    final_normalized_loss: float = math.nan
    best_train_loss: float = math.nan
    target_loss: float | None = None
    steps_to_target: int | None = None
    grad_evals_to_target: int | None = None
    grad_evals: int = 0
    # the optimizer's own count (``num_grad_evals``; None for optimizers without one)
    optimizer_grad_evals: int | None = None
    wall_time_per_step: float = math.nan
    total_wall_time: float = 0.0
    peak_memory_bytes: int | None = None
    memory_method: str = "none"
    optimizer_state_bytes: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    train_losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_train_losses: list[float] = field(default_factory=list)
    eval_test_losses: list[float] = field(default_factory=list)
    eval_test_accuracies: list[float] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """Scalar columns only; hyperparameters are flattened to ``hp_<name>``."""
        row = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in _CURVE_FIELDS and f.name != "hyperparameters"}
        row.update({f"hp_{k}": v for k, v in self.hyperparameters.items()})
        return row

    def to_dict(self) -> dict[str, Any]:
        """All fields including curves (JSON-serialisable: NaN/inf become None)."""
        return {k: _json_safe(v) for k, v in asdict(self).items()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _median(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


SUMMARY_COLUMNS = (
    "optimizer", "family", "runs", "diverged", "final_norm_loss_median", "final_train_loss_mean",
    "final_test_loss_mean", "test_acc_mean", "gen_gap_mean", "reached_target",
    "steps_to_target_median", "grad_evals_mean", "ms_per_step", "peak_mem_kb", "state_kb",
)


def summarize(results: Sequence[RunResult],
              by: Sequence[str] = ("optimizer", "family")) -> list[dict[str, Any]]:
    """One row per group. Loss/accuracy statistics are over the runs that did not diverge;
    ``diverged`` and ``reached_target`` are fractions over all runs of the group (and
    ``diverged_runs`` the count, which ``format_table`` shows as ``diverged`` = ``k/n``);
    ``steps_to_target_median`` is over the runs that reached the target."""
    groups: dict[tuple, list[RunResult]] = {}
    for result in results:
        groups.setdefault(tuple(getattr(result, key) for key in by), []).append(result)
    rows = []
    for key, runs in groups.items():
        ok = [r for r in runs if not r.diverged]
        reached = [r for r in runs if r.steps_to_target is not None]
        peaks = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None]
        row = dict(zip(by, key))
        row.update(
            runs=len(runs),
            diverged=sum(r.diverged for r in runs) / len(runs),
            diverged_runs=sum(r.diverged for r in runs),
            final_norm_loss_median=_median(r.final_normalized_loss for r in ok),
            final_train_loss_mean=_mean(r.final_train_loss for r in ok),
            final_test_loss_mean=_mean(r.final_test_loss for r in ok),
            test_acc_mean=_mean(r.final_test_accuracy for r in ok
                                if r.final_test_accuracy is not None),
            gen_gap_mean=_mean(r.generalization_gap for r in ok),
            reached_target=len(reached) / len(runs),
            steps_to_target_median=_median(float(r.steps_to_target) for r in reached),
            grad_evals_mean=_mean(float(r.grad_evals) for r in runs),
            ms_per_step=1e3 * _mean(r.wall_time_per_step for r in runs),
            peak_mem_kb=max(peaks) / 1024 if peaks else math.nan,
            state_kb=max(r.optimizer_state_bytes for r in runs) / 1024,
        )
        rows.append(row)
    return rows


def _format_cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _counted(row: dict[str, Any], column: str) -> bool:
    """``diverged`` reads as a count of runs ("2/2"): a bare fraction 1 read as "1 run"."""
    return column == "diverged" and "diverged_runs" in row and "runs" in row


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain fixed-width text table (NaN shown as '-'; a summary's ``diverged`` as ``k/n``)."""
    if not rows:
        return "(no results)"
    columns = list(columns or rows[0].keys())
    cells = [[_format_cell(row.get(c, "")) if not _counted(row, c)
              else f"{row['diverged_runs']}/{row['runs']}" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
