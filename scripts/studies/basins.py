"""Basins of attraction (GDSearch): a grid of starts × optimizers → which known
minimum each start reaches, drawn as maps; the grid advances as one batched tensor program."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import tasks
from metaopt.analysis.basins import DIVERGED, basin_map, find_minima

from ._optimizers import OptimizerEntry, batched, check_entries
from .common import markdown_table, save_figure, write_csv, write_report

NAME = "basins"
DESCRIPTION = "basin-of-attraction maps: which minimum each grid start reaches, per optimizer"
SMOKE = ["resolution=12", "steps=60", "functions=[himmelblau]", "local_minima=false"]


def _default_optimizers():
    return [OptimizerEntry("gd", "sgd", {"lr": 0.01}),
            OptimizerEntry("momentum", "sgd", {"lr": 0.002, "momentum": 0.9}),
            OptimizerEntry("adam", "adam", {"lr": 0.05}),
            OptimizerEntry("rmsprop", "rmsprop", {"lr": 0.01}),
            OptimizerEntry("rk4", "rk4", {"lr": 0.01})]


@dataclass
class Config:
    functions: list[str] = field(default_factory=lambda: ["himmelblau", "six_hump_camel"])
    resolution: int = 100
    steps: int = 1000
    tolerance: float = 1e-2
    optimizers: list[OptimizerEntry] = field(default_factory=_default_optimizers)
    reference: str = "gd"   # the map the others are compared to (agreement = same label)
    local_minima: bool = True  # also label the local minima found by find_minima (camel has 4)

    def __post_init__(self):
        if self.resolution < 2:
            raise ValueError(f"resolution: must be >= 2, got {self.resolution}")
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance: must be > 0, got {self.tolerance}")
        check_entries("optimizers", self.optimizers, batched=True)
        if self.reference not in [e.label for e in self.optimizers]:
            raise ValueError(f"reference: {self.reference!r} is not an optimizer label")
        for name in self.functions:
            spec = getattr(tasks.get(name), "spec", None)
            if spec is None or not spec.minimizers:
                raise ValueError(f"functions: {name!r} is not a 2-D test function "
                                 "with known minima")


def _draw_maps(result, labels, n_min, n_known):
    # diverged, unconverged, minima
    colours = ["#d9d9d9", "#444444"] + [f"C{i}" for i in range(n_min)]
    cmap = ListedColormap(colours)
    extent = [float(result.xs[0]), float(result.xs[-1]), float(result.ys[0]), float(result.ys[-1])]

    def draw(*axes):
        for ax, name in zip(axes, labels):
            image = (result.labels[name] - DIVERGED).numpy()  # DIVERGED→0, UNCONVERGED→1, min i→i+2
            ax.imshow(image, origin="lower", extent=extent, cmap=cmap, vmin=0,
                      vmax=len(colours) - 1, interpolation="nearest", aspect="auto")
            m = result.minimizers.numpy()
            ax.plot(m[:, 0], m[:, 1], "*", color="gold", mec="k", ms=11, label="_")
            ax.set_title(name)
            ax.set_xlabel("x₀")
            ax.set_ylabel("y₀")
        handles = [Patch(color=f"C{i}", label=f"min {i}: ({m[i, 0]:.2f}, {m[i, 1]:.2f})"
                         + ("" if i < n_known else " local")) for i in range(n_min)]
        handles += [Patch(color=colours[1], label="not at a known minimum"),
                    Patch(color=colours[0], label="diverged")]
        axes[-1].legend(handles=handles, fontsize="x-small", loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return draw


def _draw_arrival(result, labels):
    extent = [float(result.xs[0]), float(result.xs[-1]), float(result.ys[0]), float(result.ys[-1])]

    def draw(*axes):
        for ax, name in zip(axes, labels):
            steps = result.arrival[name].double()
            steps = torch.where(steps >= 0, steps + 1, torch.nan).log10().numpy()
            im = ax.imshow(steps, origin="lower", extent=extent, cmap="viridis", aspect="auto")
            ax.figure.colorbar(im, ax=ax, label="log₁₀(1 + steps to a minimum)")
            ax.set_title(name)
            ax.set_xlabel("x₀")
            ax.set_ylabel("y₀")
    return draw


def run(cfg: Config, out_dir: Path, logger) -> dict:
    optimizers = batched(cfg.optimizers)
    labels = list(optimizers)
    rows, results, findings = [], {}, []
    for function in cfg.functions:
        spec = tasks.get(function).spec
        lo, hi = spec.init_box
        minima = (find_minima(spec.function, (lo, hi, lo, hi), known=spec.minimizers)
                  if cfg.local_minima else list(spec.minimizers))
        result = basin_map(spec.function, minima, optimizers, bounds=(lo, hi, lo, hi),
                           resolution=cfg.resolution, steps=cfg.steps, tolerance=cfg.tolerance)
        for name in labels:
            arrival = result.arrival[name]
            reached = arrival[arrival >= 0].double()
            row = {"function": function, "optimizer": name, **result.fractions(name),
                   "agreement_with_" + cfg.reference: result.agreement(name, cfg.reference),
                   "median_steps_to_min": (float(reached.median()) if reached.numel()
                                           else float("nan"))}
            rows.append(row)
        grid = [{"function": function, "optimizer": name, "x0": float(x), "y0": float(y),
                 "label": int(result.labels[name][i, j]),
                 "arrival": int(result.arrival[name][i, j])}
                for name in labels for i, y in enumerate(result.ys)
                for j, x in enumerate(result.xs)]
        write_csv(out_dir / f"basins_{function}.csv", grid)
        n_min = len(minima)
        save_figure(out_dir / f"basins_{function}.png",
                    _draw_maps(result, labels, n_min, len(spec.minimizers)),
                    ncols=len(labels), size=(3.9, 3.4), logger=logger,
                    title=f"{function}: basin of attraction of each start ({cfg.steps} steps)")
        save_figure(out_dir / f"arrival_{function}.png", _draw_arrival(result, labels),
                    ncols=len(labels), size=(4.2, 3.4), logger=logger,
                    title=f"{function}: steps until within {cfg.tolerance} of a minimum")
        ours = [r for r in rows if r["function"] == function]
        least = min(ours, key=lambda r: r["agreement_with_" + cfg.reference])
        findings.append(
            f"- `{function}`: " + "; ".join(
                f"{r['optimizer']} " + "/".join(f"{r[f'min{i}']:.0%}" for i in range(n_min))
                + (f", {r['unconverged']:.1%} elsewhere" if r["unconverged"] else "")
                + (f", {r['diverged']:.1%} diverged" if r["diverged"] else "") for r in ours)
            + f". Least like {cfg.reference}'s map: {least['optimizer']} "
              f"({least['agreement_with_' + cfg.reference]:.0%} of starts agree).")
        for r in ours:
            results[f"{function}/{r['optimizer']}/agreement"] = r["agreement_with_" + cfg.reference]
            logger.log({f"{function}/{r['optimizer']}/diverged": r["diverged"],
                        f"{function}/{r['optimizer']}/agreement":
                            r["agreement_with_" + cfg.reference]},
                       step=0)
    most = max(sum(k.startswith("min") and k[3:].isdigit() for k in r) for r in rows)
    columns = ["function", "optimizer", *(f"min{i}" for i in range(most)), "unconverged",
               "diverged", "agreement_with_" + cfg.reference, "median_steps_to_min"]
    write_csv(out_dir / "basin_fractions.csv", rows, columns)
    write_report(out_dir / "report.md", "Basins of attraction", [
        ("Setup", f"{cfg.resolution}×{cfg.resolution} starts over each function's customary box, "
                  f"{cfg.steps} steps, tolerance {cfg.tolerance}; optimizers: "
                  + ", ".join(f"{e.label} ({e.name} {dict(e.options)})" for e in cfg.optimizers)
                  + ". The whole grid of one optimizer advances as one batched tensor program "
                  "(`metaopt.analysis.basins`).\n"),
        ("Shares of the grid per minimum (min0/min1/…)",
         "Global minima first, then local ones found by `find_minima` (gradient descent + Newton, "
         "positive-definite Hessian).\n\n" + "\n".join(findings) + "\n"),
        ("Table", markdown_table(rows, columns)),
    ])
    results["maps"] = len(cfg.functions) * len(labels)
    return results
