"""Held-out meta-loss: full (untruncated) unrolls of a controller on fixed held-out tasks.

    M_val(φ) = (1/|S|) Σ_{s ∈ S} M(unroll of φ on family.sample_seed(s), horizon steps)

with the meta-loss on the test split by default (losses on data the inner run never trained on).
A run that diverges is scored as if its remaining normalised losses were the divergence threshold
(the worst a run can score), and counted. Nothing here keeps a graph or touches the trainer's
generator, so validating never changes a training run.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..task import TaskFamily
from .learned import LearnedRule
from .meta_losses import MetaLoss
from .unroll import initial_run, unroll_segment


def held_out_seeds(num_tasks: int, offset: int = 2 ** 30) -> list[int]:
    """Task seeds ``offset .. offset + num_tasks − 1`` (training draws seeds below ``2**30``)."""
    return [offset + i for i in range(num_tasks)]


@torch.no_grad()
def validate(learned: LearnedRule, weights: Mapping[str, Tensor], family: TaskFamily,
             task_seeds: Sequence[int], horizon: int, meta_loss: MetaLoss) -> dict:
    """``{"meta_loss", "diverged", "final_normalized_loss", "traces"}`` over ``task_seeds``.

    ``traces`` are the emitted hyperparameters along the first task's unroll.
    """
    weights = {k: w.detach() for k, w in weights.items()}
    scores, finals, diverged, traces = [], [], 0, {}
    for index, seed in enumerate(task_seeds):
        task = family.sample_seed(seed)
        names, params, state = initial_run(learned, weights, task, horizon=horizon)
        result = unroll_segment(learned, weights, task, names, params, state, horizon,
                                meta_loss, batch_seed=seed, differentiable=False,
                                record_trace=(index == 0))
        if index == 0:
            traces = result.traces
        if result.diverged:
            diverged += 1
            wanted = horizon if meta_loss.needs_every_term else 1
            kept = [t for t in result.terms if bool(torch.isfinite(t))
                    and float(t) <= meta_loss.divergence_threshold][:wanted]
            worst = torch.tensor(meta_loss.divergence_threshold, dtype=torch.float64)
            terms = [t.to(torch.float64) for t in kept] + [worst] * (wanted - len(kept))
            scores.append(float(meta_loss.combine(terms)))
            finals.append(math.inf)
        else:
            scores.append(float(result.loss))
            finals.append(float(result.terms[-1]))
    return {"meta_loss": sum(scores) / len(scores), "diverged": diverged,
            "final_normalized_loss": sorted(finals)[len(finals) // 2], "traces": traces}
