"""GARO's runtime step, ``GARORule.apply_``: ``GARORule.apply`` computed in place, in few ops.

GARO (Global Adaptive Recurrent Optimizer); the math is that of
``metaopt.garo.rule`` (module docstring there), which stays the reference: the pure ``apply``
path of meta-training. On a small model a step is dispatch-bound (each tiny tensor op costs a
few µs whatever its size, and on a warm training loop each *distinct* library entry costs more
than its arithmetic), so this path runs as little code per step as it can:

* the recurrent state stays on the host between steps (``HostState``: floats rounded to the
  state's dtype, the hidden state one array); tensors are built only when the state is read;
* one foreach norm call per step for the gradients, the parameters and the previous step's
  update directions (``scale.norm_list``: a BLAS dot for large tensors), and one host read of
  the results (``scale.host_floats``: one stacked read on a GPU; on the CPU each value where it
  lies, which waits for nothing and costs less than the stack): a step leaves its update norm
  to the next one (``PendingUpdateNorm``) when its directions are the momentum buffers or the
  model is small (``_DEFER_NUMEL``), and reads it itself otherwise, so keeping them never costs
  a large model memory;
* the features, step embedding, validity mask, progress, the relative features' references,
  the ε scale and Adam's bias correction are host floats, and a non-finite gradient or loss
  skips the step before the controller runs;
* the controller runs on the host (``metaopt.garo.controller_host``: NumPy, fused GRU and
  heads) when it is a stock ``GAROController``, through its own ``forward`` otherwise;
* then foreach updates with Python scalars, tensors grouped by equal hyperparameters
  (``metaopt.garo.update``: ``torch.optim.SGD``'s fused kernel for sgd; adam's on large CPU
  tensors chunk by chunk, each chunk's update also reading ``‖θ‖²`` and Prodigy's ``⟨g, δ⟩``
  while it is in cache, so the reads before the controller are ``‖g‖`` and Prodigy's ``‖s‖₁``);
* a small model's step with one update bucket (``metaopt.garo.flat``) reads each reduction
  over the concatenated tensors (one kernel each), and the optimizer's adam update runs on
  flat buffers whose slices are the per-parameter state (one kernel per op).

The hybrid GD–ODE optimizer's GD steps with GARO as their GD module run this same step
(``metaopt.hybrid.garo_runtime``), its switch reading one more norm with these and deciding
after the controller, before anything moves (``host_apply``'s ``switch``).

On a GPU that is one host read per step (the norms: it waits for the backward pass, as the
controller's inputs must) and no controller kernels.

It equals ``apply`` up to rounding: ``tests/garo/test_runtime.py`` checks it in float64,
for both feature sets, both directions, with and without a loss, one and several segments.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..rules.base import State
from .controller import GAROController
from .controller_host import HostOutput, host_dtype, host_step, module_step
from .features import (
    HOST_OPS,
    SCALE_BUFFERS,
    TINY,
    TINY_LOSS,
    distance_step_size,
    prodigy_beta,
    progress,
    signal_row,
    symlog,
    validity,
)
from .flat import FlatBuffers, gather, one_bucket
from .host_state import HostState, PendingUpdateNorm
from .hyper import GAROHyper, step_inputs
from .pending import (  # noqa: F401  (settle, update_ratios: public names kept here)
    ratios_of,
    segment_update_norms,
    settle,
    update_ratios,
)
from .scale import (
    fused_norms,
    host_distance_max,
    host_floats,
    host_prodigy_d,
    host_segment_norms,
    norm_list,
    prodigy_reads,
)
from .update import chunked_ids, update_

# up to here (elements in all), the update directions of a step are kept until the next one reads
# their norms with its own: one norm call and one host read per step instead of two
_DEFER_NUMEL = 1 << 20


def apply_inplace(rule, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
                  hyper: GAROHyper, loss: Tensor | None = None,
                  grad_norms: Sequence[Tensor] | None = None) -> State | None:
    """``GARORule.apply_`` (see its docstring; it runs this under ``torch.no_grad``): the state
    as tensors, through ``host_apply``."""
    new = host_apply(rule, params, grads, state, HostState.from_tensors(state), hyper, loss,
                     grad_norms)
    if new is None:
        return None
    result = dict(state)
    result.update(settle(new).to_tensors())
    return result


def host_apply(rule, params: Sequence[Tensor], grads: Sequence[Tensor],
               buffers: Mapping[str, Sequence[Tensor]], host: HostState,
               hyper: GAROHyper, loss: Tensor | float | None = None,
               grad_norms: Sequence[Tensor] | None = None,
               flat: FlatBuffers | None = None, switch=None) -> HostState | None:
    """One in-place GARO step with the global state on the host (``HostState``).

    ``buffers``: the per-tensor lists (``rule.per_tensor_keys``), updated in place with
    ``params``; ``loss``: a scalar tensor or float. Returns the new global state, or None —
    touching nothing — when a gradient, the loss or the controller's output is not finite.
    ``flat``: ``buffers`` as views of flat tensors (``metaopt.garo.flat``). A small model's step
    with one update bucket (``one_bucket``) reads its norms, dots and L1 norms over the
    concatenated tensors (the flat ones, or gathered), one kernel each.
    ``switch``: a caller's say in the step (the hybrid's GD path, ``metaopt.hybrid.garo_runtime``):
    ``switch.reads(r_grads)`` gives 0-d tensors read with the step's norms (``r_grads``: the
    gradients as the reads see them), and ``switch.decide(reads)`` — after the controller, before
    anything moves — gets them with this step's norms and outputs (``SwitchReads``); False: the
    step returns None, touching nothing.
    """
    params, grads, hyper, ids = step_inputs(params, grads, hyper)
    controller = hyper.controller
    S = host.num_segments
    relative = host.ref_log_grad_norm is not None
    if relative != (getattr(controller, "features", "seed") == "relative"):
        raise ValueError("state: made for a controller with other features (init it again)")
    whole = grad_norms is None and one_bucket(params, hyper, S, flat)
    if not whole or (flat is not None and flat.flat is None):
        flat = None  # (several update buckets: the per-tensor path, on the same buffers)
    # what the reads see: the tensors, or (one bucket) each kind concatenated as one tensor
    r_grads, r_params, r_ids = ([gather(grads)], [gather(params)], [0]) if whole else \
        (grads, params, ids)
    r_buffers = ({key: [flat.flat[key] if flat is not None else gather(buffers[key])]
                  for key in SCALE_BUFFERS[rule.scale]} if whole else buffers)
    r_n = len(r_ids)
    np_dtype = host_dtype(host.dtype)
    step, started, loss_seen = host.step, host.step > 0, host.loss_seen
    has_loss = loss is not None
    ref_loss = host.ref_loss
    if has_loss:
        value = float(np_dtype.type(float(loss)))  # (the loss read in the controller's dtype)
        if relative:  # symlog(L / |L_0|): the first loss seen sets the reference
            if not loss_seen:
                ref_loss = float(np_dtype.type(abs(value) + TINY_LOSS))
            value /= ref_loss
        sym = [symlog(value, HOST_OPS)] * S
    else:
        sym = host.prev_symlog_loss

    # 1. features, per segment, from the segment norms of gradients and parameters (and of the
    # last step's directions, when it left them to be read here: ``PendingUpdateNorm``)
    pending = host.pending
    scaled, prodigy = rule.scale == "distance", rule.scale == "prodigy"
    # ‖θ_i‖ and Prodigy's ⟨g_i, δ_i⟩ of a tensor updated in chunks are read by its update, in
    # cache (``metaopt.garo.chunked``); ‖θ_i‖ here where the first step's size or a switch
    # needs it before
    chunked = chunked_ids(rule, params, grads, buffers, whole)
    late = chunked if grad_norms is None and switch is None and (step > 0 or not (
        scaled or prodigy)) else []
    early = [i for i in range(r_n) if i not in late] if late else list(range(r_n))
    displacements = list(r_buffers["displacement"]) if scaled else []
    tensors = [r_params[i] for i in early] + displacements + \
        (pending.directions if pending is not None else [])
    # (⟨g_i, δ_i⟩ and ‖s_i‖₁ for Prodigy's scale: all in one host read)
    extra_reads = switch.reads(r_grads) if switch is not None else []
    reads = norm_list(tensors if grad_norms is not None else r_grads + tensors) + \
        (prodigy_reads(r_grads, r_buffers, chunked) if prodigy else []) + extra_reads
    if grad_norms is not None:
        values = torch.stack(reads)
        norms = torch.cat([torch.stack(list(grad_norms)).to(values.dtype), values]).tolist()
    else:
        norms = host_floats(reads)
    extra = norms[len(norms) - len(extra_reads):]
    norms = norms[:len(norms) - len(extra_reads)]
    if prodigy:
        m = 2 * r_n - len(chunked)
        norms, dots, l1s = norms[:-m], norms[-m:-r_n], norms[-r_n:]
    ne = len(early)
    squares = [v * v for v in norms[:r_n + ne]]
    gnorms = host_segment_norms(squares[:r_n], r_ids, S)
    pnorms = None if late else host_segment_norms(squares[r_n:], r_ids, S)
    k = r_n + ne + (r_n if scaled else 0)
    prev_norms = host.update_norm if pending is None else segment_update_norms(pending, norms[k:],
                                                                               S)
    prev_ratio = host.prev_update_ratio if pending is None else ratios_of(host, prev_norms)
    log_g = [HOST_OPS.log(g + TINY) for g in gnorms]  # (NaN stays NaN)
    # relative features read log ‖g‖ − log ‖g_0‖: 0 on the first step, which sets the reference
    refs = (host.ref_log_grad_norm if started else log_g) if relative else [0.0] * S
    prev_lg, prev_sym = host.prev_log_grad_norm, host.prev_symlog_loss
    rows = [signal_row(log_g[s], refs[s], prev_lg[s], sym[s], prev_sym[s], prev_ratio[s],
                       HOST_OPS) for s in range(S)]
    # A non-finite gradient or loss shows as a non-finite feature (an overflowing norm too):
    # skip the step before anything moves; such a value never reaches the controller. (Each
    # finite signal is a log or a difference of two, |x| < 10⁴: their sum is finite exactly
    # when they all are.)
    if not math.isfinite(sum(map(sum, rows))):
        return None

    # 2. the controller, on the host (metaopt.garo.controller_host)
    s, h_ = float(started), float(has_loss)
    valid = validity(1.0, s, h_, float(loss_seen))
    inputs = progress(float(step), host.horizon, float(host.horizon > 0), HOST_OPS) \
        if relative else None
    if type(controller).forward is GAROController.forward:
        out = host_step(controller, rows, valid, step, inputs, host.hidden,
                        host.feature_mean, host.feature_var)
    else:  # any other controller (e.g. a BoundController) through its own forward
        # (its forward reads no update ratio: a pending update norm need not be read for it)
        out = module_step(controller, rows, valid, inputs,
                          replace(host, pending=None).to_tensors())
    # Skip equally when the controller itself emits a non-finite lr/momentum/decay (e.g.
    # corrupted weights): parameters must never go NaN.
    if not all(math.isfinite(v) for v in out.lr + out.momentum + out.weight_decay):
        return None
    # ε relative to the first gradient norm keeps the adam direction scale-free
    eps_scales = [math.exp(r) for r in refs] if relative and rule.direction == "adam" \
        else [1.0] * S
    lrs, distance_max, prodigy_d, numerator = out.lr, None, None, None
    if scaled:  # scale-free GARO: lr_t multiplies DoG's d_t = r̄_t / √(t+1)
        distance_max = host_distance_max(host, r_params, r_ids, pnorms, norms[r_n + ne:k])
        lrs = [distance_step_size(c, r, step, HOST_OPS) for c, r in zip(out.lr, distance_max)]
    elif prodigy:  # lr_t multiplies Prodigy's d_t
        prodigy_d = host_prodigy_d(host, r_params, r_ids, pnorms, l1s)
        lrs = [c * d for c, d in zip(out.lr, prodigy_d)]
    if switch is not None and not switch.decide(SwitchReads(
            extra, gnorms, pnorms, prev_norms, norms[k:] if pending is not None else None, out,
            lrs)):
        return None

    # 3. the updates, foreach over tensors with equal (lr, momentum, decay, eps)
    directions, step_sizes, chunk_reads = update_(
        rule, params, grads, buffers, hyper, ids, lrs, out, eps_scales, step, prodigy_d, flat,
        r_grads, r_params, chunked)
    if late:  # the segment norms ‖θ‖_s, with the chunks' reads
        read = iter(squares[r_n:])
        pnorms = host_segment_norms([chunk_reads[i].param_square if i in chunk_reads else
                                     next(read) for i in range(r_n)], r_ids, S)
    if chunked and prodigy:
        read = iter(dots)
        dots = [chunk_reads[i].grad_dot_displacement if i in chunk_reads else next(read)
                for i in range(r_n)]
    if whole:  # (one bucket: one step size; the directions as one tensor)
        directions, step_sizes = [gather(directions) if len(directions) > 1 else directions[0]], \
            step_sizes[:1]
    if prodigy:  # r_t = β₃ r_{t−1} + Σ_i λ_i ⟨g_i, θ_0 − θ_i⟩, λ_i = a_i·d_t
        numerator = [prodigy_beta(rule.beta2) * r for r in host.prodigy_numerator]
        for i, s_i in enumerate(r_ids):
            numerator[s_i] -= step_sizes[i] * prodigy_d[s_i] * dots[i]

    # 4. the new global state. ‖Δθ_i‖ = |a_i|·‖direction_i‖ feeds the next update-ratio feature:
    # read by the next step with its own norms where keeping the directions costs no memory
    # (they are the momentum buffers) or little (a small model); now otherwise (and where
    # ``update_`` already read some of them).
    pending = PendingUpdateNorm(directions, step_sizes, r_ids, pnorms)
    ratios, update_norm = [math.nan] * S, None  # (until read: ``settle``)
    tensors = directions if whole else [d for d in directions if isinstance(d, Tensor)]
    if directions[0].numel() > _DEFER_NUMEL if whole else (  # (one bucket: one tensor)
            len(tensors) < len(directions) or not (
                all(d is b for d, b in zip(directions, buffers["momentum_buffer"])) or
                sum(d.numel() for d in directions) <= _DEFER_NUMEL)):
        read = iter(fused_norms(tensors).tolist() if tensors else [])
        update_norm = segment_update_norms(pending, [next(read) if isinstance(d, Tensor) else d
                                                     for d in directions], S)
        ratios = ratios_of(host, update_norm, pending)
        pending = None
    # every new float rounded to the state's dtype at once (what a checkpoint would hold)
    new = {"prev_log_grad_norm": log_g, "prev_symlog_loss": sym, "lr": lrs,
           "momentum": out.momentum, "weight_decay": out.weight_decay,
           "prev_update_ratio": ratios}
    if relative:
        new["ref_log_grad_norm"] = refs
    if scaled:
        new["distance_max"] = distance_max
    if prodigy:
        new["prodigy_d"], new["prodigy_numerator"] = prodigy_d, numerator
    statistics = [*out.feature_mean, *out.feature_var]  # (the entries left out stay None)
    rounded = host.rounded([v for part in (*new.values(), *statistics) for v in part])
    k = 0
    for key in new:
        new[key], k = rounded[k:k + S], k + S
    F = len(statistics[0])
    rows = [rounded[k + r * F:k + (r + 1) * F] for r in range(2 * S)]
    new["feature_mean"], new["feature_var"], new["hidden"] = rows[:S], rows[S:], out.hidden
    active = set(ids) if S > 1 else None
    if S > 1 and len(active) < S:  # segments without tensors this step keep theirs
        idle = [s not in active for s in range(S)]
        for key, value in new.items():
            old = prev_ratio if key == "prev_update_ratio" else getattr(host, key)
            if key == "hidden":
                new[key] = np.where(np.array(idle)[:, None], old, value)
            elif value is not None:
                new[key] = [o if k else v for k, v, o in zip(idle, value, old)]
    return HostState(dtype=host.dtype, device=host.device, step=step + 1,
                     loss_seen=loss_seen or has_loss, ref_loss=ref_loss if relative else None,
                     horizon=host.horizon, pending=pending, update_norm=update_norm, **new)


class SwitchReads(NamedTuple):
    """What ``host_apply`` hands ``switch.decide``: per segment unless said otherwise."""
    extra: list[float]                      # the values of ``switch.reads``
    grad_norms: list[float]                 # ‖g‖_s
    param_norms: list[float]                # ‖θ‖_s before the step
    prev_update_norms: list[float] | None   # ‖Δθ‖_s of the last step (None: unknown here)
    prev_direction_norms: list[float] | None  # its directions' norms, where read now
    out: HostOutput                         # the controller's outputs
    step_sizes: list[float]                 # a_t (lr_t·d_t when scale-free)
