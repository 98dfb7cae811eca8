"""Float64 oracles shared by the Lanczos / curvature / DCAO tests: a small MLP and its full
Hessian."""
from __future__ import annotations

import torch
from torch import nn

from metaopt.rules.hvp import dense_hessian


def small_mlp(seed: int = 0, hidden: int = 48):
    """12 → hidden → 6 tanh MLP with cross-entropy on 64 random points (918 params at hidden=48)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(hidden, 12), (hidden,), (6, hidden), (6,)]
    params = [torch.randn(s, generator=g, dtype=torch.float64) / s[-1] ** 0.5 for s in shapes]
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (64,), generator=g)

    def loss_fn(ps):
        w1, b1, w2, b2 = ps
        return nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)
    return params, loss_fn


def full_hessian(loss_fn, params) -> torch.Tensor:
    """Dense Hessian by ``torch.func.hessian`` (forward-over-reverse Jacobian of the gradient)."""
    return dense_hessian(loss_fn, params)


def top_by_magnitude(eigenvalues: torch.Tensor, k: int) -> torch.Tensor:
    return eigenvalues[torch.argsort(eigenvalues.abs(), descending=True)][:k]


def wishart(n: int, m: int, seed: int) -> torch.Tensor:
    """W = X Xᵀ / m with X ∈ R^{n×m} standard normal (Marchenko–Pastur bulk, float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=torch.float64)
    return x @ x.T / m
