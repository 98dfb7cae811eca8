"""The hybrid GD–ODE optimizer's runtime GD step: ``HybridRule.step`` in GD mode with the
momentum-SGD module, computed in place.

``metaopt.hybrid.rule`` stays the reference (the pure path of meta-training). In GD mode with
``SGDRule`` as the GD module that step is (module docstring there)::

    features:  r = log‖g‖ − log‖g₀‖,  κ = ‖g − g_prev‖/‖Δθ_prev‖,  s = log(lr·κ),  progress
    gate:      p = policy(features) > 0.5 (kept while dwell < min_dwell)
    GD:        b ← μ·b + (g + λ·θ),  θ ← θ − lr·b          (torch.optim.SGD, no dampening)
    guard:     shorten the step when η·κ̂ > 1.9,  η = max(lr, (1 − μ)·‖Δθ_gd‖/‖g‖)
    refusal:   loss, gradient or new θ not finite → nothing changes

Here it is two memory passes (``metaopt.hybrid.gd_passes``) and one host read. Pass 1 reads g
and g_prev once: the per-tensor ‖g_i‖ and the exact ‖g − g_prev‖. One read brings them to the
host with the loss, the last ‖Δθ‖ and the momentum buffers' norms ‖b_i‖ (left by the previous
step); the features, the gate and the checks are host floats from there (the switch's twins
in ``metaopt.hybrid.switch_host``: a stock learned policy in NumPy, a learned gate within
rounding of 0.5 left undecided), as the GARO path does. The guard and the finiteness of the new
θ are decided before anything moves, from bounds: the triangle inequality
‖b_new,i‖ ≤ μ_i‖b_i‖ + ‖g_i‖ + λ_i‖θ‖ (‖θ‖ exact where a decay reads it, else bounded by its
last exact value plus the steps since, against overflow only) bounds η and every |θ_new|. Where
a bound cannot rule out the guard, an overflow, a non-finite value or an ODE step, the optimizer
takes the reference path, which decides exactly; nothing was mutated before the read. Pass 2:
``torch._fused_sgd_`` (``torch.optim.SGD``'s fused kernel: b and θ in one pass) and the new
‖b_i‖ (‖Δθ‖ for the next secant, ‖b‖ for the next bound). g_prev ← g is no copy on the CPU: the
previous-gradient entry becomes a copy-on-write share of g (``gd_passes.keep_gradient``), so a
closure that sets the gradients to None (``zero_grad``'s default) never pays for it, and one
that writes into ``p.grad`` in place copies it first, as the memory is shared; elsewhere (or
where a storage cannot be shared) g is copied.

The switch's memories (dwell, evaluations, the loss window, ‖g₀‖) stay on the host between
steps of this path, rounded to the state's dtype, valid while the optimizer holds the
``hybrid_state`` dict this path wrote (a reference step or a load replaces it: then they are
read again, and an ODE phase the reference path left is recognised before any pass). Each step
writes the state's tensors (one tensor, its entries views).

It equals the reference up to rounding (``tests/hybrid/test_runtime.py``, float64): the fused
kernel rounds θ − lr·b once (as ``torch.optim.SGD`` does), the secant's numerator is always the
exact ‖g − g_prev‖ (the reference uses the dot-product identity where it does not cancel), the
features and the gate are computed in float64 on the host and rounded to the state's dtype, and
‖Δθ‖ is read from lr·‖b‖ (the motion before θ's rounding; where a step is below θ's rounding
the reference's measured motion, and so its guard, can differ). Every decision is a function of
the optimizer's state and the norms computed alike from it, so a run resumed from a state_dict
takes the same path as the original.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..garo.host_state import round_to
from ..rules.sgd import SGDRule
from .gd_passes import (
    CHUNK,
    can_keep,
    chunks,
    difference_pass,
    fusable,
    keep_gradient,
    norms,
    update_pass,
)
from .stability import GD_STABILITY_BOUND, SAFETY
from .switch_host import HostGate, host_features, host_progress

__all__ = ["GDRuntime", "applies", "join_state", "own_copy", "split_state"]

_REQUIRED = frozenset(("step", "mode", "dwell", "evaluations", "displacement_norm", "grad_norm0",
                       "prev_grad_norm", "losses", "stage_curvature"))
_GROW = 1 + 1e-4  # relative slack of the bounds against rounding (they decide, never the values)
_GD_LIMIT = SAFETY * GD_STABILITY_BOUND
_LIMITS: dict = {}  # dtype -> a quarter of its largest finite value (the overflow bound)


def _limit(dtype: torch.dtype) -> float:
    return _LIMITS.get(dtype) or _LIMITS.setdefault(dtype, torch.finfo(dtype).max / 4)


def split_state(state: dict) -> tuple[dict, dict]:
    """Per-parameter lists vs optimizer-wide values of a (one-level nested) rule state."""
    per_param, shared = {}, {}
    for key, value in state.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = key if sub is None else f"{key}.{sub}"
            (per_param if isinstance(v, list) else shared)[name] = v
    return per_param, shared


def join_state(flat: dict) -> dict:
    """The inverse of ``split_state``."""
    out: dict = {}
    for name, value in flat.items():
        if "." in name:
            key, sub = name.split(".", 1)
            out.setdefault(key, {})[sub] = value
        else:
            out[name] = value
    return out


def own_copy(value: Tensor, buffer) -> Tensor:
    """``value.clone()``, written into ``buffer`` where it is a tensor of the same kind."""
    if (isinstance(buffer, Tensor) and buffer is not value and buffer.shape == value.shape
            and buffer.dtype == value.dtype and buffer.device == value.device):
        return buffer.copy_(value)
    return value.clone()


def applies(rule, gate) -> bool:
    """Whether the runtime path can take this rule's GD steps: plain momentum SGD, the secant,
    one run, a hard gate, an ODE module whose state a GD step does not change."""
    ode_keys = split_state({"ode": rule.ode.init([torch.zeros(1)])})[0]
    return (type(rule.gd) is SGDRule and rule.curvature == "secant" and not rule.batched
            and not rule.branchless and not rule.feature_gradients
            and bool(getattr(gate, "hard", False))
            and not getattr(gate, "straight_through", False)
            and not {"ode.velocity", "ode.time"} & set(ode_keys))



@dataclass
class _Memory:
    """The switch's memories on the host, as ``state`` (the ``hybrid_state`` dict they were
    read from or written to: valid while the optimizer still holds that very dict) holds them,
    rounded to its dtype. Its displacement norm stays a tensor: read with the next step's."""
    state: dict
    dwell: float
    evaluations: float
    grad_norm0: float
    stage_curvature: float
    losses: list[float]


