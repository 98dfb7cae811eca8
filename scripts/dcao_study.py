"""DCAO at the edge of stability: sharpness vs 2/η on full-batch load_digits (DCAO).

    python scripts/dcao_study.py [--steps 400] [--lr 0.5] [--loss mse|ce]
        [--csv results/dcao_study.csv]

A 64 → 64 → 10 tanh MLP trained full-batch (square loss as in Cohen et al. 2021, or cross-entropy;
all 1797 digits, standardised pixels) with a large learning rate, by SGD-momentum, Adam, DCAO (its
exponential schedule) and DCAO
(edge-of-stability rule). Every ``--measure-every`` steps the sharpness λ_max of the training loss
Hessian is measured by the same Lanczos solver DCAO uses (cold start, 30 HVPs), and compared with
the stability threshold of the step actually taken: heavy-ball momentum with effective step η and
momentum μ is stable on a quadratic iff λ < (2 + 2μ)/η (GD: 2/η, Cohen et al. 2021). Prints one
row per optimizer and writes the sharpness traces as CSV. Self-contained: no tasks/ package.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch
from torch import nn

import metaopt.optim as mo
from metaopt.rules.curvature import probe_curvature
from metaopt.rules.hvp import functional_hvp


def digits(device) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.to(device), torch.tensor(data.target).to(device)


def make_model(seed: int, device) -> nn.Module:
    torch.manual_seed(seed)  # nn.Linear's default init draws from the global generator
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(device)


def objective(name: str):
    """Cross-entropy, or Cohen et al.'s square loss ½‖f(x) − onehot(y)‖² averaged over the batch."""
    if name == "ce":
        return nn.functional.cross_entropy
    return lambda out, y: 0.5 * (out - nn.functional.one_hot(y, 10).to(out.dtype)).pow(2).sum(
        1).mean()


def sharpness(model: nn.Module, x, y, seed: int, criterion) -> float:
    """λ_max of the full-batch loss Hessian (top eigenvalue by magnitude, 30 Lanczos HVPs)."""
    params = [p.detach() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def loss_fn(ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return criterion(out, y)
    probe = probe_curvature(functional_hvp(loss_fn, params), params, k=1, max_iters=30, tol=1e-4,
                            generator=torch.Generator().manual_seed(seed))
    return float(probe.eigenvalues[0])


def effective_step(opt) -> tuple[float, float]:
    """(η, μ) the optimizer is applying now (DCAO after its schedule)."""
    group = opt.param_groups[0]
    if isinstance(opt, mo.DCAO):
        lr, momentum, _ = opt.effective_hyperparameters(group)
        return lr, momentum
    return group["lr"], group.get("momentum", 0.0)


def train(name: str, build, args, x, y, trace: list) -> dict:
    model = make_model(args.seed, x.device)
    opt = build(model.parameters())
    loss_fn = objective(args.loss)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    above, measured, peak, losses = 0, 0, 0.0, []
    for step in range(args.steps + 1):
        if step % args.measure_every == 0:
            lam = sharpness(model, x, y, args.seed + step, loss_fn)
            lr, momentum = effective_step(opt)
            threshold = (2 + 2 * momentum) / lr if lr > 0 else math.inf
            above += lam > threshold
            measured += 1
            peak = max(peak, lam)
            trace.append({"optimizer": name, "step": step, "sharpness": lam,
                          "two_over_lr": 2 / lr if lr > 0 else math.inf,
                          "threshold": threshold, "lr": lr, "momentum": momentum,
                          "loss": losses[-1] if losses else float("nan")})
        if step < args.steps:
            losses.append(float(opt.step(closure).detach()))
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    final = trace[-1]
    return {"optimizer": name, "final_loss": losses[-1], "min_loss": min(losses),
            "train_acc": accuracy, "finite": all(math.isfinite(v) for v in losses),
            "peak_sharpness": peak, "final_sharpness": final["sharpness"],
            "final_2/lr": final["two_over_lr"], "frac_above_threshold": above / measured}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.5, help="base lr of SGD-momentum and DCAO")
    parser.add_argument("--adam-lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--probe-every", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--measure-every", type=int, default=20)
    parser.add_argument("--loss", choices=["mse", "ce"], default="mse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--csv", type=Path, default=None, help="write the sharpness traces here")
    args = parser.parse_args(argv)
    x, y = digits(args.device)
    dcao = dict(lr=args.lr, momentum=args.momentum, probe_every=args.probe_every,
                lanczos_iters=20, k=5, alpha=args.alpha)
    runs = {
        f"SGD-momentum(lr={args.lr})":
            lambda ps: torch.optim.SGD(ps, lr=args.lr, momentum=args.momentum),
        f"Adam(lr={args.adam_lr})": lambda ps: torch.optim.Adam(ps, lr=args.adam_lr),
        "DCAO-exponential": lambda ps: mo.DCAO(ps, **dcao),
        "DCAO-edge_of_stability": lambda ps: mo.DCAO(ps, **dcao, schedule="edge_of_stability"),
    }
    trace, rows = [], []
    for name, build in runs.items():
        rows.append(train(name, build, args, x, y, trace))
    keys = list(rows[0])
    width = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print(f"full-batch load_digits MLP, {args.loss} loss, {args.steps} steps, base lr {args.lr}, "
          f"momentum {args.momentum}; sharpness = λ_max(H) by Lanczos")
    print("  ".join(k.ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(width[k]) for k in keys))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(trace[0]))
            writer.writeheader()
            writer.writerows(trace)
    return 0


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
