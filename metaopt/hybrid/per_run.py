"""Per-run bookkeeping of ``HybridRule(batched=True)``: the leading dimension of every tensor
is an independent run (a grid of starts, or the runs of a meta-batch), so finiteness and the
undo of a non-finite step are decided run by run."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..adapters.non_finite import all_finite
from .handoff import _expand


def finite_runs(tensors: Sequence[Tensor], batched: bool) -> Tensor:
    """Every entry finite: a bool, per run ``(R,)`` when batched."""
    if not batched:  # one fused norm, not an elementwise pass per tensor (``all_finite``)
        return torch.tensor(all_finite([t.detach() for t in tensors]))
    with torch.no_grad():
        flags = [torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(dim=1)
                 for t in tensors]
        return torch.stack(flags).all(dim=0)


def keep_runs(ok: Tensor, new, old):
    """Per run: ``new`` where ``ok``, ``old`` elsewhere, over nested dicts / lists of tensors
    whose leading dimension is the run (the loss window, run-last, is handled by the caller);
    other values (a step counter shared as an int, float clocks) are shared by the runs and
    taken from ``new``; a counter kept per run (a ``(R,)`` tensor) is kept per run."""
    if isinstance(new, dict):
        return {k: keep_runs(ok, v, old[k]) if k in old else v for k, v in new.items()}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [keep_runs(ok, a, b) for a, b in zip(new, old)]
    if (isinstance(new, Tensor) and isinstance(old, Tensor) and new.shape == old.shape
            and new.dim() >= 1 and new.shape[0] == ok.shape[0]):
        return torch.where(_expand(ok, new, True), new, old.to(new.dtype))
    return new
