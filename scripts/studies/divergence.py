"""Divergence anatomy (GDSearch): why SGD+momentum β=0.99, lr=0.01 overflows on
Rosenbrock from (−1.5, 2) while lr=0.001 is stable, and whether "if β > 0.9 use lr < 0.001·(1−β)"
is the right rule. Instruments: ``metaopt.analysis.divergence``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from metaopt.analysis.divergence import (
    divergence_anatomy,
    heavy_ball_grid,
    heavy_ball_max_stable_lr,
    rule_of_thumb_lr,
)
from tasks.test_functions import TEST_FUNCTIONS_2D

from .common import markdown_table, save_figure, write_csv, write_report

NAME = "divergence"
DESCRIPTION = ("heavy-ball divergence on Rosenbrock — start Hessian, velocity growth, "
               "stability over beta x lr vs the rule of thumb lr < 0.001(1-beta)")
SMOKE = ["steps=60", "grid_steps=60", "grid_lrs=[0.001,0.01]", "grid_betas=[0.0,0.99]",
         "curvature_steps=10"]


@dataclass
class Config:
    function: str = "rosenbrock"
    start: list[float] = field(default_factory=lambda: [-1.5, 2.0])
    beta: float = 0.99
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.001])  # the two reported runs
    steps: int = 1000
    curvature_steps: int = 40  # exact Hessian along the first steps of each run
    grid_betas: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9, 0.99])
    grid_lrs: list[float] = field(default_factory=lambda: [
        1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 5e-3, 1e-2])
    grid_steps: int = 1000

    def __post_init__(self):
        if self.function not in TEST_FUNCTIONS_2D:
            raise ValueError(f"function: unknown {self.function!r}; "
                             f"choose from {sorted(TEST_FUNCTIONS_2D)}")
        if len(self.start) != 2:
            raise ValueError(f"start: needs 2 coordinates, got {self.start}")
        for key in ("steps", "grid_steps", "curvature_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("lrs", "grid_lrs"):
            if not getattr(self, key) or min(getattr(self, key)) <= 0:
                raise ValueError(f"{key}: needs positive learning rates, got {getattr(self, key)}")
        betas = [self.beta, *self.grid_betas]
        if not self.grid_betas or any(not 0 <= b < 1 for b in betas):
            raise ValueError(f"beta/grid_betas: momentum must be in [0, 1), got {betas}")


def _finite(t):
    """numpy copy with non-finite values as NaN (matplotlib leaves gaps, log axes stay sane)."""
    x = t.detach().double().numpy().copy()
    x[~(abs(x) < 1e300)] = float("nan")
    return x


def run(cfg: Config, out_dir: Path, logger) -> dict:
    function = TEST_FUNCTIONS_2D[cfg.function].function
    runs = {lr: divergence_anatomy(function, cfg.start, lr, cfg.beta, cfg.steps,
                                   curvature_steps=cfg.curvature_steps) for lr in cfg.lrs}
    first = next(iter(runs.values()))
    lam_min, lam_max = (float(v) for v in first.eigenvalues)
    anatomy_rows, trace_rows = [], []
    for lr, a in runs.items():
        early = [v for v in a.velocity_growth[:4].tolist() if math.isfinite(v)]
        anatomy_rows.append({
            "lr": lr, "beta": cfg.beta, "lambda_min": lam_min, "lambda_max": lam_max,
            "condition_number": a.condition_number, "lr_lambda_max": a.lr_lambda_max,
            "stability_bound_2(1+beta)": 2 * (1 + cfg.beta),
            "max_stable_lr_linear": a.max_stable_lr,
            "predicted_velocity_growth": a.predicted_growth,
            "measured_velocity_growth_steps2to5": " ".join(f"{v:.3g}" for v in early),
            "diverged_at": a.diverged_at if a.diverged else "", "final_loss": float(a.losses[-1])})
        for t in range(len(a.losses)):
            trace_rows.append({
                "lr": lr, "step": t, "loss": float(a.losses[t]),
                "velocity_norm": float(a.velocity_norms[t - 1]) if 0 < t <= len(a.velocity_norms)
                else "",
                "lambda_max": float(a.lambda_max_path[t]) if t < len(a.lambda_max_path) else ""})
    write_csv(out_dir / "anatomy.csv", anatomy_rows)
    write_csv(out_dir / "trajectory.csv", trace_rows)

    rule_lrs = [rule_of_thumb_lr(b) for b in cfg.grid_betas]
    lrs = sorted(set(cfg.grid_lrs) | set(rule_lrs))
    grid = heavy_ball_grid(function, cfg.start, lrs, cfg.grid_betas, cfg.grid_steps)
    grid_rows, rule_rows = [], []
    max_stable = grid.max_stable_lr()
    for i, beta in enumerate(cfg.grid_betas):
        for j, lr in enumerate(lrs):
            grid_rows.append({"beta": beta, "lr": lr, "diverged_at": int(grid.diverged_at[i, j]),
                              "final_loss": float(grid.final_loss[i, j])})
        rule = rule_lrs[i]
        best_j = int(grid.final_loss[i].argmin())
        rule_rows.append({
            "beta": beta, "rule_of_thumb_lr": rule, "rule_applies(beta>0.9)": beta > 0.9,
            "final_loss_at_rule_lr": float(grid.final_loss[i, lrs.index(rule)]),
            "max_stable_lr_observed": float(max_stable[i]),
            "max_stable_lr_linear_at_start": heavy_ball_max_stable_lr(beta, lam_max),
            "rule_margin(observed/rule)": float(max_stable[i]) / rule,
            "best_lr": lrs[best_j], "best_final_loss": float(grid.final_loss[i, best_j])})
    write_csv(out_dir / "stability_grid.csv", grid_rows)
    write_csv(out_dir / "rule_of_thumb.csv", rule_rows)

    def draw_anatomy(ax_loss, ax_vel, ax_curv):
        for lr, a in runs.items():
            label = f"lr={lr:g}" + (f" (overflow @ {a.diverged_at})" if a.diverged else "")
            ax_loss.plot(_finite(a.losses), label=label)
            ax_vel.plot(range(1, len(a.velocity_norms) + 1), _finite(a.velocity_norms), label=label)
            ax_curv.plot(_finite(a.lambda_max_path), label=f"λ_max, lr={lr:g}")
            ax_curv.axhline(2 * (1 + cfg.beta) / lr, ls="--", lw=0.8,
                            color=ax_curv.get_lines()[-1].get_color(),
                            label=f"2(1+β)/lr, lr={lr:g}")
        for ax, ylabel in ((ax_loss, "loss f(θ_t)"), (ax_vel, "velocity ‖v_t‖"),
                           (ax_curv, "Hessian λ_max along the path")):
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(low, min(high, 1e12))  # the overflow leaves the view; the label says when
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize="small")
        ax_loss.set_title(f"SGD momentum β={cfg.beta:g} from {tuple(cfg.start)}")
        ax_curv.set_title("curvature vs the heavy-ball bound")
    save_figure(out_dir / "anatomy.png", draw_anatomy, ncols=3, logger=logger)

    def draw_grid(ax):
        import numpy as np
        b = np.array(cfg.grid_betas)
        for i, _beta in enumerate(cfg.grid_betas):
            stable = ~grid.diverged[i].numpy()
            lr_arr = np.array(lrs)
            ax.scatter(lr_arr[stable], np.full(stable.sum(), i), marker="o", color="tab:green",
                       label="stable" if i == 0 else None)
            ax.scatter(lr_arr[~stable], np.full((~stable).sum(), i), marker="x", color="tab:red",
                       label="overflow" if i == 0 else None)
        ax.plot([rule_of_thumb_lr(x) for x in b], range(len(b)), "k--",
                label="rule of thumb 0.001(1−β)")
        ax.plot([heavy_ball_max_stable_lr(x, lam_max) for x in b], range(len(b)), "b:",
                label="linear bound 2(1+β)/λ_max(start)")
        ax.set_xscale("log")
        ax.set_yticks(range(len(b)), [f"{x:g}" for x in b])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("momentum β")
        ax.set_title(f"{cfg.grid_steps} steps of SGD+momentum on {cfg.function}")
        ax.legend(fontsize="small", loc="center left")
    save_figure(out_dir / "stability.png", draw_grid, size=(7.0, 4.0), logger=logger)

    diverging = [lr for lr, a in runs.items() if a.diverged]
    summary = {
        "condition_number_start": first.condition_number, "lambda_max_start": lam_max,
        "max_stable_lr_linear_start": first.max_stable_lr,
        **{f"diverged_at_lr_{lr:g}": (runs[lr].diverged_at if runs[lr].diverged else -1)
           for lr in cfg.lrs},
        **{f"predicted_growth_lr_{lr:g}": runs[lr].predicted_growth for lr in cfg.lrs},
        **{f"max_stable_lr_beta_{r['beta']:g}": r["max_stable_lr_observed"] for r in rule_rows},
    }
    logger.log(summary, step=0)
    logger.log_table("rule_of_thumb", rule_rows, step=0)
    high = [r for r in rule_rows if r["rule_applies(beta>0.9)"]]
    findings = [
        f"Start {tuple(cfg.start)}: Hessian eigenvalues {lam_min:.4g} and {lam_max:.4g}, "
        f"condition number κ = {first.condition_number:.4g}.",
        *[f"lr={lr:g}: lr·λ_max = {runs[lr].lr_lambda_max:.3g} vs the heavy-ball bound "
          f"2(1+β) = {2 * (1 + cfg.beta):.3g}; predicted velocity growth "
          f"{runs[lr].predicted_growth:.3g}/step, measured ‖v_t+1‖/‖v_t‖ at steps 2-5: "
          f"{anatomy_rows[k]['measured_velocity_growth_steps2to5']}; "
          + (f"overflow at step {runs[lr].diverged_at}." if runs[lr].diverged else
             f"stable, final loss {float(runs[lr].losses[-1]):.3g}.")
          for k, lr in enumerate(cfg.lrs)],
        *[f"At lr={lr:g} over the β grid: " + ", ".join(
            f"β={b:g} " + (f"overflows at step {int(grid.diverged_at[i, lrs.index(lr)])}"
                           if bool(grid.diverged[i, lrs.index(lr)]) else "stable")
            for i, b in enumerate(cfg.grid_betas)) + "." for lr in cfg.lrs if lr in lrs],
        "Largest stable lr observed per β: " + ", ".join(
            f"β={r['beta']:g}: {r['max_stable_lr_observed']:.3g} (linear bound at the start "
            f"{r['max_stable_lr_linear_at_start']:.3g})" for r in rule_rows) + ".",
        *[f"Rule of thumb at β={r['beta']:g}: lr = {r['rule_of_thumb_lr']:.3g} is stable but "
          f"{r['rule_margin(observed/rule)']:.3g}x below the largest stable lr; it ends at loss "
          f"{r['final_loss_at_rule_lr']:.3g} vs {r['best_final_loss']:.3g} at the best lr "
          f"{r['best_lr']:.3g}." for r in high],
    ]
    write_report(out_dir / "report.md", "Divergence anatomy (heavy-ball momentum on Rosenbrock)", [
        ("Findings", "\n".join(f"- {f}" for f in findings)),
        ("Runs", markdown_table(anatomy_rows)),
        ("Rule of thumb vs observed stability", markdown_table(rule_rows)),
        ("Files", "anatomy.csv, trajectory.csv (per step), stability_grid.csv, rule_of_thumb.csv, "
                  "anatomy.png, stability.png"),
    ])
    return {**summary, "diverging_lrs": ",".join(f"{lr:g}" for lr in diverging)}
