"""One Runge–Kutta step vs the cost of its gradient evaluations (target: RK4 ≤ 1.05×).

Time of one ``opt.step(closure)`` divided by ``stages`` × the time of one closure (zero_grad +
forward + backward), measured side by side (interleaved medians, ``common.time_side_by_side``;
wall clock: run it on an otherwise idle machine).

* ``mlp_1m``: the ~1M-parameter MLP at batch 256, where the step's cost beyond its closures is its
  passes over memory. Measured on one core of an otherwise idle 2-core Xeon VM (1-minute load
  0.9–1.0, two runs): RK4 1.12–1.13×, Heun 1.15–1.16×, Ralston 1.14–1.16×. A pass costs up to twice
  as much right after a closure as back to back (the closure evicts the parameters and slopes;
  ``--mode passes``, three runs under load, as shares of a closure: an in-place ``y += c·k`` 4–5% →
  5–7%, ``y = θ + c·k`` 4–5% → 7–9%, a copy 3% → 6%, a norm 1.5–2% → 3.4–4.3%), so each of RK4's
  passes is 1–2.5% of its four closures: five in-place adds (stage 1's point, the weighted sum's
  start and two folds, the final point; 7.6–8.8%), two stage points written from θ (4.9–5.1%), θ's
  snapshot (1.7–1.9%) and the two finiteness norms (1.8–2.1%): 16–18 of the 17–24 points the step
  cost in two instrumented runs, the rest Python and noise. Eight two-operand passes are the fewest
  that give RK4's three stage points, keep θ for a refused step and fold four slopes into θ_next
  (Heun, Ralston: four, and their two closures carry them): the schedule takes exactly those
  (``--mode passes`` times each kind of pass both ways). A version whose passes torch.compile
  (inductor) fused into one loop per stage was no faster (1.17–1.25× against 1.17–1.21×, side by
  side), nor was one that tiles the passes to keep each chunk in L2, so 1.05× is out of reach on
  this machine;
* ``digits_mlp``: the 64-64-10 tanh MLP on digits at batch 64 (4,810 parameters, 4 tensors),
  where it is the per-step dispatch and Python cost (more rounds: its step is ~100× shorter):
  RK4 1.18–1.19×, Heun 1.35–1.37×, Ralston 1.32–1.33× (the same runs).
"""
from __future__ import annotations

import statistics
import time

import torch

import metaopt.optim as mo

from .common import batch, make_closure, mlp_1m, synchronize, time_side_by_side

METHODS = [("rk4", mo.RK4, 4), ("heun", mo.Heun, 2), ("ralston", mo.Ralston, 2)]
SMALL_BATCH = 64
SMALL_ROUNDS_FACTOR = 10


def _digits_mlp(seed: int, device):
    """(module factory, closure factory) of the 64-64-10 tanh MLP on digits (garo.py's)."""
    import tasks

    task = tasks.get("mlp", datasets=["digits"], width=(64, 64), depth=(1, 1),
                     activations=("tanh",), batch_sizes=[SMALL_BATCH],
                     device=device).sample_seed(seed)
    data = task.train_batch(torch.Generator().manual_seed(seed))

    def closure_for(model, optimizer):
        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = task.module_loss(model, data)
            loss.backward()
            return loss
        return closure
    return task.module, closure_for


def _mlp_1m(seed: int, device):
    x, y = batch(torch.Generator().manual_seed(seed), device=device)
    return (lambda: mlp_1m(torch.Generator().manual_seed(seed), device=device),
            lambda model, optimizer: make_closure(model, optimizer, x, y))


def _rows(model_name, make_model, closure_for, rounds, args) -> list[dict]:
    candidates = {}
    for name, cls, _ in METHODS:
        model = make_model()
        opt = cls(model.parameters(), lr=1e-3)
        closure = closure_for(model, opt)
        candidates[name] = (lambda o=opt, c=closure: o.step(c))
    model = make_model()
    candidates["gradient"] = closure_for(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    times = time_side_by_side(candidates, rounds=rounds, device=args.device)
    n_params = sum(p.numel() for p in model.parameters())
    return [{"model": model_name, "method": name, "params": n_params,
             "step_ms": 1e3 * times[name], "gradient_ms": 1e3 * times["gradient"],
             "gradient_evals": stages, "ratio": times[name] / (stages * times["gradient"])}
            for name, _, stages in METHODS]


def _pass_rows(args) -> list[dict]:
    """``--mode passes``: each kind of pass over the 1M parameters, timed back to back (``hot``)
    and right after a closure (``after_closure``), as a share of that closure."""
    make_model, closure_for = _mlp_1m(args.seed, args.device)
    model = make_model()
    closure = closure_for(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    g = torch.Generator().manual_seed(args.seed)
    y, x, z = ([torch.randn(p.shape, generator=g).to(p) for p in model.parameters()]
               for _ in range(3))

    def out_of_place():
        for o, a, b in zip(y, x, z):
            torch.add(a, b, alpha=1e-3, out=o)
    passes = {"y += c*k": lambda: torch._foreach_add_(y, x, alpha=1e-3),
              "y = theta + c*k": out_of_place, "copy": lambda: torch._foreach_copy_(y, x),
              "norm": lambda: torch._foreach_norm(x)}
    clock = time.perf_counter
    samples = {(name, when): [] for name in passes for when in ("hot", "after_closure")}
    samples["closure"] = []
    for _ in range(args.rounds + 3):
        for name, fn in passes.items():
            fn()  # back to back: the pass's data was just touched
            synchronize(args.device)
            start = clock()
            fn()
            synchronize(args.device)
            samples[name, "hot"].append(clock() - start)
            start = clock()
            closure()
            synchronize(args.device)
            samples["closure"].append(clock() - start)
            start = clock()
            fn()
            synchronize(args.device)
            samples[name, "after_closure"].append(clock() - start)
    closure_s = statistics.median(samples.pop("closure"))
    return [{"model": "mlp_1m", "pass": name, "when": when,
             "ms": 1e3 * statistics.median(times), "closure_ms": 1e3 * closure_s,
             "share_of_closure": statistics.median(times) / closure_s}
            for (name, when), times in samples.items()]


def run(args) -> list[dict]:
    if args.mode == "passes":
        return _pass_rows(args)
    if args.mode is not None:
        raise ValueError(f"rk: unknown mode {args.mode!r}; choose passes (or none)")
    return (_rows("mlp_1m", *_mlp_1m(args.seed, args.device), args.rounds, args)
            + _rows("digits_mlp", *_digits_mlp(args.seed, args.device),
                    args.rounds * SMALL_ROUNDS_FACTOR, args))
