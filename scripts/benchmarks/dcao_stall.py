"""DCAO on a sharp problem: DCAO's curvature schedule alone vs the stall guard.

Rosenbrock f(x, y) = (1 − x)² + 100 (y − x²)² from (−1.5, 2) (f = 12.5, top Hessian eigenvalue
ρ ≈ 2,092), float64, DCAO at its defaults (lr 0.01, momentum 0.9, probe_every 1000, α = 0.01)
with ``stall_ratio=0`` (DCAO's η = η₀e^{−αρ} ≈ 8e-12: frozen) and with the default
guard (η ≥ min(0.01·η₀, 0.9·2/ρ), re-probe every 10 steps while it holds). Both runs in one process,
side by side: loss after N steps, distance to the minimiser (1, 1), probes taken, last η.

    python scripts/benchmark.py dcao_stall
"""
from __future__ import annotations

import torch

import metaopt.optim as mo

CHECKPOINTS = (1_000, 5_000, 20_000)


def rosenbrock(v: torch.Tensor) -> torch.Tensor:
    return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2


def trajectory(stall_ratio: float, steps: int = CHECKPOINTS[-1]) -> dict:
    v = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = mo.DCAO([v], stall_ratio=stall_ratio)

    def closure():
        opt.zero_grad()
        loss = rosenbrock(v)
        loss.backward()
        return loss

    row = {"schedule": "seed (r=0)" if stall_ratio == 0 else
           f"stall guard (r={stall_ratio:g})", "loss_0": float(rosenbrock(v.detach()))}
    for step in range(1, steps + 1):
        opt.step(closure)
        if step in CHECKPOINTS:
            row[f"loss_{step}"] = float(rosenbrock(v.detach()))
    row["dist_to_min"] = float((v.detach() - 1).norm())
    row["probes"] = len(opt.history)
    row["rho_first"] = opt.history[0]["spectral_radius"]
    row["last_lr"] = opt.effective_hyperparameters(opt.param_groups[0])[0]
    return row


def run(args=None) -> list[dict]:
    return [trajectory(0.0), trajectory(0.01)]


if __name__ == "__main__":
    for r in run():
        print(r)
