"""Step 3 of GARO's runtime step (``metaopt.garo.runtime.host_apply``): the in-place updates.

Foreach ops with Python scalars over the tensors of equal hyperparameters (one update bucket
per ``(a, μ, λ, ε, d)``), in the op order of ``GARORule.apply`` (``metaopt.garo.rule``)::

    sgd:   b ← μ·b + (g + λ·θ),                         θ ← θ − a·b
    adam:  v ← β₂ v + (1 − β₂) g²,  m ← μ m + √c · g / (√v + ε√c),  u = m + λ·θ,  θ ← θ − a·u

(``c = 1 − β₂^{t+1}``; Prodigy's ``s ← β₃ s + a·d·g`` first, and the displacement
``δ ← δ − a·u`` of the scale-free rules after.) ``torch.optim.SGD``'s fused kernel runs the sgd
bucket where it takes the tensors; adam's large CPU tensors run chunk by chunk
(``metaopt.garo.chunked``, which also reads ``‖θ‖`` and Prodigy's ``⟨g, δ⟩`` of them while
they are in cache); a small model's one bucket runs on flat buffers (``metaopt.garo.flat``).
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from ..rules.base import per_tensor
from .chunked import ChunkReads, adam_chunked, chunkable
from .controller_host import HostOutput
from .features import prodigy_beta


def chunked_ids(rule, params, grads, buffers, whole: bool) -> list[int]:
    """The tensors ``update_`` updates chunk by chunk (``chunked.chunkable``): adam's large CPU
    tensors, unless the step is one bucket on gathered tensors (``whole``)."""
    if whole or rule.direction != "adam":
        return []
    sums = buffers.get("prodigy_sum")
    v, m = buffers["exp_avg_sq"], buffers["momentum_buffer"]
    return [i for i, p in enumerate(params) if chunkable(
        p, grads[i], v[i], m[i], *([sums[i]] if sums is not None else []))]


def _fusable(*lists: Sequence[Tensor]) -> bool:
    """Whether ``torch._fused_sgd_`` takes these lists: dense floating tensors of one dtype and
    device (the kernel's own requirements)."""
    first = lists[0][0]
    return all(t.dtype == first.dtype and t.device == first.device and not t.is_sparse
               for ts in lists for t in ts) and first.is_floating_point() and \
        first.device.type in ("cpu", "cuda")


def update_(rule, params, grads, buffers, hyper, ids, lrs, out: HostOutput, eps_scales, step,
            prodigy_d=None, flat=None, r_grads=None, r_params=None,
            chunked: Collection[int] = ()):
    """Step 3 in place (``lrs``: the step sizes per segment; ``prodigy_d``: Prodigy's d_t per
    segment, or None; ``flat``: one bucket on flat buffers, ``r_grads``/``r_params`` the
    gathered tensors; ``chunked``: ``chunked_ids``). Returns (directions, step sizes |a_i|,
    reads) for the update norms (``flat``: the one flat direction); a tensor updated in chunks
    gives its direction's norm, and its ``ChunkReads`` in ``reads`` (tensor index → reads)."""
    n = len(params)
    moms, wds = out.momentum, out.weight_decay
    lr_mult = per_tensor(hyper.lr_scale, n)
    wd_mult = per_tensor(hyper.weight_decay_scale, n)
    sqrt_bias_correction2 = math.sqrt(1 - rule.beta2 ** (step + 1))
    reads: dict[int, ChunkReads] = {}
    if flat is not None:  # one bucket (host_apply): the same ops on the flat buffers
        lr, wd = lrs[0] * float(lr_mult[0]), wds[0] * float(wd_mult[0])
        return [flat.adam_update(rule, params, r_grads[0], r_params[0], moms[0], wd, lr,
                                 rule.eps * eps_scales[0], sqrt_bias_correction2,
                                 prodigy_d[0] if prodigy_d else None)], [abs(lr)], reads
    buckets: dict[tuple, list[int]] = {}
    for i, s_i in enumerate(ids):
        key = (lrs[s_i] * float(lr_mult[i]), moms[s_i], wds[s_i] * float(wd_mult[i]),
               rule.eps * eps_scales[s_i], prodigy_d[s_i] if prodigy_d else 0.0)
        buckets.setdefault(key, []).append(i)
    directions: list[Tensor | float | None] = [None] * n
    step_sizes = [0.0] * n
    momentum_buffers = buffers["momentum_buffer"]
    displacements = buffers.get("displacement")
    for (lr, mom, wd, eps, d), index in buckets.items():
        ps = [params[i] for i in index]
        gs = [grads[i] for i in index]
        bufs = [momentum_buffers[i] for i in index]
        sums = [buffers["prodigy_sum"][i] for i in index] if prodigy_d else None
        if rule.direction == "sgd":
            _prodigy_sum(rule, sums, gs, lr * d)
            if mom != 0.0 and _fusable(ps, gs, bufs):
                # torch.optim.SGD's fused kernel is this step exactly (zero-started buffers):
                # b ← μ·b + (g + λ·θ), θ ← θ − a·b, one pass, one call
                torch._fused_sgd_(ps, gs, bufs, weight_decay=wd, momentum=mom, lr=lr,
                                  dampening=0.0, nesterov=False, maximize=False,
                                  is_first_step=False)
                _displace(buffers, index, bufs, lr)
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
            vs = [buffers["exp_avg_sq"][i] for i in index]
            keep = [k for k, i in enumerate(index) if i not in chunked] if chunked else None
            for k, i in enumerate(index):  # large CPU tensors: the same ops, chunk by chunk
                if keep is not None and i in chunked:
                    reads[i] = adam_chunked(
                        rule, ps[k], gs[k], vs[k], bufs[k],
                        displacements[i] if displacements is not None else None, mom, wd, lr,
                        eps, sqrt_bias_correction2, sums[k] if sums else None, lr * d)
                    directions[i], step_sizes[i] = reads[i].direction_norm, abs(lr)
            if keep is not None and len(keep) < len(index):
                index, ps, gs, bufs, vs = ([x[k] for k in keep] for x in (index, ps, gs, bufs, vs))
                sums = [sums[k] for k in keep] if sums else None
                if not index:
                    continue
            _prodigy_sum(rule, sums, gs, lr * d)
            torch._foreach_mul_(vs, rule.beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - rule.beta2)
            # g / (√(v / c) + ε) = √c · g / (√v + ε√c), c = 1 − β₂^{t+1}: one op fewer
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, eps * sqrt_bias_correction2)
            torch._foreach_mul_(bufs, mom)
            torch._foreach_addcdiv_(bufs, gs, denom, value=sqrt_bias_correction2)
            dirs = torch._foreach_add(bufs, ps, alpha=wd) if wd != 0.0 else bufs
        torch._foreach_add_(ps, dirs, alpha=-lr)
        _displace(buffers, index, dirs, lr)
        for i, direction in zip(index, dirs):
            directions[i], step_sizes[i] = direction, abs(lr)
    return directions, step_sizes, reads


def _prodigy_sum(rule, sums, grads, weight: float) -> None:
    """s_i ← β₃ s_i + λ_i g_i, λ_i = a_i·d_t (Prodigy's weighted sum; ``sums`` None: no scale)."""
    if sums:
        torch._foreach_mul_(sums, prodigy_beta(rule.beta2))
        torch._foreach_add_(sums, grads, alpha=weight)


def _displace(buffers, index, directions, lr: float) -> None:
    """δ_i ← δ_i − a·direction_i: the displacement the scale-free step size reads."""
    if "displacement" in buffers:
        torch._foreach_add_([buffers["displacement"][i] for i in index], directions, alpha=-lr)
