"""Meta-training costs: throughput of the two engines (loop vs vectorised), time of a
meta-iteration and memory of truncated unrolls.

0. ``throughput``: inner steps per second of meta-training, loop vs vectorised engine, 4/32/128
   tasks per meta-batch, and the peak memory of each (``benchmarks.meta_throughput``).

1. ``time``: one meta-iteration = a differentiable unroll of T = 20 GARO steps (second order:
   inner gradients with ``create_graph``) + the meta-backward, vs 20 plain ``torch.optim.Adam``
   training steps (zero_grad + forward + backward + step) on the same task and minibatch, timed
   side by side. Target ratio ≤ 4×. Two models: the ~1M-parameter MLP at batch 256 (shared
   benchmark model) and a small digits-sized MLP (where the controller's fixed cost shows).
2. ``memory``: peak memory of truncated BPTT over inner horizons 200 and 2,000 with truncation
   20 (10 vs 100 meta-iterations). On CUDA: ``torch.cuda.max_memory_allocated`` minus the
   allocation before the run. On CPU: peak resident set size (``/proc/self/statm``) sampled at
   every loss evaluation (every inner step), minus the RSS before the run after ``gc.collect()``
   and glibc ``malloc_trim(0)``. Target: the two peaks within 10%.
"""
from __future__ import annotations

import ctypes
import gc
import os

import torch
from torch import nn

from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import GAROLearnedRule, InnerRunPool, MetaLoss, TruncatedBPTT, make_horizon
from metaopt.task import ModuleTask

from . import meta_throughput
from .common import mlp_1m, time_side_by_side

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _MLPTask(ModuleTask):
    """A fixed MLP on fixed Gaussian data: a single-batch classification task; every loss call
    samples the memory (the hook of the memory benchmark)."""

    name = "bench_mlp"

    def __init__(self, sizes, batch_size, seed, device):
        super().__init__(device=device)
        self.sizes = sizes
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, sizes[0], generator=g).to(device)
        self.y = torch.randint(0, sizes[-1], (batch_size,), generator=g).to(device)
        if sizes == (784, 1024, 256, 10):
            model = mlp_1m(g, device=device)
        else:
            model = self.build_module().to(device)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1]) ** 0.5)
        self._init = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.peak = 0

    def build_module(self) -> nn.Module:
        layers = []
        for a, b in zip(self.sizes[:-2], self.sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*layers, nn.Linear(self.sizes[-2], self.sizes[-1]))

    def init_params(self, generator=None):
        return {k: v.clone() for k, v in self._init.items()}

    def module_loss(self, module, batch):
        return nn.functional.cross_entropy(module(batch[0]), batch[1])

    def loss(self, params, batch):
        if self.device.type == "cpu":
            self.peak = max(self.peak, _rss())
        return super().loss(params, batch)

    def train_batch(self, generator):
        return self.x, self.y

    def eval_batch(self, split="test"):
        return self.x, self.y

    @property
    def loss_scale(self) -> float:
        return 1.0


class _OneTask:
    """A 'family' that always returns the same task (the timings compare like with like)."""

    def __init__(self, task):
        self.task = task

    def sample_seed(self, seed):
        return self.task


def _pool(task, truncation_length, horizon):
    learned = GAROLearnedRule(GAROController().to(task.device), GARORule())
    pool = InnerRunPool(learned, _OneTask(task), 1, truncation_length,
                        make_horizon("constant", horizon), MetaLoss("mean", "train"))
    return learned, pool


def _time(args, sizes, batch_size) -> dict:
    task = _MLPTask(sizes, batch_size, args.seed, args.device)
    learned, pool = _pool(task, 20, 10 ** 9)
    estimator, generator = TruncatedBPTT(), torch.Generator().manual_seed(args.seed)

    def meta_iteration():
        weights = learned.meta_parameters()
        pool.refresh(weights, generator)
        estimator.estimate(pool, weights, generator)

    model = task.module()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)

    def adam_20():
        for _ in range(20):
            adam.zero_grad(set_to_none=True)
            task.module_loss(model, (task.x, task.y)).backward()
            adam.step()

    rounds = max(3, args.rounds // 4)
    times = time_side_by_side({"meta": meta_iteration, "adam": adam_20}, rounds=rounds,
                              warmup=1, device=args.device)
    return {"benchmark": "time: meta-iteration T=20 vs 20 Adam steps",
            "model": f"mlp{sizes} bs{batch_size}",
            "params": sum(v.numel() for v in task._init.values()),
            "meta_ms": 1e3 * times["meta"], "adam20_ms": 1e3 * times["adam"],
            "ratio": times["meta"] / times["adam"], "target": "<= 4"}


def _memory(args, horizon, truncation_length=20) -> dict:
    task = _MLPTask((64, 128, 128, 10), 128, args.seed, args.device)
    learned, pool = _pool(task, truncation_length, horizon)
    estimator, generator = TruncatedBPTT(), torch.Generator().manual_seed(args.seed)
    gc.collect()
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the baseline keeps whatever the heap holds
            pass
        base = task.peak = _rss()
    for _ in range(horizon // truncation_length):
        weights = learned.meta_parameters()
        pool.refresh(weights, generator)
        estimator.estimate(pool, weights, generator)
    peak = (torch.cuda.max_memory_allocated() if cuda else task.peak) - base
    return {"benchmark": f"memory: horizon {horizon}, truncation {truncation_length}",
            "model": "mlp(64,128,128,10) bs128",
            "params": sum(v.numel() for v in task._init.values()),
            "method": "cuda max_memory_allocated" if cuda else "peak RSS delta (statm/step)",
            "peak_MiB": peak / 2 ** 20}


def run(args) -> list[dict]:
    rows = [_time(args, (784, 1024, 256, 10), 256), _time(args, (64, 64, 10), 64)]
    # the short horizon first: a leak would only make the long horizon look worse
    short, long = _memory(args, 200), _memory(args, 2000)
    ratio = long["peak_MiB"] / max(short["peak_MiB"], 1e-9)
    short["ratio"], long["ratio"] = 1.0, ratio
    short["target"] = long["target"] = "2000/200 within 10%"
    for row in rows:
        row.setdefault("method", "median wall time, side by side")
    rows = meta_throughput.run(args) + rows + [short, long]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k, "") for k in keys} for row in rows]
