"""The hybrid GD–ODE optimizer's runtime GD step: ``HybridRule.step`` in GD mode with the
momentum-SGD module, computed in place.

``metaopt.hybrid.rule`` stays the reference (the pure path of meta-training). In GD mode with
``SGDRule`` as the GD module that step is (module docstring there)::

    features:  r = log‖g‖ − log‖g₀‖,  κ = ‖g − g_prev‖/‖Δθ_prev‖,  s = log(lr·κ),  progress
    gate:      p = policy(features) > 0.5 (kept while dwell < min_dwell)
    GD:        b ← μ·b + (g + λ·θ),  θ ← θ − lr·b          (torch.optim.SGD, no dampening)
    guard:     shorten the step when η·κ̂ > 1.9,  η = max(lr, (1 − μ)·‖Δθ_gd‖/‖g‖)
    refusal:   loss, gradient or new θ not finite → nothing changes

Here it runs in few memory passes and one host read. Pass 1 reads g and g_prev once: the
per-tensor ‖g_i‖ and the exact ‖g − g_prev‖ (large CPU tensors a cache-sized chunk at a time,
through one chunk of scratch, as ``metaopt.garo.chunked`` does). The features, the gate and the
checks below are tensors; one read of their verdict says whether this is a GD step this path may
take. The guard and the finiteness of the new θ are decided before anything moves, from bounds:
the triangle inequality ‖b_new,i‖ ≤ μ_i‖b_i‖ + ‖g_i‖ + λ_i‖θ‖ (‖b_i‖ left by the previous step,
‖θ‖ exact where a decay reads it, else bounded by its last exact value plus the steps since,
against overflow only) bounds η and every |θ_new|. Where a bound cannot rule out the guard, an
overflow, a non-finite value or an ODE step, the optimizer takes the reference path, which
decides exactly; nothing was mutated before the read. Pass 2: ``torch._fused_sgd_``
(``torch.optim.SGD``'s fused kernel: b and θ in one pass), the new ‖b_i‖ (‖Δθ‖ for the next
secant, ‖b‖ for the next bound) and the copy of g into the previous-gradient buffer, chunk by
chunk while each chunk is in cache. (After a step of the reference path the mode it left is
read first: an ODE phase skips this path without computing its features.)

It equals the reference up to rounding (``tests/hybrid/test_runtime.py``, float64): the fused
kernel rounds θ − lr·b once (as ``torch.optim.SGD`` does), the secant's numerator is always the
exact ‖g − g_prev‖ (the reference uses the dot-product identity where it does not cancel), and
‖Δθ‖ is read from lr·‖b‖ (the motion before θ's rounding; where a step is below θ's rounding
the reference's measured motion, and so its guard, can differ). Every decision is a function of
the optimizer's state and the norms computed alike from it, so a run resumed from a state_dict
takes the same path as the original.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..rules.sgd import SGDRule
from .criteria import _TINY, relative_progress, switch_features
from .stability import GD_STABILITY_BOUND, SAFETY

__all__ = ["GDRuntime", "applies", "join_state", "own_copy", "split_state"]

_REQUIRED = frozenset(("step", "mode", "dwell", "evaluations", "displacement_norm", "grad_norm0",
                       "prev_grad_norm", "losses", "stage_curvature"))
_MARGIN = 1e-4  # relative slack of the bounds against rounding (they decide, never the values)
_GD_LIMIT = SAFETY * GD_STABILITY_BOUND


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


def _fusable(tensors: Sequence[Tensor]) -> bool:
    first = tensors[0]
    return first.is_floating_point() and first.device.type in ("cpu", "cuda") and all(
        t.dtype == first.dtype and t.device == first.device and not t.is_sparse
        and t.is_contiguous() for t in tensors)


_CHUNK_FROM, _CHUNK = 1 << 18, 1 << 17  # large CPU tensors: cache-sized chunks (below)
_FUSED = dict(dampening=0.0, nesterov=False, maximize=False, is_first_step=False)


def _chunks(tensors: Sequence[Tensor]) -> list[tuple[int, int, int]]:
    """(tensor, start, stop) of the large CPU tensors' chunks: a chunk's operands stay in cache
    from one op to the next (on a ~1M-parameter CPU model the passes are the step's cost, as in
    ``metaopt.garo.chunked``)."""
    return [(i, a, min(a + _CHUNK, t.numel())) for i, t in enumerate(tensors)
            if t.device.type == "cpu" and t.numel() >= _CHUNK_FROM
            for a in range(0, t.numel(), _CHUNK)]


def _chunked_norm(dots: list[Tensor]) -> Tensor:
    return torch.stack(dots).sum().sqrt()


def _norms(tensors: Sequence[Tensor], chunks) -> Tensor:
    """Per-tensor 2-norms, large tensors summed chunk by chunk: the same values the update pass
    leaves in its cache, so a rebuilt cache (after a copy or a load) decides alike."""
    big = {i for i, _, _ in chunks}
    small = [i for i in range(len(tensors)) if i not in big]
    norms: list = [None] * len(tensors)
    for i, n in zip(small, torch._foreach_norm([tensors[i] for i in small]) if small else []):
        norms[i] = n
    parts: dict[int, list[Tensor]] = {}
    for i, a, b in chunks:
        c = tensors[i].view(-1)[a:b]
        parts.setdefault(i, []).append(torch.dot(c, c))
    for i, dots in parts.items():
        norms[i] = _chunked_norm(dots)
    return torch.stack(norms)


def _difference_pass(grads, prev, chunks, scratch) -> tuple[Tensor, Tensor]:
    """Per-tensor ‖g_i‖ and the total ‖g − g_prev‖, reading g and g_prev once."""
    big = {i for i, _, _ in chunks}
    small = [i for i in range(len(grads)) if i not in big]
    norms: list = [None] * len(grads)
    squares = []
    if small:
        gs = [grads[i] for i in small]
        for i, n in zip(small, torch._foreach_norm(gs)):
            norms[i] = n
        squares += [n.square() for n in torch._foreach_norm(
            torch._foreach_sub(gs, [prev[i] for i in small]))]
    parts: dict[int, list[Tensor]] = {}
    for i, a, b in chunks:
        g, s = grads[i].view(-1)[a:b], scratch[:b - a]
        parts.setdefault(i, []).append(torch.dot(g, g))
        torch.sub(g, prev[i].view(-1)[a:b], out=s)
        squares.append(torch.dot(s, s))
    for i, dots in parts.items():
        norms[i] = _chunked_norm(dots)
    return torch.stack(norms), _chunked_norm(squares)


def _update_pass(params, grads, bufs, prev, chunks, lrs, moms, decays) -> Tensor:
    """b ← μ·b + (g + λ·θ), θ ← θ − lr·b (``torch._fused_sgd_``), g_prev ← g; returns the
    new ‖b_i‖."""
    big = {i for i, _, _ in chunks}
    norms: list = [None] * len(params)
    buckets: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(lrs, moms, decays)):
        if i not in big:
            buckets.setdefault(key, []).append(i)
    for (lr, mom, wd), index in buckets.items():
        torch._fused_sgd_([params[i] for i in index], [grads[i] for i in index],
                          [bufs[i] for i in index], weight_decay=wd, momentum=mom, lr=lr,
                          **_FUSED)
    small = [i for key in buckets.values() for i in key]
    if small:
        for i, n in zip(small, torch._foreach_norm([bufs[i] for i in small])):
            norms[i] = n
        torch._foreach_copy_([prev[i] for i in small], [grads[i] for i in small])
    parts: dict[int, list[Tensor]] = {}
    for i, a, b in chunks:
        g, buf = grads[i].view(-1)[a:b], bufs[i].view(-1)[a:b]
        torch._fused_sgd_([params[i].view(-1)[a:b]], [g], [buf], weight_decay=decays[i],
                          momentum=moms[i], lr=lrs[i], **_FUSED)
        parts.setdefault(i, []).append(torch.dot(buf, buf))
        prev[i].view(-1)[a:b].copy_(g)
    for i, dots in parts.items():
        norms[i] = _chunked_norm(dots)
    return torch.stack(norms)


class GDRuntime:
    """Caches of the runtime path (never state: rebuilt from the state when they do not match
    it): scratch buffers for g − g_prev, the momentum buffers' last norms, a bound on ‖θ‖."""

    def __init__(self):
        self.scratch: Tensor | None = None  # one chunk of g − g_prev
        self.buffer_norms: tuple | None = None  # (buffers, their versions, per-tensor norms)
        self.theta_bound: tuple | None = None   # (params, their versions, bound on ‖θ‖)
        self.after_fast = False  # the last step was taken here (then its mode was GD)
        self.constants: tuple | None = None     # (hyperparameters, their tensors)

    def _norms_of(self, cached, tensors: list[Tensor]):
        if cached is not None and len(cached[0]) == len(tensors) and all(
                a is b for a, b in zip(cached[0], tensors)) and cached[1] == [
                t._version for t in tensors]:
            return cached[2]
        return None

    @torch.no_grad()
    def step(self, opt, params: list[Tensor], grads: list[Tensor], loss: Tensor | None,
             lrs: list[float], moms: list[float], decays: list[float]) -> bool:
        """One GD step in place; False (nothing changed) where the reference path must run.
        ``loss``: the closure's (a one-element tensor or a number) or None."""
        rule, hs = opt.rule, opt.hybrid_state
        loss = None if loss is None else torch.as_tensor(loss).detach().to(params[0])
        if not _REQUIRED <= hs.keys() or hs["step"] < 1 or not all(m > 0 for m in moms):
            return False
        # after a step of the reference path: the mode it left (no read after a GD step here)
        after_fast, self.after_fast = self.after_fast, False
        if not after_fast and float(hs["mode"]) > 0.5:
            return False  # an ODE phase: the gate very likely keeps it
        try:
            bufs = [opt.state[p]["gd.momentum_buffer"] for p in params]
            prev = [opt.state[p]["prev_grads"] for p in params]
        except KeyError:
            return False
        tensors = params + grads + bufs + prev
        if not _fusable(tensors) or any(a.shape != b.shape for a, b in zip(params, prev)):
            return False
        chunks = _chunks(params)
        if chunks and (self.scratch is None or self.scratch.numel() < _CHUNK
                       or self.scratch.dtype != params[0].dtype):
            self.scratch = params[0].new_empty(_CHUNK)
        bnorms = self._norms_of(self.buffer_norms, bufs)
        if bnorms is None:
            bnorms = _norms(bufs, chunks)
        # ‖θ‖ itself where a decay reads it (then the guard's bound is a function of the state,
        # so a resumed run decides as the original); else a bound, only against overflow
        theta = None if any(decays) else self._norms_of(self.theta_bound, params)
        if theta is None:
            theta = torch.linalg.vector_norm(_norms(params, chunks))
        dtype, device = params[0].dtype, params[0].device
        # features (HybridRule.features), as tensors in the state's dtype
        gnorms, diff = _difference_pass(grads, prev, chunks, self.scratch)
        gnorm = torch.linalg.vector_norm(gnorms)
        disp = hs["displacement_norm"]
        kappa = torch.where(disp > 0, diff / disp, 0.0)  # (0/0 and x/0 are not selected)
        ratio = torch.log(gnorm + _TINY) - torch.log(hs["grad_norm0"] + _TINY)
        stability_lr = float(max(lrs))
        stability = torch.log(kappa * stability_lr + _TINY)
        losses, seen = hs["losses"], min(hs["step"], rule.window)
        if loss is not None:
            value = loss.detach().to(losses.dtype).reshape(losses.shape[1:])
            losses = torch.cat([losses[1:], value.unsqueeze(0)])
            seen += 1
        progress = relative_progress(losses, seen if loss is not None else 0)
        feats = switch_features(ratio, stability, progress, hs["mode"], hs["dwell"])
        raw = opt.gate.gate(feats)
        probability = raw.detach() if isinstance(raw, Tensor) else torch.as_tensor(raw)
        locked = (hs["dwell"] < rule.min_dwell).to(raw.dtype)
        gate = locked * hs["mode"] + (1 - locked) * (raw > 0.5).to(feats.dtype)
        # bounds: ‖b_new,i‖ ≤ μ_i‖b_i‖ + ‖g_i‖ + λ_i‖θ‖, ‖Δθ_gd‖ ≤ ‖(lr_i·bound_i)‖
        grow = 1 + _MARGIN
        key = (lrs, moms, decays, dtype, device)
        if self.constants is None or self.constants[0] != key:
            self.constants = (key, torch.tensor([lrs, moms, decays], dtype=dtype, device=device))
        lr_t, mom_t, decay_t = self.constants[1]
        bound_b = (mom_t * bnorms + gnorms + decay_t * theta) * grow
        step_bound = torch.linalg.vector_norm(lr_t * bound_b) * grow
        discount = 1.0 - min(max(max(moms), 0.0), 1.0)
        eta = torch.where(gnorm > 0, step_bound / gnorm, 0.0).mul_(discount).clamp_(
            min=stability_lr)
        gd_kappa = torch.maximum(kappa, hs["stage_curvature"].to(kappa.dtype))
        # every check ≤ 0 (NaN fails it): a GD step, the guard cleared, no overflow, all finite
        checks = torch.stack([gate - 0.5, eta * gd_kappa * grow - _GD_LIMIT,
                              theta + step_bound - torch.finfo(dtype).max / 4,
                              gnorm * 0, diff * 0, bound_b.sum() * 0]
                             + ([] if loss is None else [loss.detach().sum().to(dtype) * 0]))
        if not bool((checks <= 0).all()):  # the one host read
            return False
        new_bnorms = _update_pass(params, grads, bufs, prev, chunks, lrs, moms, decays)
        displacement = torch.linalg.vector_norm(lr_t * new_bnorms)
        self.buffer_norms = (bufs, [b._version for b in bufs], new_bnorms)
        self.theta_bound = (params, [p._version for p in params], (theta + displacement) * grow)
        mode = (gate > 0.5).to(feats.dtype)
        same = (mode == hs["mode"]).to(feats.dtype)
        self.after_fast = True
        opt.hybrid_state = hs = dict(hs)
        hs.update(step=hs["step"] + 1, mode=mode, dwell=same * hs["dwell"] + 1, gate=gate,
                  probability=probability.to(feats.dtype),
                  evaluations=hs["evaluations"] + 1,  # (+ probes + gate·stages: 0)
                  displacement_norm=displacement.to(disp.dtype), curvature=kappa,
                  prev_grad_norm=gnorm, losses=losses, features=feats,
                  stage_curvature=torch.zeros_like(kappa) * mode)
        return True

