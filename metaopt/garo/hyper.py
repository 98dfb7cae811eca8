"""GARO's typed hyperparameters (``metaopt.rules.hyper`` describes the containers).

The controller emits ``lr_t, mom_t, wd_t`` each step; what the caller passes are the controller and
two per-tensor *multipliers* of its outputs (``metaopt.garo.rule``, step 3)::

    a_i = lr_scale_i · lr_t (· d_t with scale="distance"),      λ_i = weight_decay_scale_i · wd_t

``metaopt.optim.GARO`` sets ``lr_scale_i = group["lr"] / controller.init_lr`` (the group's ``lr``
is the untrained controller's learning rate, so a scheduler scales the steps) and
``weight_decay_scale_i = group["weight_decay_scale"]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..rules.hyper import Hyper


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class GAROHyper(Hyper):
    """``controller`` (required): a ``GAROController`` or ``BoundController``;
    ``lr_scale``, ``weight_decay_scale``: multipliers of lr_t and wd_t (float or tensor, shared or
    one per tensor; default 1); ``segment_ids``: each tensor's segment (default: all 0).

    A mapping with the old keys ``lr`` / ``weight_decay`` (the multipliers' names before they
    said what they were) is still converted by ``coerce``, with a ``DeprecationWarning``."""

    renamed: ClassVar[dict[str, str]] = {"lr": "lr_scale", "weight_decay": "weight_decay_scale"}

    controller: Any
    lr_scale: Any = 1.0
    weight_decay_scale: Any = 1.0
    segment_ids: Any = None


def step_inputs(params, grads, hyper) -> tuple[list, list, GAROHyper, list[int]]:
    """One GARO step's tensors, its ``GAROHyper`` and each tensor's segment, checked (the
    differentiable rule and the runtime take the same inputs)."""
    params, grads = list(params), list(grads)
    n = len(params)
    if n == 0:
        raise ValueError("params: GARORule.apply needs at least one tensor")
    hyper = GAROHyper.coerce(hyper)
    ids = list(hyper.segment_ids or [0] * n)
    if len(ids) != n:
        raise ValueError(f"segment_ids: expected {n} entries, got {len(ids)}")
    return params, grads, hyper, ids
