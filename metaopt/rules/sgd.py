"""Momentum SGD as a pure rule (the hybrid GD–ODE optimizer's GD module).

Exactly ``torch.optim.SGD(lr, momentum=μ, weight_decay=λ)`` (no dampening, no Nesterov)::

    d ← g + λ·θ;      b ← μ·b + d;      θ ← θ − lr·b

The buffer starts at zero, so the first step's ``b = d`` as in PyTorch. ``lr``, ``momentum`` and
``weight_decay`` come from ``hyper`` (a ``GDHyper``: floats or tensors, shared or one per
tensor; a mapping of its fields is converted by ``GDHyper.coerce``), so a
controller (GARO) may set them every step. Nothing is mutated; every operation is differentiable.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor, with_weight_decay
from .hyper import GDHyper


@dataclass(frozen=True)
class SGDRule:
    """hyper: ``GDHyper(lr, momentum=0, weight_decay=0)``.
    state: ``momentum_buffer`` (one tensor per parameter)."""

    def init(self, params: Sequence[Tensor]) -> State:
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def apply(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
              hyper: GDHyper, loss: Tensor | None = None
              ) -> tuple[TensorList, State]:
        hyper, n = GDHyper.coerce(hyper), len(params)
        lrs = per_tensor(hyper.lr, n)
        moms = per_tensor(hyper.momentum, n)
        d = with_weight_decay(grads, params, per_tensor(hyper.weight_decay, n))
        bufs = [b * m + di for b, m, di in zip(state["momentum_buffer"], moms, d)]
        new = [p - lr * b for p, lr, b in zip(params, lrs, bufs)]
        return new, {**state, "momentum_buffer": bufs}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: GDHyper) -> tuple[TensorList, State]:
        loss, grads = grad_fn(params)
        return self.apply(params, grads, state, hyper, loss)
