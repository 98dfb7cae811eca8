"""A full GARO training step vs its torch.optim counterpart, side by side (issues: ≤ 1.10×, ≤ 1.3×).

Every row times zero_grad + forward + backward + ``opt.step()``, interleaved in one process.

* ``mlp_1m``: the ~1M-parameter MLP at batch 256; GARO (seed controller; ``sgd`` and ``adam``
  directions, no loss given) against ``torch.optim.SGD(momentum=0.9, foreach=True)``. GARO's
  extra work per step is three fused norms (gradient, parameters, update), a 32-unit GRU step on
  a 1×16 input and one host sync.
* ``char_mlp`` (the 18k-parameter character model of the learned-optimizer benchmark) and
  ``digits_mlp`` (64-64-10 tanh) at batch 64, where the step is dispatch-bound: GARO-adam with
  garo_general's configuration (``features="relative"``, ``init_lr=1e-3``,
  ``init_momentum=0.5``, ``num_training_steps`` set, ``step(loss=loss)``) and GARO-sgd with the
  seed controller (``step(loss=loss)``), against ``torch.optim.Adam(foreach=True)``; SGD-momentum
  for reference. There GARO's cost is its fixed per-step cost (controller + features), not the
  parameter traffic.

Each row is timed twice, interleaved both times: wall clock (``step_ms``, ``ratio``) and, on the
CPU, this process's CPU time (``cpu_ms``, ``cpu_ratio``). On a machine shared with other jobs
the wall-clock median of a longer step is inflated by preemption far more than a shorter one's
(a 4 ms step spans scheduler slices, a 1 ms step mostly does not), so ``cpu_ratio`` is the
number to read there; on an idle machine the two agree.
"""
from __future__ import annotations

import time

import torch

import metaopt.optim as mo
import tasks
from metaopt.controllers.garo import GAROController

from .common import batch, make_closure, mlp_1m, time_side_by_side

SMALL_BATCH = 64
SMALL_ROUNDS_FACTOR = 10  # a small step is ~100x shorter than a 1M step: more rounds, same time


def _small_models(seed: int, device):
    """name -> (module factory, batch, loss function) of the two dispatch-bound models."""
    char = tasks.get("char_mlp", batch_size=SMALL_BATCH, device=device).sample_seed(seed)
    digits = tasks.get("mlp", datasets=["digits"], width=(64, 64), depth=(1, 1),
                       activations=("tanh",), batch_sizes=[SMALL_BATCH],
                       device=device).sample_seed(seed)
    out = {}
    for name, task in (("char_mlp", char), ("digits_mlp", digits)):
        out[name] = (task.module, task.train_batch(torch.Generator().manual_seed(seed)),
                     task.module_loss)
    return out


def _step(model, opt, loss_fn, data, pass_loss: bool):
    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, data)
        loss.backward()
        if pass_loss:
            opt.step(loss=loss)
        else:
            opt.step()
    return train_step


def _timed_rows(candidates, args, rounds: int, warmup: int, baseline: str, **fields):
    """Rows of wall-clock and CPU-time medians (interleaved) with ratios to ``baseline``."""
    wall = time_side_by_side(candidates, rounds=rounds, warmup=warmup, device=args.device)
    cpu_device = torch.device(args.device).type == "cpu"
    cpu = time_side_by_side(candidates, rounds=rounds, warmup=0, device=args.device,
                            clock=time.process_time) if cpu_device else None
    rows = []
    for name, t in wall.items():
        rows.append({**fields, "optimizer": name, "baseline": baseline, "step_ms": 1e3 * t,
                     "ratio": t / wall[baseline],
                     "cpu_ms": 1e3 * cpu[name] if cpu else float("nan"),
                     "cpu_ratio": cpu[name] / cpu[baseline] if cpu else float("nan")})
    return rows


def _small_rows(args) -> list[dict]:
    horizon = 10_000
    builders = {
        "adam_foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False),
        "sgd_momentum_foreach": (lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9,
                                                             foreach=True), False),
        "garo_adam_relative": (lambda ps: mo.GARO(
            ps, direction="adam", num_training_steps=horizon,
            controller=GAROController(features="relative", init_lr=1e-3, init_momentum=0.5)),
            True),
        "garo_sgd": (lambda ps: mo.GARO(ps), True),
    }
    rows = []
    for model_name, (make_module, data, loss_fn) in _small_models(args.seed, args.device).items():
        candidates, n_params = {}, 0
        for name, (build, pass_loss) in builders.items():
            model = make_module()
            n_params = sum(p.numel() for p in model.parameters())
            candidates[name] = _step(model, build(model.parameters()), loss_fn, data, pass_loss)
        rows += _timed_rows(candidates, args, args.rounds * SMALL_ROUNDS_FACTOR, 20,
                            "adam_foreach", model=model_name, params=n_params)
    return rows


def _mlp_1m_rows(args) -> list[dict]:
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
    return _timed_rows(candidates, args, args.rounds, 3, "sgd_momentum_foreach",
                       model="mlp_1m", params=n_params)


def run(args) -> list[dict]:
    return _small_rows(args) + _mlp_1m_rows(args)
