"""DCAO: amortised step vs momentum SGD, HVP cost, and Lanczos accuracy per HVP budget.

1. ``amortised``: DCAO at its defaults vs ``torch.optim.SGD(momentum=0.9, foreach=True)`` on the
   ~1M-parameter MLP at batch 256: a step between probes and a probe step (cold start, so an
   upper bound) are timed side by side with the SGD step; one probe period costs
   ((probe_every − 1)·t_step + t_probe) / probe_every per step. Target ratio ≤ 1.10.
2. ``hvp``: one double-backward HVP, and one closure run with the gradient graph kept, each in
   gradient-equivalents (÷ one plain closure: zero_grad + forward + backward).
3. ``lanczos-N``: relative error max_i |θ_i − λ_i| / |λ_i| of the top-5 Ritz values after N HVPs
   against ``torch.linalg.eigvalsh`` of the full float64 Hessian of a 918-parameter MLP.
"""
from __future__ import annotations

import torch
from torch import nn

import metaopt.optim as mo
from metaopt.rules.hvp import CreateGraphBackward, dense_hessian, functional_hvp, gradient_hvp
from metaopt.rules.lanczos import lanczos

from .common import batch, make_closure, mlp_1m, time_side_by_side


def small_mlp_problem(seed: int = 0):
    """12 → 48 → 6 tanh MLP with cross-entropy on 64 random points (918 parameters, float64)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(48, 12), (48,), (6, 48), (6,)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) / s[-1] ** 0.5 for s in shapes]
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (64,), generator=g)

    def loss_fn(ps):
        w1, b1, w2, b2 = ps
        return nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)
    return params, loss_fn



def accuracy_rows(seed: int) -> list[dict]:
    params, loss_fn = small_mlp_problem(seed)
    exact = torch.linalg.eigvalsh(dense_hessian(loss_fn, params))
    top = exact[torch.argsort(exact.abs(), descending=True)][:5]
    rows = []
    for budget in (10, 20, 30, 40):
        result = lanczos(functional_hvp(loss_fn, params), params, k=5, max_iters=budget, tol=0.0,
                         generator=torch.Generator().manual_seed(seed))
        err = ((result.eigenvalues - top).abs() / top.abs())
        rows.append({"method": f"lanczos-{budget}", "params": sum(p.numel() for p in params),
                     "hvps": result.iterations, "rel_err_top1": float(err[0]),
                     "rel_err_top5": float(err.max())})
    return rows


def run(args) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed)
    x, y = batch(g, device=args.device)

    dcao_model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    dcao = mo.DCAO(dcao_model.parameters(), lr=1e-3)
    dcao_closure = make_closure(dcao_model, dcao, x, y)
    sgd_model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    sgd_closure = make_closure(sgd_model, sgd, x, y)
    period = dcao.probe_every

    def dcao_step():  # a step between probes
        dcao.steps_taken = 1
        dcao.step(dcao_closure)

    def probe_step():  # a probe step from a cold (random) start: an upper bound on its cost
        dcao.steps_taken = 0
        for p in dcao_model.parameters():
            dcao.state[p].pop("curvature_vector", None)
        dcao.step(dcao_closure)

    times = time_side_by_side({"dcao": dcao_step, "probe": probe_step,
                               "sgd": lambda: sgd.step(sgd_closure)},
                              rounds=args.rounds, device=args.device)
    # Steps of one probe period: (period − 1) plain steps and one probe step.
    amortised = ((period - 1) * times["dcao"] + times["probe"]) / period
    n_params = sum(p.numel() for p in dcao_model.parameters())
    nan = float("nan")
    rows = [{"method": "dcao step (no probe)", "params": n_params, "hvps": 0,
             "dcao_ms": 1e3 * times["dcao"], "sgd_ms": 1e3 * times["sgd"],
             "ratio": times["dcao"] / times["sgd"], "rel_err_top5": nan},
            {"method": "dcao probe step", "params": n_params,
             "hvps": dcao.last_curvature.hvp_count, "dcao_ms": 1e3 * times["probe"],
             "sgd_ms": 1e3 * times["sgd"], "ratio": times["probe"] / times["sgd"],
             "rel_err_top5": nan},
            {"method": f"dcao amortised (probe_every={period})", "params": n_params,
             "hvps": dcao.last_curvature.hvp_count, "dcao_ms": 1e3 * amortised,
             "sgd_ms": 1e3 * times["sgd"], "ratio": amortised / times["sgd"],
             "rel_err_top5": nan}]

    # HVP cost: graph built once per probe, then one backward through it per product.
    params = list(sgd_model.parameters())
    with torch.enable_grad(), CreateGraphBackward():
        sgd_closure()
    hvp = gradient_hvp([p.grad for p in params], params)
    vector = [torch.randn(p.shape, generator=g).to(p) for p in params]
    plain_model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    plain = make_closure(plain_model, torch.optim.SGD(plain_model.parameters(), lr=0.0), x, y)

    def graph_closure():
        with torch.enable_grad(), CreateGraphBackward():
            dcao_closure()
        for p in dcao_model.parameters():
            p.grad = None
    times = time_side_by_side({"hvp": lambda: hvp(vector), "graph_closure": graph_closure,
                               "gradient": plain}, rounds=args.rounds, device=args.device)
    for p in params:
        p.grad = None
    for name in ("hvp", "graph_closure"):
        rows.append({"method": name, "params": n_params, "hvps": 1,
                     "dcao_ms": 1e3 * times[name], "sgd_ms": 1e3 * times["gradient"],
                     "ratio": times[name] / times["gradient"], "rel_err_top5": float("nan")})
    for row in accuracy_rows(args.seed):
        rows.append({"method": row["method"], "params": row["params"], "hvps": row["hvps"],
                     "dcao_ms": float("nan"), "sgd_ms": float("nan"),
                     "ratio": float("nan"), "rel_err_top5": row["rel_err_top5"]})
    return rows
