"""GARO's runtime step, ``GARORule.apply_``: ``GARORule.apply`` computed in place, in few ops.

Seed: ``shared/seeds/garo-global-adaptive-recurrent-optimizer.md``; the math is that of
``metaopt.rules.garo`` (module docstring there), which stays the reference: the pure ``apply``
path of meta-training. On a small model a step is dispatch-bound (each tiny tensor op costs a
few µs whatever its size), so this path spends as few ops as it can:

* one foreach norm call for the gradients and parameters, one for the update directions (a BLAS
  dot for tensors from ``_DOT_NUMEL`` elements on, ~2× faster than the norm kernel on CPU);
* the gradient-independent inputs — step count, horizon, whether a loss was seen, the previous
  step's features, the loss — and then the segment norms are read on the host (free on CPU;
  on GPU the first read waits for the backward pass, as the controller's outputs must anyway),
  so the features, step embedding, validity mask, progress, the relative features' references,
  the ε scale and Adam's bias correction are host floats, and a non-finite gradient or loss
  skips the step before the controller runs;
* the controller's ``runtime_step`` (statistics on the host, fused GRU and heads on the
  device) when it is a stock ``GAROController``;
* one host transfer of ``[lr, mom, wd]``, then foreach updates with Python scalars, tensors
  grouped by equal hyperparameters (``torch.optim.SGD``'s fused kernel for the sgd direction).

It equals ``apply`` up to rounding: ``tests/rules/test_garo_runtime.py`` checks it in float64,
for both feature sets, both directions, with and without a loss, one and several segments.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..controllers.garo import GAROController
from .base import State, per_tensor
from .garo import _TINY, _TINY_LOSS

_DOT_NUMEL = 1 << 16  # from here on a tensor's norm is a BLAS dot (scripts/benchmarks/garo.py)


def fused_norms(tensors: Sequence[Tensor]) -> Tensor:
    """(len,) 2-norms without a graph: one ``_foreach_norm`` call, large tensors by BLAS dot."""
    big = [i for i, t in enumerate(tensors) if t.numel() >= _DOT_NUMEL]
    if not big:
        return torch.stack(torch._foreach_norm(list(tensors)))
    norms: list[Optional[Tensor]] = [None] * len(tensors)
    small = [i for i, t in enumerate(tensors) if t.numel() < _DOT_NUMEL]
    if small:
        for i, norm in zip(small, torch._foreach_norm([tensors[i] for i in small])):
            norms[i] = norm
    for i in big:
        flat = tensors[i].reshape(-1)
        norms[i] = torch.dot(flat, flat).sqrt()
    return torch.stack(norms)


def _fusable(*lists: Sequence[Tensor]) -> bool:
    """Whether ``torch._fused_sgd_`` takes these lists: dense floating tensors of one dtype and
    device (the kernel's own requirements)."""
    first = lists[0][0]
    return all(t.dtype == first.dtype and t.device == first.device and not t.is_sparse
               for ts in lists for t in ts) and first.is_floating_point() and \
        first.device.type in ("cpu", "cuda")


def _segment_norms(norms: Tensor, ids_t: Optional[Tensor], num_segments: int) -> Tensor:
    """(R, S) segment 2-norms of (R, n) per-tensor norms (``ids_t`` None for one segment)."""
    if num_segments == 1:
        return torch.linalg.vector_norm(norms, dim=1, keepdim=True)
    total = norms.new_zeros(norms.shape[0], num_segments)
    return total.index_add_(1, ids_t, norms.square()).sqrt_()


def apply_inplace(rule, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
                  hyper: Mapping[str, Any], loss: Optional[Tensor] = None,
                  grad_norms: Optional[Sequence[Tensor]] = None) -> Optional[State]:
    """``GARORule.apply_`` (see its docstring; it runs this under ``torch.no_grad``)."""
    params, grads = list(params), list(grads)
    n = len(params)
    if n == 0:
        raise ValueError("params: GARORule.apply needs at least one tensor")
    controller = hyper["controller"]
    hidden = state["hidden"]
    S, dtype = hidden.shape[0], hidden.dtype
    ids = list(hyper.get("segment_ids") or [0] * n)
    if len(ids) != n:
        raise ValueError(f"segment_ids: expected {n} entries, got {len(ids)}")
    ids_t = None if S == 1 else torch.tensor(ids, device=hidden.device)
    relative = getattr(controller, "features", "seed") == "relative"

    # Host scalars: everything that does not depend on this step's gradient (the previous
    # step's features, the loss): scalar arithmetic on the host costs nothing, a tensor op µs.
    step = int(state["step"])
    started = step > 0
    loss_seen = float(state["loss_seen"]) > 0
    has_loss = loss is not None
    prev_lg, ref_lg, prev_sym, prev_ratio = torch.stack(
        [state["prev_log_grad_norm"], state.get("ref_log_grad_norm", state["prev_log_grad_norm"]),
         state["prev_symlog_loss"], state["prev_update_ratio"]]).tolist()
    extra = {}
    if has_loss:
        value = loss if loss.dim() == 0 else loss.reshape(())
        if value.dtype != dtype:
            value = value.to(dtype)
        host_loss = float(value)
        if relative:  # symlog(L / |L_0|): the first loss seen sets the reference
            extra["ref_loss"] = state["ref_loss"] if loss_seen else value.abs() + _TINY_LOSS
            host_loss = host_loss / float(extra["ref_loss"])
        sym = [math.copysign(math.log1p(abs(host_loss)), host_loss)] * S
    else:
        sym = prev_sym

    # 1. features, per segment; row 0 of the norms: gradients, row 1: parameters. The segment
    # norms come to the host (free on CPU; on GPU the step-count read above already waited for
    # the backward pass), so the features are host arithmetic and one tensor.
    if grad_norms is None:
        norms = fused_norms(grads + params).view(2, n)
    else:
        norms = torch.stack([torch.stack(list(grad_norms)), fused_norms(params)])
    seg = _segment_norms(norms, ids_t, S)
    if seg.dtype != dtype:
        seg = seg.to(dtype)
    gnorms, pnorms = seg.tolist()
    log_g = [math.log(g + _TINY) if g == g else g for g in gnorms]  # (NaN stays NaN)
    # relative features read log ‖g‖ − log ‖g_0‖: 0 on the first step, which sets the reference
    refs = (ref_lg if started else log_g) if relative else [0.0] * S
    rows = [[log_g[s] - refs[s], log_g[s] - prev_lg[s], sym[s], sym[s] - prev_sym[s],
             math.log(prev_ratio[s] + _TINY) if prev_ratio[s] == prev_ratio[s] else prev_ratio[s]]
            for s in range(S)]
    # A non-finite gradient or loss shows as a non-finite feature (an overflowing norm too):
    # skip the step before anything moves; such a value never reaches the controller.
    if not all(math.isfinite(v) for row in rows for v in row):
        return None
    log_gnorm, sym_t = torch.tensor([log_g, sym], dtype=dtype, device=hidden.device).unbind(0)
    if relative:
        extra["ref_log_grad_norm"] = state["ref_log_grad_norm"] if started else log_gnorm

    # 2. the controller
    s, h_ = float(started), float(has_loss)
    valid = [1.0, s, h_, h_ * float(loss_seen), s]
    progress = None
    if relative:
        horizon = float(state["horizon"])
        known = float(horizon > 0)
        progress = [min(step / max(horizon, 1.0), 1.0) * known, known]
    if type(controller).forward is GAROController.forward:
        out = controller.runtime_step(rows, valid, step, progress, hidden, state["feature_mean"],
                                      state["feature_var"])
    else:  # any other controller (e.g. a BoundController) through its own forward
        signal = torch.tensor(rows, dtype=dtype, device=hidden.device)
        args = [signal, signal.new_tensor(valid).expand(S, -1), state["step"], hidden,
                state["feature_mean"], state["feature_var"]]
        if relative:
            args.append(signal.new_tensor(progress).expand(S, -1))
        out = controller(*args)
    # ε relative to the first gradient norm keeps the adam direction scale-free
    parts = [out.lr, out.momentum, out.weight_decay]
    eps_scales = [1.0] * S
    if relative and rule.direction == "adam":
        eps_scales = [math.exp(v) for v in refs]
    host = torch.cat(parts).tolist()
    # Skip equally when the controller itself emits a non-finite lr/momentum/decay (e.g.
    # corrupted weights): parameters must never go NaN.
    if not all(math.isfinite(v) for v in host):
        return None
    lrs, moms, wds = host[:S], host[S:2 * S], host[2 * S:3 * S]

    # 3. the updates, foreach over tensors with equal (lr, momentum, decay, eps)
    lr_mult = per_tensor(hyper.get("lr", 1.0), n)
    wd_mult = per_tensor(hyper.get("weight_decay", 1.0), n)
    buckets: dict[tuple, list[int]] = {}
    for i, s_i in enumerate(ids):
        key = (lrs[s_i] * float(lr_mult[i]), moms[s_i], wds[s_i] * float(wd_mult[i]),
               rule.eps * eps_scales[s_i])
        buckets.setdefault(key, []).append(i)
    directions: list[Optional[Tensor]] = [None] * n
    step_sizes = [0.0] * n
    sqrt_bias_correction2 = math.sqrt(1 - rule.beta2 ** (step + 1))
    momentum_buffers = state["momentum_buffer"]
    for (lr, mom, wd, eps), index in buckets.items():
        ps = [params[i] for i in index]
        gs = [grads[i] for i in index]
        bufs = [momentum_buffers[i] for i in index]
        if rule.direction == "sgd":
            if mom != 0.0 and _fusable(ps, gs, bufs):
                # torch.optim.SGD's fused kernel is this step exactly (zero-started buffers):
                # b ← μ·b + (g + λ·θ), θ ← θ − a·b, one pass, one call
                torch._fused_sgd_(ps, gs, bufs, weight_decay=wd, momentum=mom, lr=lr,
                                  dampening=0.0, nesterov=False, maximize=False,
                                  is_first_step=False)
                for i, b in zip(index, bufs):
                    directions[i], step_sizes[i] = b, abs(lr)
                continue
            if mom == 0.0:  # (the fused kernel then keeps no buffer) b ← g
                torch._foreach_copy_(bufs, gs)
            else:  # b ← g + μ·b in one pass (out= may alias an elementwise input)
                for g, b in zip(gs, bufs):
                    torch.add(g, b, alpha=mom, out=b)
            if wd != 0.0:
                torch._foreach_add_(bufs, ps, alpha=wd)
            dirs = bufs
        else:
            vs = [state["exp_avg_sq"][i] for i in index]
            torch._foreach_mul_(vs, rule.beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - rule.beta2)
            # g / (√(v / c) + ε) = √c · g / (√v + ε√c), c = 1 − β₂^{t+1}: one op fewer
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, eps * sqrt_bias_correction2)
            torch._foreach_mul_(bufs, mom)
            torch._foreach_addcdiv_(bufs, gs, denom, value=sqrt_bias_correction2)
            dirs = torch._foreach_add(bufs, ps, alpha=wd) if wd != 0.0 else bufs
        torch._foreach_add_(ps, dirs, alpha=-lr)
        for i, d in zip(index, dirs):
            directions[i], step_sizes[i] = d, abs(lr)

    # 4. the new global state: ‖Δθ_i‖ = |a_i|·‖direction_i‖ feeds the next update-ratio feature
    direction_norms = fused_norms(directions)
    if len(buckets) == 1 and S == 1:
        update_norm = torch.linalg.vector_norm(direction_norms).mul_(step_sizes[0]).view(1)
    else:
        scaled = direction_norms * direction_norms.new_tensor(step_sizes)
        update_norm = _segment_norms(scaled.view(1, n), ids_t, S)[0]
    if update_norm.dtype != dtype:
        update_norm = update_norm.to(dtype)
    new = dict(hidden=out.hidden, feature_mean=out.feature_mean,
               feature_var=out.feature_var, prev_log_grad_norm=log_gnorm,
               prev_symlog_loss=sym_t if has_loss else state["prev_symlog_loss"],
               prev_update_ratio=update_norm.div_(pnorms[0] + _TINY) if S == 1 else
               update_norm / update_norm.new_tensor([p + _TINY for p in pnorms]),
               lr=out.lr, momentum=out.momentum, weight_decay=out.weight_decay)
    for key, value in extra.items():
        if value.dim():
            new[key] = value
    if S > 1 and len(set(ids)) < S:  # segments without tensors this step keep theirs
        active = torch.zeros(S, dtype=torch.bool, device=hidden.device)
        active[ids_t] = True
        for key, value in new.items():
            new[key] = torch.where(active.view(-1, *([1] * (value.dim() - 1))), value,
                                   state[key])
    result = dict(state)
    result.update(new)
    result["step"] = state["step"] + 1
    if has_loss and not loss_seen:
        result["loss_seen"] = torch.ones_like(state["loss_seen"])
    if "ref_loss" in extra:
        result["ref_loss"] = extra["ref_loss"]
    return result
