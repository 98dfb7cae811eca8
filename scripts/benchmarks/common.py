"""Shared benchmark plumbing: the ~1M-parameter MLP at batch 256 and side-by-side timing.

Timings are taken interleaved (round-robin over the candidates, many rounds, median per
candidate) in one process, so drift in machine load hits every candidate alike; ratios are the
numbers to read, not absolute times.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def mlp_1m(generator: torch.Generator, device=None, dtype=torch.float32) -> nn.Module:
    """784 → 1024 → 256 → 10 tanh MLP: 1,068,810 parameters."""
    model = nn.Sequential(nn.Linear(784, 1024), nn.Tanh(), nn.Linear(1024, 256), nn.Tanh(),
                          nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / p.shape[-1]) ** 0.5)
    return model.to(device=device, dtype=dtype)


def batch(generator: torch.Generator, size: int = 256, device=None, dtype=torch.float32):
    x = torch.randn(size, 784, generator=generator).to(device=device, dtype=dtype)
    y = torch.randint(0, 10, (size,), generator=generator).to(device=device)
    return x, y


def make_closure(model: nn.Module, optimizer, x, y) -> Callable[[], torch.Tensor]:
    loss_fn = nn.CrossEntropyLoss()

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    return closure


def synchronize(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_side_by_side(candidates: dict[str, Callable[[], object]], rounds: int = 30,
                      warmup: int = 3, device=None,
                      clock: Callable[[], float] = time.perf_counter,
                      calls_per_sample: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, measured round-robin.

    ``calls_per_sample > 1`` times that many consecutive calls per sample (a training loop's
    steady state: the candidate's code and data stay in cache from one call to the next; single
    interleaved calls each start after another candidate's). ``clock=time.process_time`` times
    this process's CPU work instead of the wall (CPU device only): on a loaded machine a
    wall-clock median penalises the longer candidate, which is preempted more often.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            synchronize(device)
            start = clock()
            for _ in range(calls_per_sample):
                fn()
            synchronize(device)
            samples[name].append((clock() - start) / calls_per_sample)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n== {title} ==")
    if not rows:
        return
    keys = list(rows[0])
    width = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(width[k]) for k in keys))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
