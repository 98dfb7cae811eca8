"""Adam on the meta-parameters φ: the outer loop's update, ``torch.optim.Adam``'s without
``torch.optim``.

A ``torch.optim`` optimizer imports ``torch._dynamo`` (and sympy) the first time it is built or
stepped, through its ``_disable_dynamo`` wrappers: about a second of every ``metaopt train``
start-up, for an update of a few thousand weights that never meets ``torch.compile``. This is
the update ``torch.optim.Adam(lr, betas, eps)`` takes for CPU tensors (its single-tensor path;
Kingma & Ba 2015, no weight decay), operation for operation, so the two agree bit for bit
(``tests/meta/test_outer_adam.py``), with ``t`` the 1-based step count::

    m ← lerp(m, g, 1 − β₁);   v ← β₂·v + (1 − β₂)·g²
    θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

Its ``state_dict`` has ``torch.optim.Adam``'s layout (``state`` by parameter index with ``step``,
``exp_avg``, ``exp_avg_sq``; one ``param_groups`` entry), so a training state saved by either
loads into the other, and loading restores the saved lr, betas and ε as ``torch.optim`` does.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["OuterAdam"]

_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
# torch.optim.Adam's other group entries, written so its load_state_dict reads ours
_GROUP_FLAGS = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None,
                "capturable": False, "differentiable": False, "fused": None,
                "decoupled_weight_decay": False}


def _check_hyper(lr: Any, betas: Any, eps: Any) -> tuple[float, tuple[float, float], float]:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: must be a finite number > 0, got {lr!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas: must be two numbers in [0, 1), got {betas!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: must be a finite number > 0, got {eps!r}")
    return float(lr), (float(betas[0]), float(betas[1])), float(eps)


class OuterAdam:
    """Adam over ``params`` (module docstring). As in ``torch.optim``, ``param_groups[0]`` holds
    the parameters and ``lr``, ``betas``, ``eps`` (read at every step), ``state`` maps a
    parameter to its entries."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        lr, betas, eps = _check_hyper(lr, betas, eps)
        self.param_groups = [{"params": self.params, "lr": lr, "betas": betas, "eps": eps}]
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if not state:  # (the step count on the host, as torch.optim keeps it on CPU)
                state = self.state[p] = {
                    "step": torch.tensor(0.0, dtype=torch.get_default_dtype()),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = state["step"].item()
            step_size = lr / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {"state": {i: dict(self.state[p]) for i, p in enumerate(self.params)
                          if self.state.get(p)},
                "param_groups": [{"lr": group["lr"], "betas": group["betas"],
                                  "eps": group["eps"], **_GROUP_FLAGS,
                                  "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Checked whole before anything changes: one group over these parameters, Adam's
        entries shaped like them, no option Adam would read differently."""
        groups, states = state_dict.get("param_groups"), state_dict.get("state")
        if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], Mapping)
                and isinstance(states, Mapping)):
            raise ValueError("outer optimizer state: expected one param group and a state "
                             "mapping (torch.optim.Adam's layout)")
        group, n = groups[0], len(self.params)
        held = list(group.get("params", ()))
        if held != list(range(n)):
            raise ValueError(f"outer optimizer state: its group holds {len(held)} parameters, "
                             f"the controller has {n}")
        odd = {k: group[k] for k in ("weight_decay", "amsgrad", "maximize") if group.get(k)}
        if odd:
            raise ValueError(f"outer optimizer state: options this Adam does not have: {odd}")
        hyper = _check_hyper(group.get("lr"), group.get("betas"), group.get("eps"))
        loaded = {}
        for index, entries in states.items():
            if not (isinstance(index, int) and 0 <= index < n and isinstance(entries, Mapping)
                    and set(_STATE_KEYS) <= set(entries)
                    and all(isinstance(entries[k], Tensor) for k in _STATE_KEYS)):
                raise ValueError(f"outer optimizer state: entry {index!r} is not Adam's "
                                 f"{_STATE_KEYS} for one of the {n} parameters")
            p = self.params[index]
            if entries["exp_avg"].shape != p.shape or entries["exp_avg_sq"].shape != p.shape:
                raise ValueError(f"outer optimizer state: entry {index} is shaped "
                                 f"{tuple(entries['exp_avg'].shape)}, its parameter "
                                 f"{tuple(p.shape)}")
            loaded[p] = {"step": entries["step"].detach().to("cpu", copy=True),
                         **{k: entries[k].detach().to(p, copy=True)
                            for k in ("exp_avg", "exp_avg_sq")}}
        self.param_groups[0].update(zip(("lr", "betas", "eps"), hyper))
        self.state = loaded
