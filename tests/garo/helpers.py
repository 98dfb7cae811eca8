"""Shared fixtures of the GARO tests: a small regression problem and an "awake" controller."""
from __future__ import annotations

import torch

from metaopt.garo import GAROController


def regression(dtype=torch.float64, seed: int = 0):
    """A 2-layer tanh network on fixed data: params list and ``loss(params)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=g, dtype=dtype)
    y = torch.randn(16, 2, generator=g, dtype=dtype)
    params = [torch.randn(4, 6, generator=g, dtype=dtype) * 0.5,
              torch.zeros(6, dtype=dtype),
              torch.randn(6, 2, generator=g, dtype=dtype) * 0.5]

    def loss(ps):
        return (torch.tanh(x @ ps[0] + ps[1]) @ ps[2] - y).pow(2).mean()
    return params, loss


def awake_controller(dtype=torch.float64, seed: int = 1, scale: float = 0.3, **kwargs):
    """A controller whose heads read the hidden state, so lr_t, mom_t, wd_t vary every step."""
    g = torch.Generator().manual_seed(seed)
    c = GAROController(generator=g, init_lr=0.05, init_momentum=0.5, init_weight_decay=1e-3,
                       **kwargs).to(dtype)
    with torch.no_grad():
        for head in (c.head_lr, c.head_momentum, c.head_weight_decay):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g, dtype=dtype) * scale)
    return c


def constant_controller(lr: float, momentum: float, weight_decay: float, dtype=torch.float64):
    """Untrained heads: the controller emits exactly (lr, momentum, weight_decay) every step."""
    c = GAROController(init_lr=lr, init_momentum=momentum,
                       init_weight_decay=weight_decay).to(dtype)
    c.reset_parameters()  # the biases again, now in ``dtype``'s precision
    return c
