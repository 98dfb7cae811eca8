"""One Runge–Kutta step vs the cost of its gradient evaluations (target: RK4 ≤ 1.10×).

For the ~1M-parameter MLP at batch 256: time of one ``opt.step(closure)`` divided by
``stages`` × the time of one closure (zero_grad + forward + backward), measured side by side.
"""
from __future__ import annotations

import torch

import metaopt.optim as mo

from .common import batch, make_closure, mlp_1m, time_side_by_side


def run(args) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed)
    x, y = batch(g, device=args.device)
    candidates, stages = {}, {}
    for name, cls, n_stages in [("rk4", mo.RK4, 4), ("heun", mo.Heun, 2),
                                ("ralston", mo.Ralston, 2)]:
        model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
        opt = cls(model.parameters(), lr=1e-3)
        closure = make_closure(model, opt, x, y)
        candidates[name] = (lambda o=opt, c=closure: o.step(c))
        stages[name] = n_stages
    model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    plain = torch.optim.SGD(model.parameters(), lr=1e-3)
    candidates["gradient"] = make_closure(model, plain, x, y)
    times = time_side_by_side(candidates, rounds=args.rounds, device=args.device)
    n_params = sum(p.numel() for p in model.parameters())
    return [{"method": name, "params": n_params, "step_ms": 1e3 * times[name],
             "gradient_ms": 1e3 * times["gradient"], "gradient_evals": stages[name],
             "ratio": times[name] / (stages[name] * times["gradient"])}
            for name in stages]
