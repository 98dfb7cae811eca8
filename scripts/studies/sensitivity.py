"""lr sensitivity around the best value (GDSearch: sensitivity analysis around
the best hyperparameters, lr ± 10 %). For each test function and optimizer: tune lr on a log grid,
rerun at ±5 %, ±10 % and report the spread of the final loss and of the steps to target.
Instrument: ``metaopt.analysis.sensitivity``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaopt.analysis.sensitivity import best_lr, function_run, lr_sensitivity
from metaopt.evaluation import make_optimizer
from tasks.test_functions import TEST_FUNCTIONS_2D

from .common import markdown_table, save_figure, write_csv, write_report

NAME = "sensitivity"
DESCRIPTION = "final-loss / steps-to-target spread at lr ±10% around the tuned lr"
SMOKE = ["steps=30", "lr_grid=[0.0001,0.001]", "relative=[-0.1,0.0,0.1]",
         "problems=[{function: rosenbrock, start: [-1.5, 2.0]}]"]


@dataclass
class Problem:
    function: str = "rosenbrock"
    start: list[float] = field(default_factory=lambda: [-1.5, 2.0])


@dataclass
class OptimizerSpec:
    label: str = "sgd"
    name: str = "sgd"  # a metaopt.evaluation optimizer name (sgd, sgd_momentum, adam, Heun, ...)
    options: dict[str, Any] = field(default_factory=dict)  # everything but lr


@dataclass
class Config:
    problems: list[Problem] = field(default_factory=lambda: [
        Problem("rosenbrock", [-1.5, 2.0]), Problem("beale", [1.0, 1.0])])
    optimizers: list[OptimizerSpec] = field(default_factory=lambda: [
        OptimizerSpec("sgd", "sgd"),
        OptimizerSpec("sgd_momentum", "sgd_momentum", {"momentum": 0.9}),
        OptimizerSpec("adam", "adam")])
    lr_grid: list[float] = field(default_factory=lambda: [
        1e-4, 1e-3, 2e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3])
    relative: list[float] = field(default_factory=lambda: [-0.1, -0.05, 0.0, 0.05, 0.1])
    steps: int = 200
    target: float = 1e-3  # absolute loss (both default functions have minimum 0)

    def __post_init__(self):
        for i, p in enumerate(self.problems):
            if p.function not in TEST_FUNCTIONS_2D:
                raise ValueError(f"problems[{i}].function: unknown {p.function!r}; "
                                 f"choose from {sorted(TEST_FUNCTIONS_2D)}")
            if len(p.start) != 2:
                raise ValueError(f"problems[{i}].start: needs 2 coordinates, got {p.start}")
        if not self.problems or not self.optimizers:
            raise ValueError("problems/optimizers: need at least one each")
        for i, o in enumerate(self.optimizers):
            if "lr" in o.options:
                raise ValueError(f"optimizers[{i}].options.lr: lr is tuned, do not set it")
            try:
                make_optimizer(o.name, **dict(o.options))
            except ValueError as error:
                raise ValueError(f"optimizers[{i}]: {error}") from None
        if not self.lr_grid or min(self.lr_grid) <= 0:
            raise ValueError(f"lr_grid: needs positive values, got {self.lr_grid}")
        if not self.relative or min(self.relative) <= -1:
            raise ValueError(f"relative: needs values > -1, got {self.relative}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.target > 0:
            raise ValueError(f"target: must be > 0, got {self.target}")


def run(cfg: Config, out_dir: Path, logger) -> dict:
    rows, summary, tuning = [], [], []
    for problem in cfg.problems:
        function = TEST_FUNCTIONS_2D[problem.function].function
        for spec in cfg.optimizers:
            factory = make_optimizer(spec.name, **dict(spec.options))

            def build(params, lr, _factory=factory):
                return _factory.with_hyperparameters(lr=lr)(params)
            run_fn = function_run(function, problem.start, build, cfg.steps)
            best, finals = best_lr(run_fn, cfg.lr_grid, target=cfg.target)
            tuning += [{"function": problem.function, "optimizer": spec.label, "lr": lr,
                        "final_loss": f} for lr, f in zip(cfg.lr_grid, finals)]
            result = lr_sensitivity(run_fn, best, cfg.relative, target=cfg.target)
            for row in result.rows():
                rows.append({"function": problem.function, "optimizer": spec.label, **row})
            summary.append({
                "function": problem.function, "optimizer": spec.label, "best_lr": best,
                "final_loss_at_best": result.final_losses[result.relative.index(0.0)]
                if 0.0 in result.relative else math.nan,
                "final_loss_min": min(result.final_losses),
                "final_loss_max": max(result.final_losses),
                "final_loss_ratio(max/min)": result.final_loss_ratio,
                "steps_to_target_min": min((s for s in result.steps_to_target if s is not None),
                                           default=None),
                "steps_to_target_spread": result.steps_spread,
                "runs_missing_target": sum(s is None for s in result.steps_to_target),
                "runs_overflowed": sum(math.isinf(f) for f in result.final_losses),
                "overflowed_at_relative": " ".join(
                    f"{r:+g}" for r, f in zip(result.relative, result.final_losses)
                    if math.isinf(f))})
    write_csv(out_dir / "sensitivity.csv", rows)
    write_csv(out_dir / "tuning.csv", tuning)
    write_csv(out_dir / "summary.csv", summary)

    functions = [p.function for p in cfg.problems]

    def panels(table, x, xlabel, title, label, xscale=None):
        """One panel per function: final loss against ``x(row)`` per optimizer (gaps: overflow)."""
        def draw(*axes):
            for ax, name in zip(axes, functions):
                for spec in cfg.optimizers:
                    pts = [r for r in table
                           if r["function"] == name and r["optimizer"] == spec.label]
                    ax.plot([x(r) for r in pts],
                            [r["final_loss"] if math.isfinite(r["final_loss"]) else math.nan
                             for r in pts], "o-", label=label(spec, pts))
                if xscale:
                    ax.set_xscale(xscale)
                ax.set_yscale("log")
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"final loss after {cfg.steps} steps")
                ax.set_title(title.format(name))
                ax.legend(fontsize="small")
        return draw

    save_figure(out_dir / "sensitivity.png", panels(
        rows, lambda r: 100 * r["relative"], "lr change from the tuned lr (%)",
        "{} (gaps = overflow)",
        lambda spec, pts: f"{spec.label} (lr*={pts[0]['lr'] / (1 + pts[0]['relative']):.3g})"),
        ncols=len(functions), logger=logger)
    save_figure(out_dir / "tuning.png", panels(
        tuning, lambda r: r["lr"], "learning rate", "{}: lr grid (gaps = overflow)",
        lambda spec, pts: spec.label, xscale="log"), ncols=len(functions), logger=logger)

    for _i, s in enumerate(summary):
        logger.log({f"{s['function']}/{s['optimizer']}/final_loss_ratio":
                    s["final_loss_ratio(max/min)"],
                    f"{s['function']}/{s['optimizer']}/best_lr": s["best_lr"]}, step=0)
    logger.log_table("sensitivity_summary", summary, step=0)
    span = f"{100 * min(cfg.relative):+g}%..{100 * max(cfg.relative):+g}%"
    findings = [
        f"{s['function']}, {s['optimizer']}: tuned lr {s['best_lr']:.3g}; over lr {span} the final "
        f"loss ranges {s['final_loss_min']:.3g}..{s['final_loss_max']:.3g} "
        f"(max/min {s['final_loss_ratio(max/min)']:.3g}"
        + (f"; overflow at r = {s['overflowed_at_relative']}" if s["runs_overflowed"] else "")
        + f"); steps to loss {cfg.target:g}: "
        + (f"min {s['steps_to_target_min']}, spread {s['steps_to_target_spread']}"
           if s["steps_to_target_spread"] is not None else
           f"{s['runs_missing_target']} of {len(cfg.relative)} runs never reach it")
        for s in summary]
    write_report(out_dir / "report.md", "lr sensitivity around the tuned lr", [
        ("Findings", "\n".join(f"- {f}" for f in findings)),
        ("Summary", markdown_table(summary)),
        ("Setup", f"{cfg.steps} steps from each problem's start, lr tuned on {cfg.lr_grid} by the "
                  f"final loss, then rerun at lr·(1+r), r in {cfg.relative}. Files: "
                  "sensitivity.csv, tuning.csv, summary.csv, sensitivity.png, tuning.png."),
    ])
    worst = max(summary, key=lambda s: s["final_loss_ratio(max/min)"])
    return {"most_sensitive": f"{worst['function']}/{worst['optimizer']}",
            "largest_final_loss_ratio": worst["final_loss_ratio(max/min)"]}
