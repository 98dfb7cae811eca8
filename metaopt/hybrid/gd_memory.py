"""The switch's memories on the host between steps of the hybrid's runtime GD path
(``metaopt.hybrid.runtime``).

``HybridRule``'s optimizer-wide state (mode, dwell, evaluations, ‖g₀‖, the last ‖Δθ‖, the loss
window, the last step's features, gate, curvature and ‖g‖) is a dozen scalars. The runtime path
reads them and writes them every step; as tensors that is ~10 tiny tensor ops (µs each) on a
step whose cost is its memory passes. ``Memory`` keeps them as host floats, every one rounded to
the state's dtype, and becomes the rule's tensors only when asked (``settle``: when
``HybridGDODE.hybrid_state`` is read — the reference path, ``state_dict``, traces), so a state
saved after fast steps is the rule's and a run resumed from it decides alike.

The last ‖Δθ‖ = ‖(lr_i·‖b_i‖)_i‖ (the momentum buffers' norms after the update) stays pending
as a tensor until the next step's one host read (or ``settle``) brings it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..garo.host_state import round_to

__all__ = ["Memory", "displacement", "read_memory", "settle"]


@dataclass
class Memory:
    """The memories (module docstring) of ``state``: the ``hybrid_state`` dict they were read
    from, or that the fast steps since have left behind (``dirty``: they are ahead of it)."""
    state: dict
    step: int
    dwell: float
    evaluations: float
    grad_norm0: float
    stage_curvature: float
    displacement: float | None        # None while ``pending``
    losses: list[float]
    dtype: torch.dtype
    device: torch.device
    pending: tuple[Tensor, list[float]] | None = None  # (new ‖b_i‖, the step's lrs)
    last: list[float] = field(default_factory=list)    # probability, curvature, ‖g‖, features
    dirty: bool = False


def displacement(dtype: torch.dtype, norms: list[float], lrs: list[float]) -> float:
    """‖Δθ‖ = ‖(lr_i·‖b_i‖)_i‖, rounded to ``dtype``."""
    return round_to(dtype, [math.sqrt(sum((lr * n) ** 2 for lr, n in zip(lrs, norms)))])[0]


def read_memory(hs: dict) -> Memory | None:
    """The memories of a state the reference path left (or a load); None in an ODE phase (the
    gate very likely keeps it: no passes spent on it)."""
    ref = hs["mode"]
    values = torch.cat([torch.stack([hs[k].reshape(()).to(ref.dtype) for k in (
        "mode", "dwell", "evaluations", "grad_norm0", "stage_curvature", "displacement_norm")]),
        hs["losses"].reshape(-1).to(ref.dtype)]).tolist()
    mode, dwell, evaluations, norm0, stage, disp = values[:6]
    if not mode <= 0.5:
        return None
    return Memory(hs, hs["step"], dwell, evaluations, norm0, stage, disp, values[6:], ref.dtype,
                  ref.device)


def settle(memory: Memory) -> dict:
    """The rule's state: ``memory.state`` with the memories written in as tensors (one tensor,
    its entries views); ``memory`` then describes that dict."""
    if memory.pending is not None:
        norms, lrs = memory.pending
        memory.displacement = displacement(memory.dtype, norms.tolist(), lrs)
        memory.pending = None
    probability, curvature, grad_norm, *features = memory.last
    new = torch.tensor([0.0, memory.dwell, 0.0, probability, memory.evaluations,
                        memory.displacement, curvature, grad_norm, memory.stage_curvature,
                        *memory.losses, *features], dtype=memory.dtype, device=memory.device)
    mode, dwell, gate, probability, evaluations, disp, curvature, grad_norm, stage = \
        new[:9].unbind()
    w = len(memory.losses)
    out = dict(memory.state)
    out.update(step=memory.step, mode=mode, dwell=dwell, gate=gate, probability=probability,
               evaluations=evaluations, displacement_norm=disp, curvature=curvature,
               prev_grad_norm=grad_norm, stage_curvature=stage, losses=new[9:9 + w],
               features=new[9 + w:])
    memory.state, memory.dirty = out, False
    return out
