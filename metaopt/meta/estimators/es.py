"""Antithetic evolution strategies over one truncation (gradient-free).

With ``ε_j ~ N(0, I)`` and ``M_i(φ)`` run ``i``'s segment meta-loss, for ``j = 1..P`` pairs::

    ĝ = (1/P) Σ_j  mean_{i ∈ live_j} [M_i(φ + σε_j) − M_i(φ − σε_j)] / (2σ) · ε_j

an unbiased estimate of ∇ of the Gaussian-smoothed loss ``E_ε M(φ + σε)`` (Salimans et al. 2017),
which equals ∇M up to O(σ²) for smooth M. Only loss values are needed, so the objective may be
non-differentiable (a discrete GD/ODE switch, a step count) and no graph is kept: memory does not
grow with the truncation length. Both probes of a pair start from the same inner state and see the
same minibatches (common random numbers), which cancels most of the noise of the difference.
A run diverging under either probe drops out of that pair. After the probes the runs advance
one truncation at ``φ`` itself (the reported meta-loss).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..inner_runs import InnerRunPool
from ..learned import perturbed
from .base import GradientEstimator, MetaGradient, advance_at


class AntitheticES(GradientEstimator):
    """Args: ``num_pairs`` (P, antithetic pairs per meta-step), ``sigma`` (σ, perturbation
    scale)."""

    name = "es"

    def __init__(self, num_pairs: int = 8, sigma: float = 0.01):
        if num_pairs < 1:
            raise ValueError(f"num_pairs: must be >= 1, got {num_pairs!r}")
        if not sigma > 0:
            raise ValueError(f"sigma: must be > 0, got {sigma!r}")
        self.num_pairs, self.sigma = int(num_pairs), float(sigma)

    def estimate(self, pool: InnerRunPool, weights: Mapping[str, Tensor],
                 generator: torch.Generator) -> MetaGradient:
        base = {k: w.detach() for k, w in weights.items()}
        grads = {k: torch.zeros_like(w) for k, w in base.items()}
        for _ in range(self.num_pairs):
            noise = {k: torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                     for k, w in base.items()}
            plus = pool.segment(perturbed(base, noise, self.sigma), differentiable=False,
                                advance=False).losses
            minus = pool.segment(perturbed(base, noise, -self.sigma), differentiable=False,
                                 advance=False).losses
            diffs = [p - m for p, m in zip(plus, minus) if p is not None and m is not None]
            if not diffs:
                continue
            coefficient = torch.stack(diffs).mean() / (2 * self.sigma * self.num_pairs)
            for k, grad in grads.items():
                grad += coefficient.to(grad.dtype) * noise[k]
        return advance_at(pool, base, grads)
