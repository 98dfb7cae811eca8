"""Costs of the broad mixture's meta-training ingredients, side by side in one process.

1. ``family``: one training step of each task family (minibatch + functional loss + gradient,
   first order) at the family's defaults, and its parameter count; ratio to the digits MLP
   (width 32, the mixture's staple). The families are those added for the broad mixture
   (``sequence`` GRU and causal conv) and the held-out benchmark (``char_mlp``,
   ``autoencoder_digits``), plus an ``augmented`` wrapper to show its overhead.
2. ``estimator``: one meta-step (``estimate`` on a pool of 2 GARO runs on quadratics, truncation
   10) of truncated BPTT, antithetic ES and PES with the same number of pairs; ratio to BPTT.
   ES and PES both unroll ``2P + 1`` segments without a graph; PES adds its particle bookkeeping.
3. ``pool``: one BPTT meta-step over 8 runs of ``augmented(sequence)`` (GRU, one architecture,
   loss ×0.01..100, parameters ×0.5..2), loop engine vs ``VectorisedPool`` (the 8 runs share a
   ``batch_key``, so they advance as one vmapped program); ratio to the loop.
"""
from __future__ import annotations

import torch

import tasks
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import (
    GAROLearnedRule,
    InnerRunPool,
    MetaLoss,
    TruncatedBPTT,
    VectorisedPool,
    make_estimator,
    make_horizon,
)
from metaopt.task import generator_from_seed

from .common import time_side_by_side

FAMILIES = {
    "mlp (digits, width 32)": ("mlp", {"datasets": ["digits"], "width": [32, 32], "depth": [1, 1],
                                       "batch_sizes": [64]}),
    "sequence gru": ("sequence", {"models": ["gru"], "batch_sizes": [64]}),
    "sequence conv": ("sequence", {"models": ["conv"], "batch_sizes": [64]}),
    "char_mlp": ("char_mlp", {}),
    "autoencoder_digits": ("autoencoder_digits", {}),
    "augmented(char_mlp)": ("augmented", {"family": {"name": "char_mlp"},
                                          "loss_scale": [0.01, 100], "param_scale": [0.5, 2]}),
}


def _family_rows(args) -> list[dict]:
    steps, rows = {}, {}
    for label, (name, kwargs) in FAMILIES.items():
        task = tasks.get(name, device=args.device, **kwargs).sample_seed(args.seed)
        params = {k: v.requires_grad_() for k, v in task.init_params().items()}
        generator = generator_from_seed(args.seed)

        def step(task=task, params=params, generator=generator):
            loss = task.loss(params, task.train_batch(generator))
            return torch.autograd.grad(loss, list(params.values()))

        steps[label] = step
        rows[label] = {"task": task.describe(), "params": sum(p.numel() for p in params.values())}
    times = time_side_by_side(steps, rounds=args.rounds, device=args.device)
    base = times["mlp (digits, width 32)"]
    return [{"bench": "family", "name": label, "detail": rows[label]["task"],
             "params": rows[label]["params"], "ms": 1e3 * t, "ratio": t / base}
            for label, t in times.items()]


def _estimator_rows(args) -> list[dict]:
    family = tasks.get("quadratic", dim=(10, 20), device=args.device)
    calls = {}
    for name in ("bptt", "es", "pes"):
        controller = GAROController(hidden_size=8, generator=generator_from_seed(args.seed))
        learned = GAROLearnedRule(controller.to(args.device), GARORule())
        pool = InnerRunPool(learned, family, 2, 10, make_horizon("constant", 10_000),
                            MetaLoss("mean", "train"))
        generator = torch.Generator().manual_seed(args.seed)
        pool.refresh(learned.meta_parameters(), generator)
        estimator = make_estimator(name, num_pairs=4, sigma=0.01)
        calls[name] = (lambda e=estimator, p=pool, lr=learned, g=generator:
                       e.estimate(p, lr.meta_parameters(), g))
    times = time_side_by_side(calls, rounds=max(3, args.rounds // 4), warmup=1, device=args.device)
    return [{"bench": "estimator", "name": name, "detail": "2 runs x T=10, P=4 pairs",
             "params": "", "ms": 1e3 * t, "ratio": t / times["bptt"]} for name, t in times.items()]


def _pool_rows(args) -> list[dict]:
    family = tasks.get("augmented", loss_scale=[0.01, 100], param_scale=[0.5, 2],
                       device=args.device, family={"name": "sequence", "kwargs": {
                           "models": ["gru"], "kinds": ["markov", "copy"], "vocab": [4, 4],
                           "hidden": [8, 8], "length": [8, 8], "batch_sizes": [32]}})
    calls = {}
    for label, cls in (("loop", InnerRunPool), ("vectorised", VectorisedPool)):
        controller = GAROController(hidden_size=8, generator=generator_from_seed(args.seed))
        learned = GAROLearnedRule(controller.to(args.device), GARORule())
        pool = cls(learned, family, 8, 5, make_horizon("constant", 10_000),
                   MetaLoss("mean", "train"))
        generator = torch.Generator().manual_seed(args.seed)
        pool.refresh(learned.meta_parameters(), generator)
        calls[label] = (lambda p=pool, lr=learned, g=generator:
                        TruncatedBPTT().estimate(p, lr.meta_parameters(), g))
    times = time_side_by_side(calls, rounds=max(3, args.rounds // 4), warmup=1, device=args.device)
    return [{"bench": "pool", "name": label,
             "detail": "BPTT, 8 runs x T=5, augmented(sequence gru)",
             "params": "", "ms": 1e3 * t, "ratio": t / times["loop"]} for label, t in times.items()]


def run(args) -> list[dict]:
    return _family_rows(args) + _estimator_rows(args) + _pool_rows(args)
