"""The runs of ``scripts/hybrid_study.py`` over a ``grid × grid`` lattice of starts, and what is
measured on them.

All starts of a method run at once: ``HybridRule(batched=True)`` and the GD rules treat the
leading dimension as independent runs, every start's gradient of the test function f by one
autograd pass over the sum of the runs' values. From the gap f(θ_t) − f* per start: the fraction
ending in the global basin (final gap below ``BASIN_GAP``), the fraction reaching the target gap,
the median iterations and gradient evaluations to it, the median final gap. The baselines (Adam,
SGD-momentum) get the lr with the lowest mean final gap on a log grid widened a decade at a time
until the best is interior (``tune``). ``runtime_cost``: ms per iteration and optimizer-state
floats per parameter of a ``torch.optim`` optimizer on one start.
"""
from __future__ import annotations

import math
import time

import torch

from metaopt.hybrid.hyper import HybridHyper
from metaopt.hybrid.optimizer import make_gd_rule, make_ode_rule
from metaopt.hybrid.rule import HybridRule
from metaopt.rules.adam import AdamRule
from metaopt.rules.hyper import GDHyper, ODEHyper
from metaopt.rules.sgd import SGDRule
from scripts.hybrid_study_config import HybridSettings
from tasks.test_functions import TEST_FUNCTIONS_2D

#: final gap f − f* below which a start ended in the global basin: half the gap of the best
#: non-global local minimum (Rastrigin ≈ 0.99, Ackley ≈ 2.6, six-hump camel 0.816 (−0.2155),
#: Styblinski–Tang 14.1 (−64.2); Himmelblau's four minima are all global: its saddles/maximum
#: have gaps ≥ 13)
BASIN_GAP = {"rastrigin": 0.5, "ackley": 1.0, "himmelblau": 0.5, "six_hump_camel": 0.4,
             "styblinski_tang": 7.0}


# -- batched runs over the grid of starts ---------------------------------------------------------
def starts(name: str, grid: int) -> torch.Tensor:
    low, high = TEST_FUNCTIONS_2D[name].init_box
    axis = torch.linspace(low, high, grid + 2, dtype=torch.float64)[1:-1]  # interior lattice
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


def batched_grad_fn(name: str):
    f = TEST_FUNCTIONS_2D[name].function  # (R, 2) -> (R,): written over the last dimension

    def grad_fn(points):
        (x,) = points
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            values = f(x)
            (g,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), [g]
    return grad_fn


def run_hybrid(name, x0, policy, h: HybridSettings, steps):
    rule = HybridRule(make_gd_rule(h.gd), make_ode_rule(h.ode), min_dwell=h.min_dwell,
                      window=h.window, ode_cfl=h.ode_cfl, batched=True)
    grad_fn = batched_grad_fn(name)
    hyper = HybridHyper(gd=GDHyper(h.lr, h.momentum), ode=ODEHyper(h.lr * h.ode_scale),
                        policy=policy, stability_lr=h.lr)
    params, state = [x0.clone()], rule.init([x0])
    path, evals, modes = [x0.clone()], [], []
    with torch.no_grad():
        for _ in range(steps):
            params, state = rule.step(params, grad_fn, state, hyper)
            path.append(params[0].clone())
            evals.append(state["evaluations"].clone())
            modes.append(state["mode"].clone())
    return torch.stack(path), torch.stack(evals), torch.stack(modes)


def run_baseline(name, x0, kind, lr, steps):
    rule = AdamRule() if kind == "adam" else SGDRule()
    hyper = GDHyper(lr) if kind == "adam" else GDHyper(lr, momentum=0.9)
    grad_fn = batched_grad_fn(name)
    params, state, path = [x0.clone()], rule.init([x0]), [x0.clone()]
    with torch.no_grad():
        for _ in range(steps):
            params, state = rule.step(params, grad_fn, state, hyper)
            path.append(torch.nan_to_num(params[0], nan=1e6).clamp(-1e6, 1e6))
    evals = torch.arange(1, steps + 1, dtype=torch.float64)[:, None].expand(-1, x0.shape[0])
    return torch.stack(path), evals, None


def gaps(name, path):
    fn = TEST_FUNCTIONS_2D[name]
    values = fn.function(path)
    return torch.nan_to_num(values - fn.minimum_value, nan=math.inf)


def metrics(name, path, evals, target) -> dict:
    gap = gaps(name, path)  # (steps + 1, R)
    final = gap[-1]
    reached = gap[1:] < target
    hit = reached.any(0)
    first = reached.float().argmax(0)
    iters = (first + 1)[hit].double()
    ev = evals.gather(0, first[None])[0][hit] if hit.any() else torch.empty(0)
    def med(t):
        return float(t.median()) if t.numel() else math.nan

    return {"global_basin": float((final < BASIN_GAP[name]).double().mean()),
            "reached_target": float(hit.double().mean()), "iters_to_target": med(iters),
            "evals_to_target": med(ev.double()), "final_gap_median": float(final.median()),
            "evals_total_mean": float(evals[-1].double().mean())}


def tune(name, x0, kind, cfg) -> float:
    """lr with the lowest mean final gap on a log grid widened until the best is interior."""
    per = cfg.tuning_per_decade
    lo, hi = math.log10(cfg.tuning_low), math.log10(cfg.tuning_high)
    scores: dict[float, float] = {}
    for _ in range(8):
        n = int(round((hi - lo) * per)) + 1
        for e in torch.linspace(lo, hi, n).tolist():
            lr = float(f"{10 ** e:.4g}")
            if lr not in scores:
                path, _, _ = run_baseline(name, x0, kind, lr, cfg.steps)
                final = gaps(name, path[-1:])[0]
                scores[lr] = float(final.clamp(max=1e6).mean())
        best = min(scores, key=scores.get)
        ordered = sorted(scores)
        if best == ordered[0]:
            lo -= 1
        elif best == ordered[-1]:
            hi += 1
        else:
            return best
    return best


# -- runtime cost on one start ---------------------------------------------------------------------
def runtime_cost(name, factory, steps) -> tuple[float, float]:
    """(ms per iteration, optimizer-state floats per parameter) of a torch.optim optimizer."""
    fn = TEST_FUNCTIONS_2D[name].function
    x = starts(name, 3)[4].clone().float().requires_grad_()
    opt = factory([x])

    def closure():
        opt.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss
    started = time.perf_counter()
    for _ in range(steps):
        opt.step(closure)
    ms = 1e3 * (time.perf_counter() - started) / steps
    floats = sum(v.numel() for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor))
    return ms, floats / x.numel()

