"""Float64 oracles shared by the analysis tests: a small nn.Module MLP and its dense Hessian."""
from __future__ import annotations

import torch
from torch import nn

from metaopt.analysis.hessian import module_loss
from metaopt.rules.hvp import dense_hessian


def tiny_mlp(seed: int = 0, hidden: int = 8):
    """5 → hidden → 3 tanh MLP, float64, cross-entropy on 32 random points (75 params at 8)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    return model, nn.functional.cross_entropy, (x, y)


def dense(model, loss_fn, batch, params=None) -> torch.Tensor:
    """The full Hessian of the batch loss (the independent oracle)."""
    f, current = module_loss(model, loss_fn, batch)
    return dense_hessian(f, current if params is None else params)
