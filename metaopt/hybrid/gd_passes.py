"""The memory passes of the hybrid's in-place GD step (``metaopt.hybrid.runtime``).

Two passes over the gradients, few kernels each:

* ``difference_pass``: per-tensor ‖g_i‖ and the exact ‖g − g_prev‖, reading g and g_prev once;
* ``update_pass``: ``torch._fused_sgd_`` (``torch.optim.SGD``'s fused kernel: b ← μ·b + (g + λ·θ),
  θ ← θ − lr·b in one pass), the new ‖b_i‖ and, where the previous gradient is not shared
  copy-on-write (``keep_gradient``), the copy g_prev ← g.

Large CPU tensors go a cache-sized chunk at a time, through one chunk of scratch for g − g_prev,
as ``metaopt.garo.chunked`` does: a chunk's operands stay in cache from one op to the next (on a
~1M-parameter CPU model the passes are the step's cost). ``norms`` sums a tensor's squares in the
same chunks as the update pass, so a cache of norms rebuilt after a copy or a load decides alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CHUNK", "can_keep", "chunked_norm", "chunks", "difference_pass", "fusable",
           "keep_gradient", "norms", "update_pass"]

CHUNK_FROM, CHUNK = 1 << 18, 1 << 17  # large CPU tensors: cache-sized chunks
_FUSED = dict(dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
_LAZY_CLONE = getattr(torch, "_lazy_clone", None)


def fusable(tensors: Sequence[Tensor]) -> bool:
    first = tensors[0]
    return first.is_floating_point() and first.device.type in ("cpu", "cuda") and all(
        t.dtype == first.dtype and t.device == first.device and not t.is_sparse
        and t.is_contiguous() for t in tensors)


def chunks(tensors: Sequence[Tensor]) -> list[tuple[int, int, int]]:
    """(tensor, start, stop) of the large CPU tensors' chunks."""
    return [(i, a, min(a + CHUNK, t.numel())) for i, t in enumerate(tensors)
            if t.device.type == "cpu" and t.numel() >= CHUNK_FROM
            for a in range(0, t.numel(), CHUNK)]


def chunked_norm(dots: list[Tensor]) -> Tensor:
    return torch.stack(dots).sum().sqrt()


def norms(tensors: Sequence[Tensor], parts) -> Tensor:
    """Per-tensor 2-norms, large tensors summed chunk by chunk (``parts``: ``chunks``)."""
    big = {i for i, _, _ in parts}
    small = [i for i in range(len(tensors)) if i not in big]
    out: list = [None] * len(tensors)
    for i, n in zip(small, torch._foreach_norm([tensors[i] for i in small]) if small else []):
        out[i] = n
    dots: dict[int, list[Tensor]] = {}
    for i, a, b in parts:
        c = tensors[i].view(-1)[a:b]
        dots.setdefault(i, []).append(torch.dot(c, c))
    for i, values in dots.items():
        out[i] = chunked_norm(values)
    return torch.stack(out)


def difference_pass(grads, prev, parts, scratch) -> tuple[Tensor, Tensor]:
    """Per-tensor ‖g_i‖ and the total ‖g − g_prev‖, reading g and g_prev once."""
    big = {i for i, _, _ in parts}
    small = [i for i in range(len(grads)) if i not in big]
    out: list = [None] * len(grads)
    squares = []
    if small:
        gs = [grads[i] for i in small]
        for i, n in zip(small, torch._foreach_norm(gs)):
            out[i] = n
        squares += [n.square() for n in torch._foreach_norm(
            torch._foreach_sub(gs, [prev[i] for i in small]))]
    dots: dict[int, list[Tensor]] = {}
    for i, a, b in parts:
        g, s = grads[i].view(-1)[a:b], scratch[:b - a]
        dots.setdefault(i, []).append(torch.dot(g, g))
        torch.sub(g, prev[i].view(-1)[a:b], out=s)
        squares.append(torch.dot(s, s))
    for i, values in dots.items():
        out[i] = chunked_norm(values)
    return torch.stack(out), chunked_norm(squares)


def update_pass(params, grads, bufs, prev, parts, lrs, moms, decays) -> Tensor:
    """b ← μ·b + (g + λ·θ), θ ← θ − lr·b (``torch._fused_sgd_``) and, unless ``prev`` is None,
    g_prev ← g; returns the new ‖b_i‖."""
    big = {i for i, _, _ in parts}
    out: list = [None] * len(params)
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
            out[i] = n
        if prev is not None:
            torch._foreach_copy_([prev[i] for i in small], [grads[i] for i in small])
    dots: dict[int, list[Tensor]] = {}
    for i, a, b in parts:
        g, buf = grads[i].view(-1)[a:b], bufs[i].view(-1)[a:b]
        torch._fused_sgd_([params[i].view(-1)[a:b]], [g], [buf], weight_decay=decays[i],
                          momentum=moms[i], lr=lrs[i], **_FUSED)
        dots.setdefault(i, []).append(torch.dot(buf, buf))
        if prev is not None:
            prev[i].view(-1)[a:b].copy_(g)
    for i, values in dots.items():
        out[i] = chunked_norm(values)
    return torch.stack(out)


def can_keep(grads: Sequence[Tensor]) -> bool:
    """Whether ``keep_gradient`` may spare the copy (CPU gradients, a torch with lazy clones)."""
    return _LAZY_CLONE is not None and grads[0].device.type == "cpu"


def keep_gradient(grads: Sequence[Tensor]) -> list[Tensor] | None:
    """g_prev ← g without a copy: lazy (copy-on-write) clones of the CPU gradients
    (``torch._lazy_clone``: they share g's memory until either is written; a closure that zeroes
    or accumulates into ``p.grad`` in place copies it then, and once ``zero_grad`` sets the
    gradients to None the clone owns the memory alone). Taken after the update (the fused kernel
    writes through its gradient pointer's access, which would copy a shared gradient). None
    where that is not available (``can_keep``, a storage that cannot be shared): copy instead."""
    if not can_keep(grads):
        return None
    try:
        return [_LAZY_CLONE(g) for g in grads]
    except RuntimeError:
        return None
