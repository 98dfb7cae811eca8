"""The gradient-estimator interface: one meta-gradient per meta-step, whatever the controller.

An estimator sees only a pool of inner runs (``metaopt.meta.inner_runs.InnerRunPool``) and the
meta-parameters ``φ`` as a ``{name: tensor}`` dict, so the same estimators serve the GARO GRU and
the GD/ODE switching policy (a discrete choice: its relaxed form through BPTT, its exact form
through ES). It returns plain tensors, so a distributed trainer can all-reduce them.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..inner_runs import InnerRunPool


@dataclass
class MetaGradient:
    """``grads[name] ≈ ∂ meta-loss / ∂φ[name]``; ``loss`` the meta-loss of the advanced segment
    (mean over the runs that did not diverge, NaN if all did); ``resets`` the runs reset."""

    loss: float
    grads: dict[str, Tensor]
    resets: int
    live_runs: int
    traces: dict[str, float] = field(default_factory=dict)


def mean_live_loss(losses: Sequence[Tensor | None]) -> Tensor | None:
    """Mean of the segment losses of runs that did not diverge (None if none survived)."""
    live = [loss for loss in losses if loss is not None]
    return torch.stack(live).mean() if live else None


def advance_at(pool: InnerRunPool, weights: Mapping[str, Tensor],
               grads: dict[str, Tensor]) -> MetaGradient:
    """Advance every run one truncation at ``weights`` (no graph) and report its meta-loss with
    ``grads``: the last move of the gradient-free estimators (ES, PES), after their probes."""
    with torch.no_grad():
        segment = pool.segment(weights, differentiable=False, advance=True)
    loss = mean_live_loss(segment.losses)
    live = sum(x is not None for x in segment.losses)
    return MetaGradient(math.nan if loss is None else float(loss), grads, segment.resets, live,
                        segment.traces)


class GradientEstimator(ABC):
    """``estimate(pool, φ, generator) -> MetaGradient``; advances the pool by one truncation."""

    name: str = "estimator"

    @abstractmethod
    def estimate(self, pool: InnerRunPool, weights: Mapping[str, Tensor],
                 generator: torch.Generator) -> MetaGradient:
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a bit-exact resume needs beyond the pool and the generator (PES: its particles)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore ``state_dict()``; stateless estimators have nothing to restore."""
