"""Truncated backpropagation through time.

For a segment of ``T`` steps starting from the (detached) state of each run ``i``::

    ĝ = ∂/∂φ  (1/|live|) Σ_{i live} M_i(φ),     M_i = meta-loss of run i's segment

computed by reverse-mode autodiff through the differentiable unroll. Runs that diverged in the
segment contribute nothing (no graph through a NaN), and are reset by the pool.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..inner_runs import InnerRunPool
from .base import GradientEstimator, MetaGradient, mean_live_loss


class TruncatedBPTT(GradientEstimator):
    name = "bptt"

    def estimate(self, pool: InnerRunPool, weights: Mapping[str, Tensor],
                 generator: torch.Generator) -> MetaGradient:
        segment = pool.segment(weights, differentiable=True, advance=True)
        loss = mean_live_loss(segment.losses)
        live = sum(x is not None for x in segment.losses)
        if loss is None or not loss.requires_grad:
            grads = {k: torch.zeros_like(w) for k, w in weights.items()}
            value = math.nan if loss is None else float(loss)
        else:
            raw = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            grads = {k: torch.zeros_like(w) if g is None else g.detach()
                     for (k, w), g in zip(weights.items(), raw)}
            value = float(loss.detach())
        return MetaGradient(value, grads, segment.resets, live, segment.traces)
