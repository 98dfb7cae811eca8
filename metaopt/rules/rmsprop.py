"""RMSprop as a pure rule (the hybrid GD–ODE optimizer's adaptive GD module).

Exactly ``torch.optim.RMSprop(lr, alpha=α, eps, momentum=μ, weight_decay=λ)`` (not centered;
Tieleman & Hinton 2012)::

    d ← g + λ·θ;   s ← α·s + (1−α)·d²;   b ← μ·b + d / (√s + ε);   θ ← θ − lr·b

``lr``, ``momentum`` and ``weight_decay`` come from ``hyper`` (a ``GDHyper``); α and ε are rule
constants.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor, with_weight_decay
from .hyper import GDHyper


@dataclass(frozen=True)
class RMSpropRule:
    """state: ``square_avg``, ``momentum_buffer`` (per tensor)."""

    alpha: float = 0.99
    eps: float = 1e-8

    def __post_init__(self):
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha: must lie in [0, 1), got {self.alpha!r}")
        if not self.eps > 0:
            raise ValueError(f"eps: must be > 0, got {self.eps!r}")

    def init(self, params: Sequence[Tensor]) -> State:
        return {"square_avg": [torch.zeros_like(p) for p in params],
                "momentum_buffer": [torch.zeros_like(p) for p in params]}

    def apply(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
              hyper: GDHyper, loss: Tensor | None = None
              ) -> tuple[TensorList, State]:
        hyper, n = GDHyper.coerce(hyper), len(params)
        lrs = per_tensor(hyper.lr, n)
        moms = per_tensor(hyper.momentum, n)
        d = with_weight_decay(grads, params, per_tensor(hyper.weight_decay, n))
        sq = [s * self.alpha + (1 - self.alpha) * di * di for s, di in zip(state["square_avg"], d)]
        bufs = [b * m + di / (s.sqrt() + self.eps)
                for b, m, di, s in zip(state["momentum_buffer"], moms, d, sq)]
        new = [p - lr * b for p, lr, b in zip(params, lrs, bufs)]
        return new, {**state, "square_avg": sq, "momentum_buffer": bufs}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: GDHyper) -> tuple[TensorList, State]:
        loss, grads = grad_fn(params)
        return self.apply(params, grads, state, hyper, loss)
