"""What one module of the hybrid GD–ODE optimizer is handed after the other moved θ.

``HybridRule`` (``metaopt.hybrid.rule``) computes a GD and an ODE proposal and takes one (or a
blend); the module that did not move θ must still continue from where θ is:

* ``gd_handoff``: the ODE module after a GD step — a Nesterov flow's velocity is the motion
  taken over the ODE step, V = Δθ/h, and a flow's clock advances by h;
* ``observe_motion``: the GD module after any step — a displacement it accumulates (scale-free
  GARO's δ = θ_t − θ_0, whose running maximum ‖δ‖ sets DoG's step-size estimate d_t) is the
  displacement actually taken, δ ← δ_gd + (θ_{t+1} − θ_gd), exactly δ + (θ_{t+1} − θ_t), so an
  ODE step's distance counts toward the step size GD resumes with;
* ``blend``: θ_gd + p·(θ_ode − θ_gd), the relaxed gate's update (a selection when hard).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..rules.base import State, TensorList

__all__ = ["blend", "gd_handoff", "observe_motion"]


def _expand(scalar: Tensor, like: Tensor, batched: bool) -> Tensor:
    return scalar.reshape(-1, *([1] * (like.dim() - 1))) if batched else scalar


def blend(gd: Sequence[Tensor], ode: Sequence[Tensor], gate: Tensor, hard: bool,
          batched: bool = False) -> TensorList:
    """θ_gd + p·(θ_ode − θ_gd); with a hard gate, an exact selection."""
    out = []
    for a, b in zip(gd, ode):
        p = _expand(gate, a, batched).to(a.dtype)
        out.append(torch.where(p > 0.5, b, a) if hard else a + p * (b - a))
    return out


def _safe_div(d: Tensor, h) -> Tensor:
    """d / h, and 0 where h == 0 (a frozen group has no velocity)."""
    if isinstance(h, Tensor):
        return torch.where(h > 0, d / torch.where(h > 0, h, torch.ones_like(h)), d * 0)
    return d / h if h != 0 else d * 0


def gd_handoff(ode_state: State, displacement: Sequence[Tensor], ode_lrs: Sequence) -> State:
    """The ODE module's state after a GD step: velocity = Δθ/h, clock + h (module docstring)."""
    out = dict(ode_state)
    if "velocity" in out:
        out["velocity"] = [_safe_div(d, h) for d, h in zip(displacement, ode_lrs)]
    if isinstance(out.get("time"), list):
        out["time"] = [t + float(h.detach() if isinstance(h, Tensor) else h)  # (h may carry a
                       for t, h in zip(out["time"], ode_lrs)]             # GARO graph)
    return out


def observe_motion(gd_state: State, proposed: Sequence[Tensor],
                   taken: Sequence[Tensor]) -> State:
    """The GD module's ``displacement`` corrected to the motion taken (module docstring); a
    state without one is returned as it is. Where the GD proposal was taken unchanged the
    correction adds exact zeros, so the state is bit-identical to the module's own."""
    if "displacement" not in gd_state:
        return gd_state
    return dict(gd_state, displacement=[d + (t - q) for d, q, t in
                                        zip(gd_state["displacement"], proposed, taken)])
