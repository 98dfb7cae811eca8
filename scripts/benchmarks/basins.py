"""Basin map: the whole 100×100 grid × 1,000 steps as one batched tensor program vs a loop of
single torch.optim runs (target ≥ 50×).

The loop is timed on ``SAMPLE`` starts spread over the grid and extrapolated linearly to all
10,000 (every single run does the same work: 1,000 closure + step calls on a 2-vector), which the
printed ``looped_s`` column says. The same sampled starts check the oracle: the batched end points
must equal the looped torch.optim ones (float64), ``max_abs_diff``.
"""
from __future__ import annotations

import time

import torch

from metaopt.analysis.basins import grid_starts
from metaopt.analysis.batched import BatchedOptimizer, run_batched
from tasks.test_functions import TEST_FUNCTIONS_2D

from .common import synchronize

RESOLUTION, STEPS, SAMPLE = 100, 1000, 12
CANDIDATES = [("sgd", {"lr": 0.005, "momentum": 0.9}, torch.optim.SGD),
              ("adam", {"lr": 0.05}, torch.optim.Adam)]


def _single(function, start, cls, options, steps):
    x = torch.nn.Parameter(start.clone())
    opt = cls([x], **options)

    def closure():
        opt.zero_grad()
        loss = function(x)
        loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    return x.detach()


def run(args) -> list[dict]:
    function = TEST_FUNCTIONS_2D["himmelblau"].function
    _, _, starts = grid_starts((-5.0, 5.0, -5.0, 5.0), RESOLUTION, torch.float64, args.device)
    picks = torch.linspace(0, starts.shape[0] - 1, SAMPLE).round().long()
    rows = []
    for name, options, cls in CANDIDATES:
        optimizer = BatchedOptimizer(name, options)
        run_batched(function, starts, optimizer, 5)  # warm-up (allocator, vmap tracing)
        synchronize(args.device)
        start = time.perf_counter()
        result = run_batched(function, starts, optimizer, STEPS)
        synchronize(args.device)
        batched_s = time.perf_counter() - start
        sample = starts[picks].cpu()
        start = time.perf_counter()
        looped = torch.stack([_single(function, s, cls, options, STEPS) for s in sample])
        sample_s = time.perf_counter() - start
        looped_s = sample_s * starts.shape[0] / SAMPLE
        rows.append({"optimizer": name, "grid": f"{RESOLUTION}x{RESOLUTION}", "steps": STEPS,
                     "batched_s": batched_s,
                     "looped_s": looped_s,
                     "looped_measured": f"{SAMPLE} runs, x{starts.shape[0] // SAMPLE} extrapolated",
                     "ratio": looped_s / batched_s,
                     "max_abs_diff": float((result.final[picks].cpu() - looped).abs().max())})
    return rows
