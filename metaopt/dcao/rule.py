"""DCAO update math: the curvature schedule and the momentum-SGD step between probes.

DCAO (dynamic curvature-aware optimizer). Given the last probe's spectral radius ρ and
spectral gap γ_H (``curvature.py``) and the base values η₀, μ₀, λ₀:

* ``schedule="exponential"`` (DCAO's formulas)::

      η = η₀ · exp(−α ρ),   μ = μ₀ · exp(−β γ_H),   λ = λ₀ · exp(−γ ρ)

* ``schedule="edge_of_stability"``: gradient descent on a quadratic is stable iff η·λ_max < 2,
  and full-batch training drives the sharpness to ≈ 2/η (Cohen et al. 2021, "Gradient Descent on
  Neural Networks Typically Occurs at the Edge of Stability"). This rule caps the step at a
  fraction ``c`` of that threshold, η = min(η₀, c · 2/ρ), and keeps DCAO's μ and λ laws.
  (Heavy-ball with momentum μ is stable up to η·λ < 2 + 2μ, so the cap is conservative.)

* Stall guard (``stall_ratio`` r > 0; ``metaopt.optim.DCAO``'s default r = 0.01): the exponential
  law collapses on sharp problems (Rosenbrock at (−1.5, 2): ρ ≈ 2,092, η = 0.01·e^{−20.9} ≈ 8e-12:
  the iterate never moves, so every later probe sees the same ρ). The step is floored::

      η ← max(η, min(r · η₀, c · 2/ρ))

  i.e. once the schedule has cut η₀ by more than 1/r it goes no lower than r·η₀, nor than the
  fraction c (``stability_factor``) of the local stability limit 2/ρ when that is smaller, so the
  floored step stays stable on the local quadratic model. Wherever η₀e^{−αρ} ≥ r·η₀
  (αρ ≤ ln(1/r): ρ ≤ 460 at α = 0.01, r = 0.01) the guard is inert and DCAO's schedule
  runs unchanged.

The step is PyTorch's SGD with momentum (dampening 0, coupled weight decay)::

      g ← ∇L(θ) + λ θ,    b ← μ b + g,    θ ← θ − η b

Everything is out of place and works on floats or tensors, so a differentiable unroll can use it
(``DCAORule``); ``metaopt.optim.DCAO`` runs the same math with in-place foreach ops.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..rules.base import GradFn, Scalar, State, TensorList, per_tensor
from ..rules.hyper import Hyper

SCHEDULES = ("exponential", "edge_of_stability")
Number = float | Tensor


def _exp(x: Number) -> Number:
    return torch.exp(x) if isinstance(x, Tensor) else math.exp(x)


def eos_learning_rate(lr: Number, spectral_radius: Number, stability_factor: float) -> Number:
    """η = min(η₀, c · 2/ρ); ρ = 0 (flat) leaves η₀ unchanged."""
    if isinstance(spectral_radius, Tensor) or isinstance(lr, Tensor):
        rho = torch.as_tensor(spectral_radius)
        cap = torch.where(rho > 0, 2.0 * stability_factor / rho.clamp_min(1e-300),
                          torch.full_like(rho, math.inf))
        return torch.minimum(torch.as_tensor(lr, dtype=cap.dtype), cap)
    if spectral_radius <= 0:
        return lr
    return min(lr, 2.0 * stability_factor / spectral_radius)


def stall_floor(lr: Number, spectral_radius: Number, stall_ratio: float,
                stability_factor: float) -> Number:
    """min(r·η₀, c·2/ρ): the smallest step the stall guard allows (r·η₀ when ρ ≤ 0)."""
    if isinstance(spectral_radius, Tensor) or isinstance(lr, Tensor):
        rho = torch.as_tensor(spectral_radius)
        cap = torch.where(rho > 0, 2.0 * stability_factor / rho.clamp_min(1e-300),
                          torch.full_like(rho, math.inf))
        return torch.minimum(stall_ratio * torch.as_tensor(lr, dtype=cap.dtype), cap)
    if spectral_radius <= 0:
        return stall_ratio * lr
    return min(stall_ratio * lr, 2.0 * stability_factor / spectral_radius)


def dcao_schedule(spectral_radius: Number, spectral_gap: Number, lr: Number, momentum: Number,
                  weight_decay: Number, alpha: float, beta: float, gamma: float,
                  schedule: str = "exponential", stability_factor: float = 0.9,
                  stall_ratio: float = 0.0) -> tuple[Number, Number, Number]:
    """Effective (η, μ, λ) from curvature (ρ, γ_H) and base values (η₀, μ₀, λ₀); see module doc.
    ``stall_ratio`` r > 0 turns on the stall guard (η ≥ min(r·η₀, c·2/ρ))."""
    if schedule == "exponential":
        new_lr = lr * _exp(-alpha * spectral_radius)
    elif schedule == "edge_of_stability":
        new_lr = eos_learning_rate(lr, spectral_radius, stability_factor)
    else:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if stall_ratio > 0:
        floor = stall_floor(lr, spectral_radius, stall_ratio, stability_factor)
        new_lr = torch.maximum(torch.as_tensor(new_lr), torch.as_tensor(floor)) \
            if isinstance(new_lr, Tensor) or isinstance(floor, Tensor) else max(new_lr, floor)
    return (new_lr, momentum * _exp(-beta * spectral_gap),
            weight_decay * _exp(-gamma * spectral_radius))


def momentum_sgd(params: Sequence[Tensor], grads: Sequence[Tensor], buffers: Sequence[Tensor],
                 lr: Sequence[Scalar], momentum: Sequence[Scalar],
                 weight_decay: Sequence[Scalar]) -> tuple[TensorList, TensorList]:
    """g = ∇ + λθ, b' = μ b + g, θ' = θ − η b' per tensor; returns (θ', b'), inputs untouched."""
    new_params, new_buffers = [], []
    for p, g, b, eta, mu, wd in zip(params, grads, buffers, lr, momentum, weight_decay):
        d = g + wd * p
        b = mu * b + d
        new_params.append(p - eta * b)
        new_buffers.append(b)
    return new_params, new_buffers


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class DCAOHyper(Hyper):
    """DCAO's hyperparameters (``metaopt.rules.hyper``): the base values ``lr``, ``momentum``,
    ``weight_decay`` (η₀, μ₀, λ₀: scalars or one per tensor, what the group holds, as in
    ``torch.optim.SGD``) and the curvature of the last probe, ``spectral_radius`` and
    ``spectral_gap`` (floats or tensors; pass them detached in a differentiable unroll)."""

    lr: Any
    momentum: Any = 0.0
    weight_decay: Any = 0.0
    spectral_radius: Any = 0.0
    spectral_gap: Any = 0.0


