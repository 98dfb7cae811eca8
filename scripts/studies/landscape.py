"""Loss landscapes around the solutions of different optimizers (the GDSearch question "does
SGD+momentum find flatter minima than AdamW?"): 1-D interpolation init → final and between the two
solutions, 2-D filter-normalised random planes (Li et al. 2018) around each final point, each
trajectory on its PCA plane, and the sharpness of each final point (λ_max and the loss increase on
an ε-sphere) next to its generalization gap. An MLP on digits, same init and minibatches."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metaopt.analysis.landscape import (
    interpolate,
    loss_plane,
    pca_plane,
    project_onto_plane,
    random_plane,
    sharpness,
)

from ._network import digits_mlp, functional, train
from ._optimizers import OptimizerEntry, check_entries, factories
from .common import markdown_table, save_figure, write_csv, write_report

NAME = "landscape"
DESCRIPTION = "loss landscapes, trajectories on a plane and sharpness of final points"
SMOKE = ["steps=8", "snapshot_every=4", "width=4", "resolution=5", "interpolation_points=5",
         "sharpness_samples=3", "lanczos_iters=8"]


def _default_optimizers():
    return [OptimizerEntry("sgd_momentum", "sgd", {"lr": 0.05, "momentum": 0.9}),
            OptimizerEntry("adamw", "adamw", {"lr": 0.01, "weight_decay": 0.01})]


@dataclass
class Config:
    width: int = 16
    depth: int = 1
    activation: str = "tanh"
    batch_size: int = 64
    seed: int = 0
    steps: int = 400
    snapshot_every: int = 10
    optimizers: list[OptimizerEntry] = field(default_factory=_default_optimizers)
    interpolation_points: int = 41
    resolution: int = 21          # plane grid per axis
    span: float = 1.0             # plane half-width in filter-normalised units
    epsilon: float = 0.05         # sharpness sphere radius, relative to ‖θ‖
    sharpness_samples: int = 50
    lanczos_iters: int = 60

    def __post_init__(self):
        for key in ("width", "depth", "batch_size", "steps", "snapshot_every",
                    "sharpness_samples", "lanczos_iters"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("interpolation_points", "resolution"):
            if getattr(self, key) < 3:
                raise ValueError(f"{key}: must be >= 3, got {getattr(self, key)}")
        for key in ("span", "epsilon"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        check_entries("optimizers", self.optimizers, batched=False)


def _contour(ax, surface, title):
    z = np.log10(surface.losses.clamp_min(1e-12).numpy())
    cs = ax.contourf(surface.alphas.numpy(), surface.betas.numpy(), z, levels=20, cmap="viridis")
    ax.figure.colorbar(cs, ax=ax, label="log₁₀ train loss")
    ax.plot(0, 0, "r*", ms=10, label="final point")
    ax.set_title(title)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.legend(fontsize="x-small", loc="upper right")


def run(cfg: Config, out_dir: Path, logger) -> dict:
    task = digits_mlp(cfg.width, cfg.depth, cfg.activation, cfg.batch_size, cfg.seed)
    f_train, f_test = functional(task, "train"), functional(task, "test")
    trained = {name: train(task, factory, cfg.steps, cfg.seed, cfg.snapshot_every)[0]
               for name, factory in factories(cfg.optimizers).items()}
    names = list(trained)
    init = trained[names[0]][0][1]
    alphas = torch.linspace(-0.5, 1.5, cfg.interpolation_points, dtype=torch.float64)
    curves = {f"init → {n}": interpolate(f_train, init, trained[n][-1][1], alphas) for n in names}
    if len(names) > 1:
        a, b = names[0], names[1]
        curves[f"{a} → {b}"] = interpolate(f_train, trained[a][-1][1], trained[b][-1][1], alphas)
    write_csv(out_dir / "interpolation.csv", [{"path": k, "alpha": float(x),
                                               "train_loss": float(y)}
                                              for k, v in curves.items()
                                              for x, y in zip(alphas, v)])

    def interp_plot(ax):
        for k, v in curves.items():
            ax.plot(alphas.numpy(), v.numpy(), label=k)
        ax.axvline(0, color="k", lw=0.5, label="_")
        ax.axvline(1, color="k", lw=0.5, label="_")
        ax.set_yscale("log")
        ax.set_xlabel("α  (θ = (1 − α)·θ_a + α·θ_b)")
        ax.set_ylabel("train loss")
        ax.legend(fontsize="small")
    save_figure(out_dir / "interpolation.png", interp_plot, logger=logger,
                title="1-D linear interpolation")

    grid = torch.linspace(-cfg.span, cfg.span, cfg.resolution, dtype=torch.float64)
    surfaces, pca, summary = {}, {}, []
    for _i, name in enumerate(names):
        final = trained[name][-1][1]
        d1, d2 = random_plane(final, torch.Generator().manual_seed(cfg.seed + 100))
        surfaces[name] = loss_plane(f_train, final, d1, d2, grid, grid)
        snapshots = [p for _, p in trained[name]]
        p1, p2, explained = pca_plane(snapshots, final)
        proj = project_onto_plane(snapshots, final, p1, p2)
        extent = float(proj.coords.abs().max()) * 1.2
        axis = torch.linspace(-extent, extent, cfg.resolution, dtype=torch.float64)
        pca[name] = (loss_plane(f_train, final, p1, p2, axis, axis), proj, explained)
        sharp = sharpness(f_train, final, cfg.epsilon, samples=cfg.sharpness_samples,
                          relative=True, generator=torch.Generator().manual_seed(cfg.seed),
                          max_iters=cfg.lanczos_iters)
        train_loss, test_loss = float(f_train(final)), float(f_test(final))
        summary.append({"optimizer": name, "train_loss": train_loss, "test_loss": test_loss,
                        "generalization_gap": test_loss - train_loss,
                        "lambda_max": sharp.top_eigenvalue,
                        "epsilon_max_increase": sharp.max_increase,
                        "epsilon_mean_increase": sharp.mean_increase,
                        "epsilon_radius": sharp.radius,
                        "plane_loss_at_span_mean": float(torch.cat([
                            surfaces[name].losses[[0, -1]].reshape(-1),
                            surfaces[name].losses[:, [0, -1]].reshape(-1)]).mean()),
                        "pca_explained": float(explained.sum()),
                        "weight_norm": float(torch.cat([p.reshape(-1) for p in final]).norm())})
        write_csv(out_dir / f"plane_{name}.csv", [{"a": float(x), "b": float(y),
                                                    "train_loss": float(v)}
                                                   for j, y in enumerate(grid)
                                                   for k, x in enumerate(grid)
                                                   for v in [surfaces[name].losses[j, k]]])
    write_csv(out_dir / "sharpness.csv", summary)

    save_figure(out_dir / "planes.png",
                lambda *axes: [_contour(ax, surfaces[n], f"{n}: filter-normalised plane")
                               for ax, n in zip(axes, names)], ncols=len(names), logger=logger,
                title="train loss around each final point (same random seed for the directions)")

    def pca_draw(*axes):
        for ax, n in zip(axes, names):
            surface, proj, explained = pca[n]
            _contour(ax, surface, f"{n}: PCA plane ({float(explained.sum()):.0%} of the path)")
            c = proj.coords.numpy()
            ax.plot(c[:, 0], c[:, 1], "w.-", lw=1, ms=3, label="trajectory")
            ax.plot(c[0, 0], c[0, 1], "wo", ms=6, label="init")
            ax.legend(fontsize="x-small", loc="upper right")
    save_figure(out_dir / "trajectory_pca.png", pca_draw, ncols=len(names), logger=logger,
                title="trajectories projected on their top-2 principal directions")

    lines = [f"- {r['optimizer']}: train {r['train_loss']:.4g}, test {r['test_loss']:.4g}, gap "
             f"{r['generalization_gap']:.4g}; λ_max {r['lambda_max']:.4g}; loss increase on the "
             f"ε = {cfg.epsilon}·‖θ‖ sphere max {r['epsilon_max_increase']:.4g}, mean "
             f"{r['epsilon_mean_increase']:.4g}; ‖θ‖ {r['weight_norm']:.4g}" for r in summary]
    flattest = min(summary, key=lambda r: r["lambda_max"])
    smallest_gap = min(summary, key=lambda r: r["generalization_gap"])
    barrier = ""
    if len(names) > 1:
        v = curves[f"{names[0]} → {names[1]}"]
        i0, i1 = int((alphas - 0).abs().argmin()), int((alphas - 1).abs().argmin())
        peak = float(v[i0:i1 + 1].max())
        barrier = (f"On the straight line from the {names[0]} solution to the {names[1]} one the "
                   f"train loss peaks at {peak:.4g} "
                   f"(ends {float(v[i0]):.4g} / {float(v[i1]):.4g}): "
                   f"a barrier of {peak - max(float(v[i0]), float(v[i1])):.4g}.\n")
    write_report(out_dir / "report.md", "Loss landscapes and sharpness", [
        ("Setup", f"{task.describe()}, {cfg.steps} steps from the same initialisation and "
                  f"minibatches: " + ", ".join(f"{e.label} ({e.name} {dict(e.options)})"
                                                for e in cfg.optimizers) + ".\n"),
        ("Sharp vs flat", "\n".join(lines) + f"\n\nFlattest by λ_max: "
         f"{flattest['optimizer']}; smallest generalization gap: {smallest_gap['optimizer']}. "
         "λ_max is not scale-invariant (Dinh et al. 2017): compare it with the weight norms.\n\n"
         + barrier),
        ("Table", markdown_table(summary)),
    ])
    for r in summary:
        logger.log({f"{r['optimizer']}/{k}": v for k, v in r.items() if k != "optimizer"},
                   step=cfg.steps)
    return {f"{r['optimizer']}/lambda_max": r["lambda_max"] for r in summary}
