"""GARO's adam update of one large CPU tensor, chunk by chunk (``metaopt.garo.runtime``).

Each element goes through the same ops in the same order as the whole-tensor foreach update of
``runtime._update`` (the same bits); only the memory traffic differs, which on a ~1M-parameter
CPU model is the step's cost. ``tests/garo/test_runtime_chunked.py`` checks both against each
other and against the pure rule in float64.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .features import prodigy_beta

# adam's updates of a CPU tensor from this many elements on run in chunks of _CHUNK (cache-sized)
_CHUNK_FROM, _CHUNK = 1 << 17, 1 << 16


def chunkable(*tensors: Tensor) -> bool:
    """Whether ``adam_chunked`` takes this tensor: large, float32/64, contiguous, on the CPU."""
    return tensors[0].numel() >= _CHUNK_FROM and all(t.device.type == "cpu" and t.dtype in (
        torch.float32, torch.float64) and t.is_contiguous() for t in tensors)


def adam_chunked(rule, p, g, v, m, displacement, mom, wd, lr, eps, sqrt_c,
                 prodigy_sum=None, weight: float = 0.0) -> float:
    """The adam bucket's ops of ``_update`` on one tensor, chunk by chunk: each element goes
    through the same ops in the same order (the same bits), but a chunk's operands stay in
    cache from one op to the next, where whole-tensor passes would stream every operand from
    memory once per op (on a ~1M-parameter CPU model those passes are the step's cost).
    Returns the direction's 2-norm, summed over the chunks while they are in cache, so the
    direction ``m + λ·θ`` is never stored whole. With Prodigy's scale its weighted sum
    ``s ← β₃ s + weight·g`` too, while the gradient's chunk is in cache."""
    flat = [t.view(-1) for t in (p, g, v, m)]
    s = None if prodigy_sum is None else prodigy_sum.view(-1)
    d = None if displacement is None else displacement.view(-1)
    beta3 = prodigy_beta(rule.beta2)
    n = p.numel()
    scratch = torch.empty(2, min(n, _CHUNK), dtype=p.dtype)
    squares = []
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        pc, gc, vc, mc = (t[start:stop] for t in flat)
        if s is not None:
            s[start:stop].mul_(beta3).add_(gc, alpha=weight)
        denom, dirc = scratch[0, :stop - start], scratch[1, :stop - start]
        vc.mul_(rule.beta2).addcmul_(gc, gc, value=1 - rule.beta2)
        torch.sqrt(vc, out=denom).add_(eps * sqrt_c)
        mc.mul_(mom).addcdiv_(gc, denom, value=sqrt_c)
        dirc = mc if wd == 0.0 else torch.add(mc, pc, alpha=wd, out=dirc)
        squares.append(torch.dot(dirc, dirc))
        pc.add_(dirc, alpha=-lr)
        if d is not None:
            d[start:stop].add_(dirc, alpha=-lr)
    return math.sqrt(sum(torch.stack(squares).tolist()))
