"""Scheduled baselines the learned optimizers are compared against (the VeLO / Celo protocol).

``CosineAdam``: Adam whose learning rate follows a cosine decay over the planned training length,

    lr_t = lr · (final_fraction + (1 − final_fraction) · ½(1 + cos(π · min(t, T) / T))),

i.e. ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T, eta_min=final_fraction·lr)`` stepped
after every optimizer step — the tuned baseline VeLO and Celo report next to constant-lr Adam. It
is one object so the evaluation harness (which only calls ``step(closure)``) can drive it.
"""
from __future__ import annotations

import math

import torch


class CosineAdam(torch.optim.Adam):
    """Adam with a cosine-decayed lr over ``total_steps`` (module docstring).

    Args:
        params, lr, **adam_kwargs: as ``torch.optim.Adam``.
        total_steps: ``T``, the planned number of steps (after ``T`` the lr stays at its floor).
        final_fraction: the floor ``eta_min / lr``.
    """

    def __init__(self, params, lr: float = 1e-3, *, total_steps: int = 1000,
                 final_fraction: float = 0.0, **adam_kwargs):
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"total_steps: must be an int >= 1, got {total_steps!r}")
        if not 0.0 <= final_fraction <= 1.0:
            raise ValueError(f"final_fraction: must lie in [0, 1], got {final_fraction!r}")
        super().__init__(params, lr=lr, **adam_kwargs)
        self.total_steps, self.final_fraction = total_steps, float(final_fraction)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.schedule_step = 0

    def step(self, closure=None):
        loss = super().step(closure)
        self.schedule_step += 1
        progress = min(self.schedule_step, self.total_steps) / self.total_steps
        factor = self.final_fraction + (1 - self.final_fraction) * 0.5 * (
            1 + math.cos(math.pi * progress))
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * factor
        return loss

    def state_dict(self):
        out = super().state_dict()
        out["schedule_step"] = self.schedule_step
        return out

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.schedule_step = int(state_dict.pop("schedule_step", 0))
        super().load_state_dict(state_dict)
