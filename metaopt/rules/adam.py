"""Adam as a pure rule (the hybrid GD–ODE optimizer's adaptive GD module).

Exactly ``torch.optim.Adam(lr, betas=(β₁, β₂), eps, weight_decay=λ)`` (coupled L2 decay, as
PyTorch's Adam; Kingma & Ba 2015), with ``t`` the 1-based step count::

    d ← g + λ·θ;   m ← β₁m + (1−β₁)d;   v ← β₂v + (1−β₂)d²
    θ ← θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)

``lr`` and ``weight_decay`` come from ``hyper`` (a ``GDHyper``; its ``momentum`` is unused: the
first moment's decay is β₁; floats or tensors, per tensor or shared); the
betas and ε are constants of the rule. Pure and differentiable.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import GradFn, State, TensorList, per_tensor, with_weight_decay
from .hyper import GDHyper


@dataclass(frozen=True)
class AdamRule:
    """state: ``exp_avg``, ``exp_avg_sq`` (per tensor), ``step`` (int, steps taken)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: must lie in [0, 1), got {value!r}")
        if not self.eps > 0:
            raise ValueError(f"eps: must be > 0, got {self.eps!r}")

    def init(self, params: Sequence[Tensor]) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_avg_sq": [torch.zeros_like(p) for p in params], "step": 0}

    def apply(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
              hyper: GDHyper, loss: Tensor | None = None
              ) -> tuple[TensorList, State]:
        hyper, n = GDHyper.coerce(hyper), len(params)
        lrs = per_tensor(hyper.lr, n)
        d = with_weight_decay(grads, params, per_tensor(hyper.weight_decay, n))
        t = state["step"] + 1
        bc1, bc2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        ms = [m * self.beta1 + (1 - self.beta1) * di for m, di in zip(state["exp_avg"], d)]
        vs = [v * self.beta2 + (1 - self.beta2) * di * di
              for v, di in zip(state["exp_avg_sq"], d)]
        new = [p - lr * (m / bc1) / ((v / bc2).sqrt() + self.eps)
               for p, lr, m, v in zip(params, lrs, ms, vs)]
        return new, {**state, "exp_avg": ms, "exp_avg_sq": vs, "step": t}

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: GDHyper) -> tuple[TensorList, State]:
        loss, grads = grad_fn(params)
        return self.apply(params, grads, state, hyper, loss)
