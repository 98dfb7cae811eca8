"""Trajectories on a 2-D test function and Adam's per-coordinate effective learning rate
(the GDSearch question "why does Adam shoot in early iterations?").

Every optimizer (torch.optim, metaopt.optim, pretrained checkpoints) runs from every start; the
study writes the paths, a contour plot with them, loss curves, Adam's η_t = lr/(√v̂_t + ε) per
coordinate with the exact Hessian's condition number along Adam's path, and a report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metaopt.analysis.hessian import curvature_along_path, function_hessian
from metaopt.analysis.trajectories import resolve_function, run_trajectories

from ._optimizers import OptimizerEntry, check_entries, factories
from .common import markdown_table, save_figure, write_csv, write_report

NAME = "trajectories"
DESCRIPTION = "paths of several optimizers on a 2-D test function; Adam's effective lr"
SMOKE = ["steps=30", "starts=[[-1.5,2.0]]"]


def _default_optimizers():
    return [OptimizerEntry("sgd", "sgd", {"lr": 1e-3}),
            OptimizerEntry("sgd_momentum", "sgd", {"lr": 1e-4, "momentum": 0.9}),
            OptimizerEntry("adam", "adam", {"lr": 0.05}),
            OptimizerEntry("rmsprop", "rmsprop", {"lr": 1e-2}),
            OptimizerEntry("rk4", "RK4", {"lr": 1e-3}),
            OptimizerEntry("garo_quadratics", "garo_quadratics", {})]


@dataclass
class Config:
    function: str = "rosenbrock"
    starts: list[list[float]] = field(default_factory=lambda: [[-1.5, 2.0], [-1.0, -0.5],
                                                               [1.8, 0.5]])
    steps: int = 1000
    optimizers: list[OptimizerEntry] = field(default_factory=_default_optimizers)
    target_loss: float = 1e-4      # "steps to target" threshold on f − f*
    divergence: float = 1e12       # |f| beyond this counts as diverged (a float loop would
    # overflow)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.starts or any(len(s) != 2 for s in self.starts):
            raise ValueError(f"starts: need a non-empty list of (x, y) pairs, got {self.starts}")
        if self.target_loss <= 0 or self.divergence <= 0:
            raise ValueError("target_loss/divergence: must be > 0")
        check_entries("optimizers", self.optimizers, batched=False)
        resolve_function(self.function)  # unknown names fail here, before any work


def _contour(ax, f, runs, minimizers, box):
    lo, hi = box
    xs = np.linspace(lo[0], hi[0], 300)
    ys = np.linspace(lo[1], hi[1], 300)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    z = torch.func.vmap(f)(grid).reshape(300, 300).numpy()
    z = z - min(z.min(), 0.0) + 1e-3  # shift so a log colour scale works for f* < 0 as well
    ax.contour(xs, ys, np.log10(z), levels=25, cmap="Greys", linewidths=0.6)
    for i, (label, trajs) in enumerate(runs.items()):
        for j, t in enumerate(trajs):
            p = t.path.numpy()
            ax.plot(p[:, 0], p[:, 1], color=f"C{i}", lw=1.2, label=label if j == 0 else "_")
            ax.plot(p[0, 0], p[0, 1], "o", color=f"C{i}", ms=3, label="_")
    if minimizers:
        m = np.array(minimizers)
        ax.plot(m[:, 0], m[:, 1], "*", color="gold", mec="k", ms=12, label="minimum")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize="small", loc="best")


def _valley_alignment(f, traj, n: int) -> float:
    """Mean |cos| between each of the first ``n`` steps and the Hessian's flattest eigenvector at
    the step's start (1: moving along the valley floor, 0: across it, into the walls)."""
    n = min(n, traj.path.shape[0] - 1)
    steps = traj.path[1:n + 1] - traj.path[:n]
    if steps.shape[0] == 0:
        return math.nan
    _, vectors = torch.linalg.eigh(function_hessian(f, traj.path[:steps.shape[0]]))
    flat = vectors[..., 0]  # eigenvector of the smallest eigenvalue
    cos = (steps * flat).sum(-1).abs() / steps.norm(dim=-1).clamp_min(1e-300)
    return float(cos.mean())


