"""A GARO step's update norm ``‖Δθ‖_s``, read when the next step reads its own norms.

GARO's runtime (``metaopt.garo.runtime``) leaves a step's update directions to be read by the
next step (``PendingUpdateNorm``, one host read per step instead of two); these turn the norms
of those directions into the update norms and the update-ratio feature
``‖Δθ‖_s / ‖θ‖_s`` (``metaopt.garo.features``), or read them now (``settle``) where the state
must be whole (``HostState.to_tensors``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .features import TINY
from .host_state import HostState, PendingUpdateNorm
from .scale import fused_norms, host_segment_norms

__all__ = ["ratios_of", "segment_update_norms", "settle", "update_ratios"]


def segment_update_norms(pending: PendingUpdateNorm, direction_norms: Sequence[float],
                         num_segments: int) -> list[float]:
    """``‖Δθ‖_s`` of a step (``pending``) from its directions' norms."""
    return host_segment_norms([(a * d) ** 2 for a, d in zip(
        pending.step_sizes, direction_norms)], pending.segment_ids, num_segments)


def update_ratios(host: HostState, direction_norms: Sequence[float],
                  pending: PendingUpdateNorm | None = None) -> list[float]:
    """``‖Δθ‖_s / ‖θ‖_s`` of a step (``pending``, default ``host``'s) from its directions' norms,
    rounded to the state's dtype; segments the step did not update keep ``host``'s ratio."""
    pending = pending or host.pending
    return ratios_of(host, segment_update_norms(pending, direction_norms, host.num_segments),
                     pending)


def ratios_of(host: HostState, update_norms: Sequence[float],
              pending: PendingUpdateNorm | None = None) -> list[float]:
    """``update_ratios`` from the step's update norms ``‖Δθ‖_s`` (``segment_update_norms``)."""
    pending = pending or host.pending
    ratios = host.rounded([u / (p + TINY) for u, p in zip(update_norms, pending.param_norms)])
    if host.num_segments > 1:
        active = set(pending.segment_ids)
        ratios = [r if s in active else o for s, (r, o) in
                  enumerate(zip(ratios, host.prev_update_ratio))]
    return ratios


def settle(host: HostState) -> HostState:
    """``host`` with a pending update norm read now (what ``to_tensors`` needs)."""
    if host.pending is None:
        return host
    norms = segment_update_norms(host.pending, fused_norms(host.pending.directions).tolist(),
                                 host.num_segments)
    return replace(host, prev_update_ratio=ratios_of(host, norms), pending=None,
                   update_norm=norms)
