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

The switch's memories (dwell, evaluations, the loss window, ‖g₀‖, the last ‖Δθ‖, the last
step's features) stay on the host between steps of this path (``metaopt.hybrid.gd_memory``,
rounded to the state's dtype) and become the rule's tensors when ``hybrid_state`` is read (the
reference path, ``state_dict``, traces). A reference step or a load replaces that dict: then
they are read again, and an ODE phase the reference path left is recognised before any pass.

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

import torch
from torch import Tensor

from ..garo.host_state import round_to
from ..rules.sgd import SGDRule
from .gd_memory import Memory, displacement, read_memory, settle
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



class GDRuntime:
    """The runtime path's host memories (``metaopt.hybrid.gd_memory``: the state while
    ``dirty``) and caches (never state: rebuilt when they do not match it): scratch for
    g − g_prev, the momentum buffers' last norms, a bound on ‖θ‖, the gate's host twin, the
    parameters' state entries."""

    def __init__(self):
        self.memory: Memory | None = None  # the switch's memories (gd_memory)
        self.scratch: Tensor | None = None  # one chunk of g − g_prev
        self.buffer_norms: tuple | None = None  # (buffers, their versions, per-tensor norms)
        self.theta_bound: tuple | None = None   # (params, their versions, bound on ‖θ‖)
        self.gate: HostGate | None = None
        self.layout: tuple | None = None  # (opt.state, params, sizes, (their states, chunks))

    @staticmethod
    def _cached(cached, tensors: list[Tensor]):
        if cached is not None and len(cached[0]) == len(tensors) and all(
                map(operator.is_, cached[0], tensors)) and cached[1] == [
                t._version for t in tensors]:
            return cached[2]
        return None

    def _layout(self, opt, params: list[Tensor]):
        """(the parameters' state dicts, ``chunks``), cached while the parameters, their sizes
        and ``opt.state`` (a load rebinds it) stay."""
        cached = self.layout
        if cached is not None and cached[0] is opt.state and len(cached[1]) == len(params) \
                and all(map(operator.is_, cached[1], params)) \
                and cached[2] == [p.numel() for p in params]:
            return cached[3]
        states = [opt.state[p] for p in params]
        self.layout = (opt.state, params, [p.numel() for p in params], (states, chunks(params)))
        return self.layout[3]

    # -- the state ---------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """The host memories are ahead of the optimizer's ``hybrid_state`` tensors."""
        return self.memory is not None and self.memory.dirty

    def settle(self, hybrid_state: dict) -> dict:
        """``hybrid_state`` with the host memories written in (the rule's tensors)."""
        return settle(self.memory) if self.dirty else hybrid_state

    def forget(self) -> None:
        """The optimizer's state was replaced: the host memories are stale."""
        self.memory = None

    # -- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, opt, params: list[Tensor], grads: list[Tensor], loss,
             lrs: list[float], moms: list[float], decays: list[float]) -> bool:
        """One GD step in place; False (nothing changed) where the reference path must run.
        ``loss``: the closure's (a one-element tensor or a number) or None."""
        hs = opt._hybrid_state  # (as the fast steps left it: the memories are ahead)
        if not _REQUIRED <= hs.keys() or hs["step"] < 1 or not all(m > 0 for m in moms):
            return False
        memory = self.memory
        if memory is None or memory.state is not hs:
            memory = self.memory = read_memory(hs)
            if memory is None:
                return False
        layout = self._layout(opt, params)
        if layout is None:
            return False
        states, parts = layout
        try:
            bufs = [s["gd.momentum_buffer"] for s in states]
            prev = [s["prev_grads"] for s in states]
        except KeyError:
            return False
        if not fusable(params + grads + bufs + prev) or any(
                a.shape != b.shape for a, b in zip(params, prev)):
            return False
        dtype, device = params[0].dtype, params[0].device
        if dtype != memory.dtype:
            return False
        if parts and (self.scratch is None or self.scratch.dtype != dtype):
            self.scratch = params[0].new_empty(CHUNK)
        bnorms = self._cached(self.buffer_norms, bufs)
        if bnorms is None:
            bnorms = norms(bufs, parts)
        # ‖θ‖ itself where a decay reads it (then the guard's bound is a function of the state,
        # so a resumed run decides as the original); else a bound, only against overflow
        theta = None if any(decays) else self._cached(self.theta_bound, params)
        gnorms, diff = difference_pass(grads, prev, parts, self.scratch)
        read = [gnorms, bnorms, diff.reshape(1)]
        if memory.pending is not None:
            read.append(memory.pending[0])
        if theta is None:
            read.append(torch.linalg.vector_norm(norms(params, parts)).reshape(1))
        if isinstance(loss, Tensor):
            read.append(loss.detach().reshape(1).to(device, dtype))
        values = torch.cat(read).tolist()  # the one host read
        k = len(params)
        at = 2 * k + 1
        if memory.pending is not None:
            memory.displacement = displacement(dtype, values[at:at + k], memory.pending[1])
            memory.pending = None
            at += k
        if theta is None:
            theta = values[at]
        host_loss = None if loss is None else values[-1] if isinstance(loss, Tensor) else \
            round_to(dtype, [float(loss)])[0]
        if not math.isfinite(sum(values) + theta + (host_loss or 0.0)):
            return False  # (a non-finite loss or gradient: the reference refuses the step)
        decided = self._decide(opt, opt.rule, memory, values[:k], values[k:2 * k],
                               values[2 * k], theta, host_loss, lrs, moms, decays, dtype, device)
        if decided is None:
            return False
        keep = can_keep(grads)
        new_bnorms = update_pass(params, grads, bufs, None if keep else prev, parts, lrs, moms,
                                 decays)
        kept = keep_gradient(grads) if keep else None
        if kept is not None:  # g_prev ← g, shared copy-on-write (gd_passes.keep_gradient)
            for state, g in zip(states, kept):
                state["prev_grads"] = g
        elif keep:
            torch._foreach_copy_(prev, grads)
        self.buffer_norms = (bufs, [b._version for b in bufs], new_bnorms)
        step_bound, dwell, evaluations, losses, last = decided
        self.theta_bound = (params, [p._version for p in params],
                            (theta + step_bound) * _GROW)
        memory.step += 1
        memory.dwell, memory.evaluations, memory.stage_curvature = dwell, evaluations, 0.0
        memory.losses, memory.last, memory.pending = losses, last, (new_bnorms, lrs)
        memory.displacement, memory.dirty = None, True
        return True

    def _decide(self, opt, rule, memory: Memory, gnorms, bnorms, diff, theta, loss, lrs, moms,
                decays, dtype, device):
        """The features, the gate and the guard's bounds on host floats (module docstring):
        None unless this is a GD step that this path may take; else the bound on ‖Δθ‖ and the
        new memories (rounded to ``dtype``)."""
        disp = memory.displacement
        gnorm, kappa = round_to(dtype, [math.sqrt(sum(g * g for g in gnorms)),
                                        diff / disp if disp > 0 else 0.0])
        stability_lr = float(max(lrs))
        losses, seen = memory.losses, min(memory.step, rule.window)
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
        dwell, evaluations, p = round_to(dtype, [memory.dwell + 1, memory.evaluations + 1, p])
        return step_bound, dwell, evaluations, losses, [p, kappa, gnorm, *features]