def _read_memory(hs: dict) -> _Memory | None:
    """The memories of a state the reference path left (or a load); None in an ODE phase (the
    gate very likely keeps it: no passes spent on it)."""
    head = torch.stack([hs[k].reshape(()) for k in ("mode", "dwell", "evaluations",
                                                     "grad_norm0", "stage_curvature")])
    mode, dwell, evaluations, norm0, stage = torch.cat([head, hs["losses"].reshape(-1).to(
        head.dtype)]).tolist()[:5]
    if not mode <= 0.5:
        return None
    return _Memory(hs, dwell, evaluations, norm0, stage, hs["losses"].tolist())


class GDRuntime:
    """Caches of the runtime path (never state: rebuilt from the state when they do not match
    it): the switch's memories on the host, scratch for g − g_prev, the momentum buffers' last
    norms, a bound on ‖θ‖, the gate's host twin."""

    def __init__(self):
        self.memory: _Memory | None = None
        self.scratch: Tensor | None = None  # one chunk of g − g_prev
        self.buffer_norms: tuple | None = None  # (buffers, their versions, per-tensor norms)
        self.theta_bound: tuple | None = None   # (params, their versions, bound on ‖θ‖)
        self.constants: tuple | None = None     # (lrs, dtype, device), their tensor
        self.gate: HostGate | None = None

    @staticmethod
    def _cached(cached, tensors: list[Tensor]):
        if cached is not None and len(cached[0]) == len(tensors) and all(
                map(operator.is_, cached[0], tensors)) and cached[1] == [
                t._version for t in tensors]:
            return cached[2]
        return None

    @torch.no_grad()
    def step(self, opt, params: list[Tensor], grads: list[Tensor], loss,
             lrs: list[float], moms: list[float], decays: list[float]) -> bool:
        """One GD step in place; False (nothing changed) where the reference path must run.
        ``loss``: the closure's (a one-element tensor or a number) or None."""
        rule, hs = opt.rule, opt.hybrid_state
        if not _REQUIRED <= hs.keys() or hs["step"] < 1 or not all(m > 0 for m in moms):
            return False
        memory = self.memory
        if memory is None or memory.state is not hs:
            memory = self.memory = _read_memory(hs)
            if memory is None:
                return False
        try:
            bufs = [opt.state[p]["gd.momentum_buffer"] for p in params]
            prev = [opt.state[p]["prev_grads"] for p in params]
        except KeyError:
            return False
        if not fusable(params + grads + bufs + prev) or any(
                a.shape != b.shape for a, b in zip(params, prev)):
            return False
        dtype, device = params[0].dtype, params[0].device
        parts = chunks(params)
        if parts and (self.scratch is None or self.scratch.dtype != dtype):
            self.scratch = params[0].new_empty(CHUNK)
        bnorms = self._cached(self.buffer_norms, bufs)
        if bnorms is None:
            bnorms = norms(bufs, parts)
        # ‖θ‖ itself where a decay reads it (then the guard's bound is a function of the state,
        # so a resumed run decides as the original); else a bound, only against overflow
        theta = None if any(decays) else self._cached(self.theta_bound, params)
        gnorms, diff = difference_pass(grads, prev, parts, self.scratch)
        extra = [diff, hs["displacement_norm"].reshape(()).to(dtype)]
        if theta is None:
            extra.append(torch.linalg.vector_norm(norms(params, parts)))
        host_loss = None
        if isinstance(loss, Tensor):
            extra.append(loss.detach().reshape(()).to(device, dtype))
        elif loss is not None:
            host_loss = round_to(dtype, [float(loss)])[0]
        values = torch.cat([gnorms, bnorms, torch.stack(extra)]).tolist()  # the one host read
        k = len(params)
        if theta is None:
            theta = values[2 * k + 2]
        if isinstance(loss, Tensor):
            host_loss = values[-1]
        diff, disp = values[2 * k], values[2 * k + 1]
        if not math.isfinite(sum(values) + theta + (host_loss or 0.0)):
            return False  # (a non-finite loss or gradient: the reference refuses the step)
        decided = self._decide(opt, rule, hs["step"], memory, values[:k], values[k:2 * k], diff,
                               disp, theta, host_loss, lrs, moms, decays, dtype, device)
        if decided is None:
            return False
        keep = can_keep(grads)
        new_bnorms = update_pass(params, grads, bufs, None if keep else prev, parts, lrs, moms,
                                 decays)
        kept = keep_gradient(grads) if keep else None
        if kept is not None:  # g_prev ← g, shared copy-on-write (gd_passes.keep_gradient)
            for p, g in zip(params, kept):
                opt.state[p]["prev_grads"] = g
        elif keep:
            torch._foreach_copy_(prev, grads)
        key = (lrs, dtype, device)
        if self.constants is None or self.constants[0] != key:
            self.constants = (key, torch.tensor(lrs, dtype=dtype, device=device))
        displacement = torch.linalg.vector_norm(self.constants[1] * new_bnorms)
        self.buffer_norms = (bufs, [b._version for b in bufs], new_bnorms)
        step_bound, scalars, losses, features = decided
        self.theta_bound = (params, [p._version for p in params],
                            (theta + step_bound) * _GROW)
        new = torch.tensor(scalars + losses + features, dtype=dtype, device=device)
        mode, dwell, gate, probability, evaluations, kappa, gnorm, stage = new[:8].unbind()
        w = len(losses)
        opt.hybrid_state = hs = dict(hs)
        hs.update(step=hs["step"] + 1, mode=mode, dwell=dwell, gate=gate,
                  probability=probability, evaluations=evaluations,
                  displacement_norm=displacement.to(hs["displacement_norm"].dtype),
                  curvature=kappa, prev_grad_norm=gnorm, losses=new[8:8 + w],
                  features=new[8 + w:], stage_curvature=stage)
        self.memory = _Memory(hs, scalars[1], scalars[4], memory.grad_norm0, 0.0, losses)
        return True

    def _decide(self, opt, rule, step: int, memory: _Memory, gnorms, bnorms, diff, disp, theta,
                loss, lrs, moms, decays, dtype, device):
        """The features, the gate and the guard's bounds on host floats (module docstring):
        None unless this is a GD step that this path may take; else the bound on ‖Δθ‖ and the
        new memories (rounded to ``dtype``)."""
        gnorm, kappa = round_to(dtype, [math.sqrt(sum(g * g for g in gnorms)),
                                        diff / disp if disp > 0 else 0.0])
        stability_lr = float(max(lrs))
        losses, seen = memory.losses, min(step, rule.window)
        if loss is not None:
            losses = [*losses[1:], loss]
            seen += 1
        progress = host_progress(losses, seen if loss is not None else 0)
        features = round_to(dtype, host_features(gnorm, memory.grad_norm0, kappa, stability_lr,
                                                 progress, 0.0, memory.dwell))
        if self.gate is None or self.gate.gate is not opt.gate or self.gate.dtype != dtype:
            self.gate = HostGate(opt.gate, dtype, device)
        p = self.gate(features, ())
        if p is None or (p > 0.5 and memory.dwell >= rule.min_dwell):
            return None  # a learned gate within rounding of 0.5, or an ODE step (once the
            # mode may change: min_dwell)
        # bounds: ‖b_new,i‖ ≤ μ_i‖b_i‖ + ‖g_i‖ + λ_i‖θ‖, ‖Δθ_gd‖ ≤ ‖(lr_i·bound_i)‖
        step_bound = math.sqrt(sum((lr * (m * b + g + wd * theta) * _GROW) ** 2 for lr, m, b, g, wd
                                   in zip(lrs, moms, bnorms, gnorms, decays))) * _GROW
        discount = 1.0 - min(max(max(moms), 0.0), 1.0)
        eta = max(discount * step_bound / gnorm if gnorm > 0 else 0.0, stability_lr)
        if not (eta * max(kappa, memory.stage_curvature) * _GROW <= _GD_LIMIT
                and theta + step_bound <= _limit(dtype)):
            return None  # the guard may shorten this step, or θ might overflow
        scalars = [0.0, memory.dwell + 1, 0.0, p, memory.evaluations + 1, kappa, gnorm, 0.0]
        return step_bound, round_to(dtype, scalars), losses, features
