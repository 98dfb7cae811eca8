"""One Runge–Kutta step vs the cost of its gradient evaluations (target: RK4 ≤ 1.05×).

Time of one ``opt.step(closure)`` divided by ``stages`` × the time of one closure (zero_grad +
forward + backward), measured side by side (interleaved medians, ``common.time_side_by_side``):

* ``mlp_1m``: the ~1M-parameter MLP at batch 256, where the step's cost beyond its closures is
  its passes over memory (θ's snapshot, the stage points, the weighted sum of slopes, the
  finiteness reads). Each pass costs about 4–6% of a closure on one CPU core, so RK4's three
  stage points and final point alone are ~4% of its four closures, and θ's snapshot and the
  two finiteness reads of the non-finite policy another ~2%;
* ``digits_mlp``: the 64-64-10 tanh MLP on digits at batch 64 (4,810 parameters, 4 tensors),
  where it is the per-step dispatch and Python cost (more rounds: its step is ~100× shorter).
"""
from __future__ import annotations

import torch

import metaopt.optim as mo

from .common import batch, make_closure, mlp_1m, time_side_by_side

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


def run(args) -> list[dict]:
    return (_rows("mlp_1m", *_mlp_1m(args.seed, args.device), args.rounds, args)
            + _rows("digits_mlp", *_digits_mlp(args.seed, args.device),
                    args.rounds * SMALL_ROUNDS_FACTOR, args))