class DCAORule:
    """Pure DCAO step: ``state = {"momentum_buffer": [...]}``; ``hyper`` a ``DCAOHyper``.

    Probing is the caller's job (``curvature.probe_curvature``): it needs Hessian-vector
    products, not just ``grad_fn``.
    """

    def __init__(self, alpha: float, beta: float, gamma: float, schedule: str = "exponential",
                 stability_factor: float = 0.9, stall_ratio: float = 0.01):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.schedule, self.stability_factor = schedule, stability_factor
        self.stall_ratio = stall_ratio

    def init(self, params: Sequence[Tensor]) -> State:
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def effective(self, hyper: DCAOHyper, n: int) -> tuple[list, list, list]:
        """Per-tensor (η, μ, λ) after the curvature schedule."""
        hyper = DCAOHyper.coerce(hyper)
        rho, gap = hyper.spectral_radius, hyper.spectral_gap
        triples = [dcao_schedule(rho, gap, eta, mu, wd, self.alpha, self.beta, self.gamma,
                                 self.schedule, self.stability_factor, self.stall_ratio)
                   for eta, mu, wd in zip(per_tensor(hyper.lr, n),
                                          per_tensor(hyper.momentum, n),
                                          per_tensor(hyper.weight_decay, n))]
        return [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: DCAOHyper) -> tuple[TensorList, State]:
        _, grads = grad_fn(params)
        lr, momentum, weight_decay = self.effective(hyper, len(params))
        new_params, buffers = momentum_sgd(params, grads, state["momentum_buffer"], lr,
                                           momentum, weight_decay)
        return new_params, {"momentum_buffer": buffers}
