"""A full GARO training step vs torch.optim.SGD(momentum=0.9, foreach=True) (issue: ≤ 1.10×).

For the ~1M-parameter MLP at batch 256: zero_grad + forward + backward + ``opt.step()``, timed
side by side for GARO (global controller; ``sgd`` and ``adam`` directions) and for SGD. GARO's
extra work per step is three fused norms (gradient, parameters, update), a 32-unit GRU step on a
1×16 input, one host sync for the non-finite-gradient check, and copying the new parameters in.
"""
from __future__ import annotations

import torch

import metaopt.optim as mo

from .common import batch, make_closure, mlp_1m, time_side_by_side


def run(args) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed)
    x, y = batch(g, device=args.device)
    candidates = {}
    builders = {
        "sgd_momentum_foreach": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9,
                                                            foreach=True),
        "garo_sgd": lambda ps: mo.GARO(ps),
        "garo_adam": lambda ps: mo.GARO(ps, direction="adam"),
    }
    n_params = 0
    for name, build in builders.items():
        model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
        n_params = sum(p.numel() for p in model.parameters())
        opt = build(model.parameters())
        closure = make_closure(model, opt, x, y)

        def train_step(o=opt, c=closure):
            c()  # zero_grad, forward, backward
            o.step()
        candidates[name] = train_step
    times = time_side_by_side(candidates, rounds=args.rounds, device=args.device)
    base = times["sgd_momentum_foreach"]
    return [{"optimizer": name, "params": n_params, "step_ms": 1e3 * t,
             "sgd_ms": 1e3 * base, "ratio": t / base} for name, t in times.items()]