def run(cfg: Config, out_dir: Path, logger) -> dict:
    import tasks  # fills the task registry that resolve_function reads
    f, minimizers = resolve_function(cfg.function)
    f_star = tasks.get(cfg.function).spec.minimum_value or 0.0
    runs = run_trajectories(cfg.function, factories(cfg.optimizers), cfg.starts, cfg.steps,
                            divergence=cfg.divergence)
    rows, summary = [], []
    for label, trajs in runs.items():
        for s, t in enumerate(trajs):
            gap = (t.losses - f_star).numpy()
            for step in range(t.path.shape[0]):
                row = {"optimizer": label, "start": s, "step": step, "x": float(t.path[step, 0]),
                       "y": float(t.path[step, 1]), "loss": float(t.losses[step]),
                       "grad_norm": float(t.gradients[step].norm())}
                if t.effective_lr is not None and step >= 1:
                    row["eff_lr_x"], row["eff_lr_y"] = t.effective_lr[step - 1].tolist()
                rows.append(row)
            hit = np.nonzero(gap <= cfg.target_loss)[0]
            summary.append({"optimizer": label, "start": str(cfg.starts[s]),
                            "final_gap": float(gap[-1]),
                            "distance_to_min": (float(t.distance_to(minimizers)[-1])
                                                if minimizers else math.nan),
                            "steps_to_target": int(hit[0]) if hit.size else -1,
                            "diverged_at": t.diverged_at if t.diverged_at is not None else -1,
                            "first_step_length": (float(t.step_lengths[0])
                                                  if t.step_lengths.numel() else math.nan),
                            "gap_at_100": float(gap[min(100, gap.size - 1)]),
                            "valley_alignment_100": _valley_alignment(f, t, 100)})
    write_csv(out_dir / "trajectories.csv", rows)
    write_csv(out_dir / "summary.csv", summary)

    finite = torch.cat([t.path for trajs in runs.values() for t in trajs])
    lo = torch.minimum(finite.min(0).values, torch.tensor(cfg.starts).min(0).values.double()) - 0.3
    hi = torch.maximum(finite.max(0).values, torch.tensor(cfg.starts).max(0).values.double()) + 0.3
    lo, hi = lo.clamp(min=-6.0).tolist(), hi.clamp(max=6.0).tolist()
    save_figure(out_dir / "contour_paths.png",
                lambda ax: _contour(ax, f, runs, list(minimizers), (lo, hi)),
                size=(6.5, 5.5), title=f"{cfg.function}: optimizer paths", logger=logger)

    def loss_plot(ax):
        for i, (label, trajs) in enumerate(runs.items()):
            for j, t in enumerate(trajs):
                ax.plot((t.losses - f_star).clamp_min(1e-16).numpy(), color=f"C{i}",
                        lw=1, alpha=0.8, label=label if j == 0 else "_")
        ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("step")
        ax.set_ylabel("f(x) − f*")
        ax.legend(fontsize="small")
    save_figure(out_dir / "loss_vs_step.png", loss_plot, title="optimality gap", logger=logger)

    sections = [("Setup", f"`{cfg.function}`, {len(cfg.starts)} start(s), {cfg.steps} steps, "
                 f"optimizers: {', '.join(runs)}.\n"),
                ("Summary", markdown_table(summary))]
    results = {"finite_runs": sum(t.diverged_at is None for ts in runs.values() for t in ts)}
    adam = [(label, ts[0]) for label, ts in runs.items() if ts[0].effective_lr is not None]
    if adam:
        label, t = adam[0]
        rates = t.effective_lr
        curvature = curvature_along_path(f, t.path)
        steps = np.arange(1, rates.shape[0] + 1)

        def adam_plot(ax1, ax2):
            ax1.plot(steps, rates[:, 0].numpy(), label="η_x")
            ax1.plot(steps, rates[:, 1].numpy(), label="η_y")
            ax1.plot(steps, (1.0 / curvature.eigenvalues[1:].abs().max(1).values).numpy(), "k--",
                     lw=0.8, label="1 / max|λ(H)|")
            ax1.set_xscale("log")
            ax1.set_yscale("log")
            ax1.set_xlabel("step")
            ax1.set_ylabel("effective learning rate lr/(√v̂+ε)")
            ax1.legend(fontsize="small")
            ax2.plot(steps, t.step_lengths.numpy(), label=f"{label} step length")
            ax2.plot(np.arange(0, t.path.shape[0]), curvature.condition_number.numpy(),
                     label="κ(H) at x_t")
            ax2.set_xscale("log")
            ax2.set_yscale("log")
            ax2.set_xlabel("step")
            ax2.set_ylabel("‖x_{t+1} − x_t‖ and κ(H)")
            ax2.legend(fontsize="small")
        save_figure(out_dir / "adam_effective_lr.png", adam_plot, ncols=2,
                    title=f"{label} from {cfg.starts[0]}: per-coordinate effective lr",
                    logger=logger)
        # How far above the stability limit 2/λ_max Adam's per-coordinate rate rises ("shooting").
        ratio = (rates.max(1).values * curvature.eigenvalues[1:].abs().max(1).values).numpy()
        peak = int(np.argmax(ratio))
        lengths = t.step_lengths.numpy()
        results.update({"adam_eff_lr_first": rates[0].tolist(),
                        "adam_eff_lr_max": float(rates.max()),
                        "adam_peak_lr_times_lambda": float(ratio[peak]),
                        "adam_peak_step": peak + 1,
                        "adam_longest_step": float(lengths.max()),
                        "adam_longest_step_at": int(lengths.argmax()) + 1})
        sections.append(("Why does Adam shoot?", (
            f"{label} from {cfg.starts[0]}: at step 1 η = ({rates[0, 0]:.3g}, {rates[0, 1]:.3g}) "
            f"and the step is lr·sign(g) per coordinate (length {lengths[0]:.3g}) whatever |g| is. "
            f"As v̂ decays in flat stretches, η rises to {float(rates.max()):.3g}; the product "
            f"η·max|λ(H)| peaks at {ratio[peak]:.3g} at step {peak + 1} (gradient descent is "
            f"unstable above 2). The longest step, {lengths.max():.3g}, comes at step "
            f"{int(lengths.argmax()) + 1}; the condition number along the path ranges "
            f"{float(curvature.condition_number.min()):.3g}–{float(curvature.condition_number.max()):.3g}.\n\n"
            "The hypothesis (large steps along the valley floor, small ones across the "
            "walls) is tested by `valley_alignment_100` in the summary: the mean |cos| between "
            "each of the first 100 steps and the flattest Hessian eigenvector. From "
            f"{cfg.starts[0]}: " + ", ".join(
                f"{r['optimizer']} {r['valley_alignment_100']:.3g} (gap after 100 steps "
                f"{r['gap_at_100']:.3g})" for r in summary if r["start"] == str(cfg.starts[0]))
            + ".\n")))
    write_report(out_dir / "report.md", f"Trajectories on {cfg.function}", sections)
    for row in summary:
        logger.log({f"{row['optimizer']}/final_gap": row["final_gap"]}, step=0)
    return results
