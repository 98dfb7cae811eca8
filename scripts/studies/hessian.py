"""Hessian along trajectories (GDSearch: eigenvalue spectrum
evolution during training): exact 2×2 eigenvalues along optimizer paths on a test function, and
for an MLP on digits the top-k eigenvalues (Lanczos), λ_min and the saddle indicator, the
Hutchinson trace and the spectral density (stochastic Lanczos quadrature) during training, with
the Lanczos values checked against the dense Hessian's eigvalsh."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from metaopt.analysis.hessian import (
    curvature_along_path,
    spectrum_density,
    spectrum_extremes,
    spectrum_top,
    spectrum_trace,
)
from metaopt.analysis.trajectories import resolve_function, run_trajectories
from metaopt.rules.hvp import dense_hessian

from ._network import digits_mlp, functional, train
from ._optimizers import OptimizerEntry, check_entries, factories
from .common import markdown_table, save_figure, write_csv, write_report

NAME = "hessian"
DESCRIPTION = "Hessian along trajectories: exact 2-D eigenvalues; MLP top-k, λ_min, trace, density"
SMOKE = ["steps_2d=20", "train_steps=6", "snapshot_every=3", "width=4", "lanczos_iters=10",
         "trace_samples=4", "density_iters=8", "density_runs=1"]


def _default_2d():
    return [OptimizerEntry("sgd", "sgd", {"lr": 1e-3}),
            OptimizerEntry("sgd_momentum", "sgd", {"lr": 1e-4, "momentum": 0.9}),
            OptimizerEntry("adam", "adam", {"lr": 0.05})]


@dataclass
class Config:
    function: str = "rosenbrock"
    start: list[float] = field(default_factory=lambda: [-1.5, 2.0])
    steps_2d: int = 500
    optimizers_2d: list[OptimizerEntry] = field(default_factory=_default_2d)
    width: int = 16
    depth: int = 1
    activation: str = "tanh"
    batch_size: int = 64
    seed: int = 0
    lr: float = 0.05
    momentum: float = 0.9
    train_steps: int = 300
    snapshot_every: int = 50
    top_k: int = 5
    lanczos_iters: int = 100
    trace_samples: int = 50
    density_iters: int = 60
    density_runs: int = 3
    density_sigma_squared: float = 1e-4  # Gaussian broadening variance (× spectrum width if > 1)
    dense_check: bool = True      # compare Lanczos with eigvalsh of the dense Hessian at the end

    def __post_init__(self):
        for key in ("steps_2d", "width", "depth", "batch_size", "train_steps", "snapshot_every",
                    "top_k", "lanczos_iters", "density_iters", "density_runs"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.density_sigma_squared > 0:
            raise ValueError("density_sigma_squared: must be > 0, "
                             f"got {self.density_sigma_squared}")
        if self.trace_samples < 2:
            raise ValueError(f"trace_samples: must be >= 2, got {self.trace_samples}")
        if not self.lr > 0 or not 0 <= self.momentum < 1:
            raise ValueError("lr/momentum: need lr > 0 and 0 <= momentum < 1")
        if len(self.start) != 2:
            raise ValueError(f"start: need two coordinates, got {self.start}")
        check_entries("optimizers_2d", self.optimizers_2d, batched=False)
        resolve_function(self.function)


def _two_d(cfg, out_dir, logger):
    f, _ = resolve_function(cfg.function)
    runs = run_trajectories(cfg.function, factories(cfg.optimizers_2d), [cfg.start], cfg.steps_2d)
    rows, summary, curves = [], [], {}
    for name, (traj,) in runs.items():
        c = curvature_along_path(f, traj.path)
        curves[name] = c
        for t in range(traj.path.shape[0]):
            rows.append({"optimizer": name, "step": t, "lambda_min": float(c.eigenvalues[t, 0]),
                         "lambda_max": float(c.eigenvalues[t, 1]),
                         "condition_number": float(c.condition_number[t]),
                         "saddle": bool(c.saddle[t]), "grad_norm": float(c.gradient_norm[t])})
        summary.append({"optimizer": name, "kappa_start": float(c.condition_number[0]),
                        "kappa_median": float(c.condition_number.median()),
                        "indefinite_fraction": float(c.saddle.double().mean()),
                        "lambda_max_peak": float(c.eigenvalues[:, 1].max())})
    write_csv(out_dir / "hessian_2d.csv", rows)

    def draw(ax1, ax2):
        for i, (name, c) in enumerate(curves.items()):
            ax1.plot(c.eigenvalues[:, 1].numpy(), color=f"C{i}", label=f"{name} λ_max")
            ax1.plot(c.eigenvalues[:, 0].numpy(), color=f"C{i}", ls=":", label=f"{name} λ_min")
            ax2.plot(c.condition_number.numpy(), color=f"C{i}", label=name)
        ax1.set_yscale("symlog", linthresh=1.0)
        ax1.set_xlabel("step")
        ax1.set_ylabel("exact Hessian eigenvalue")
        ax1.legend(fontsize="x-small")
        ax2.set_yscale("log")
        ax2.set_xlabel("step")
        ax2.set_ylabel("condition number max|λ|/min|λ|")
        ax2.legend(fontsize="small")
    save_figure(out_dir / "hessian_2d.png", draw, ncols=2, logger=logger,
                title=f"{cfg.function} from {cfg.start}: Hessian along each path")
    return summary


def _network(cfg, out_dir, logger):
    task = digits_mlp(cfg.width, cfg.depth, cfg.activation, cfg.batch_size, cfg.seed)
    snapshots, _ = train(task, lambda p: torch.optim.SGD(p, lr=cfg.lr, momentum=cfg.momentum),
                         cfg.train_steps, cfg.seed, cfg.snapshot_every)
    f = functional(task, "train")
    generator = torch.Generator().manual_seed(cfg.seed)
    options = dict(max_iters=cfg.lanczos_iters, generator=generator)
    rows = []
    for step, params in snapshots:
        top = spectrum_top(f, params, cfg.top_k, which="largest", **options)
        ends = spectrum_extremes(f, params, **options)
        trace = spectrum_trace(f, params, cfg.trace_samples, generator)
        rows.append({"step": step, "train_loss": float(f(params)),
                     **{f"lambda_{i + 1}": float(v) for i, v in enumerate(top)},
                     "lambda_min": ends.lambda_min, "saddle": ends.saddle,
                     "trace": trace.mean, "trace_std_error": trace.std_error})
    write_csv(out_dir / "network_spectrum.csv", rows)
    densities = {label: spectrum_density(f, snapshots[index][1], iters=cfg.density_iters,
                                         runs=cfg.density_runs, generator=generator,
                                         sigma_squared=cfg.density_sigma_squared)
                 for label, index in (("init", 0), ("final", -1))}
    write_csv(out_dir / "density.csv", [{"snapshot": label, "eigenvalue": float(x),
                                         "density": float(y)}
                                        for label, d in densities.items()
                                        for x, y in zip(d.grid, d.density)])

    def draw(ax1, ax2):
        steps = [r["step"] for r in rows]
        for i in range(cfg.top_k):
            ax1.plot(steps, [r[f"lambda_{i + 1}"] for r in rows], marker="o", ms=3,
                     label=f"λ_{i + 1}")
        ax1.plot(steps, [-r["lambda_min"] for r in rows], "k--", marker="x", label="−λ_min")
        ax1.plot(steps, [r["trace"] for r in rows], color="gray", marker="s", ms=3,
                 label="tr H (Hutchinson)")
        ax1.set_yscale("log")
        ax1.set_xlabel("training step")
        ax1.set_ylabel("Hessian eigenvalue / trace")
        ax1.legend(fontsize="x-small")
        for label, d in densities.items():
            ax2.plot(d.grid.numpy(), d.density.clamp_min(1e-12).numpy(), label=f"{label} (SLQ)")
        ax2.set_yscale("log")
        top = max(float(d.density.max()) for d in densities.values())
        ax2.set_ylim(top * 1e-6, top * 2)
        ax2.set_xlabel("eigenvalue")
        ax2.set_ylabel("spectral density")
        ax2.legend(fontsize="small")
    save_figure(out_dir / "network_spectrum.png", draw, ncols=2, logger=logger,
                title=f"{task.describe()}: Hessian during SGD+momentum training")
    check = {}
    if cfg.dense_check:
        exact = torch.linalg.eigvalsh(dense_hessian(f, snapshots[-1][1]))
        want = exact.flip(0)[:cfg.top_k]
        got = torch.tensor([rows[-1][f"lambda_{i + 1}"] for i in range(len(want))],
                           dtype=torch.float64)
        check = {"top_k_max_rel_error": float(((got - want).abs() / want.abs()).max()),
                 "lambda_min_rel_error": (abs(rows[-1]["lambda_min"] - float(exact[0]))
                                          / abs(float(exact[0]))),
                 "trace_error_in_std_errors": abs(rows[-1]["trace"] - float(exact.sum()))
                 / rows[-1]["trace_std_error"], "parameters": int(exact.numel())}
    return rows, check, task.describe()


def run(cfg: Config, out_dir: Path, logger) -> dict:
    summary_2d = _two_d(cfg, out_dir, logger)
    rows, check, described = _network(cfg, out_dir, logger)
    first, last = rows[0], rows[-1]
    sections = [
        ("2-D paths", f"`{cfg.function}` from {cfg.start}, {cfg.steps_2d} steps; exact 2×2 "
                      "Hessians (`indefinite_fraction`: share of points with λ_max·λ_min < 0).\n\n"
         + markdown_table(summary_2d)),
        ("Network", f"{described}, SGD lr {cfg.lr} momentum {cfg.momentum}, "
                    f"{cfg.train_steps} steps; "
                    f"full-train-set Hessian. λ_max {first['lambda_1']:.4g} → "
                    f"{last['lambda_1']:.4g}, "
                    f"λ_min {first['lambda_min']:.4g} → {last['lambda_min']:.4g} (saddle indicator "
                    f"{first['saddle']} → {last['saddle']}), trace {first['trace']:.4g} → "
                    f"{last['trace']:.4g}.\n\n" + markdown_table(rows)),
    ]
    if check:
        sections.append(("Oracle check at the final point",
                         "Against eigvalsh of the dense "
                         f"{check['parameters']}×{check['parameters']} "
                         f"Hessian: top-{cfg.top_k} max relative error "
                         f"{check['top_k_max_rel_error']:.2e}, "
                         f"λ_min relative error {check['lambda_min_rel_error']:.2e}, "
                         "Hutchinson trace "
                         f"off by {check['trace_error_in_std_errors']:.2f} standard errors.\n"))
    write_report(out_dir / "report.md", "Hessian along trajectories", sections)
    logger.log({"lambda_max_final": last["lambda_1"], "trace_final": last["trace"], **check},
               step=cfg.train_steps)
    return {"lambda_max_final": last["lambda_1"], "lambda_min_final": last["lambda_min"], **check}
