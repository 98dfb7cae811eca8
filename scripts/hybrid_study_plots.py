"""The figures of ``scripts/hybrid_study.py`` (matplotlib, Agg): per test function, the
trajectories from starts spread over the lattice drawn on the function's contour, one panel per
method, its global minimizers starred (``<name>_trajectories.png``), and for the hybrids the
fraction of starts in ODE mode at each iteration (``<name>_modes.png``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasks.test_functions import TEST_FUNCTIONS_2D


def plot_function(name, paths, modes, out: Path, every: int = 41):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fn = TEST_FUNCTIONS_2D[name]
    low, high = fn.init_box
    axis = torch.linspace(low, high, 200, dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    zs = fn.function(torch.stack([xs, ys], -1))
    fig, axes = plt.subplots(1, len(paths), figsize=(3.2 * len(paths), 3.2), squeeze=False)
    for ax, (method, path) in zip(axes[0], paths.items()):
        ax.contour(xs, ys, zs - zs.min(), levels=25, linewidths=0.4, cmap="viridis")
        for r in range(0, path.shape[1], every):
            p = path[:, r].clamp(low, high)
            ax.plot(p[:, 0], p[:, 1], lw=0.7)
            ax.plot(p[-1, 0], p[-1, 1], "k.", ms=3)
        for m in fn.minimizers:
            ax.plot(*m, "r*", ms=8)
        ax.set_title(method, fontsize=8)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
    fig.suptitle(f"{name}: trajectories from every {every}th start (spread over the lattice)")
    fig.tight_layout()
    fig.savefig(out / f"{name}_trajectories.png", dpi=110)
    plt.close(fig)
    if modes:
        fig, ax = plt.subplots(figsize=(5, 3))
        for method, m in modes.items():
            ax.plot(m.double().mean(1), label=method)
        ax.set_xlabel("iteration")
        ax.set_ylabel("fraction of starts in ODE mode")
        ax.set_title(f"{name}: mode over time")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}_modes.png", dpi=110)
        plt.close(fig)
