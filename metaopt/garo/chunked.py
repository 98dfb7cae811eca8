"""GARO's adam update of one large CPU tensor, chunk by chunk (``metaopt.garo.update``).

Each element goes through the same ops in the same order as the whole-tensor foreach update of
``update.update_`` (the same bits); only the memory traffic and the reads differ. On a
~1M-parameter CPU model a step costs one pass per elementwise op (each op streams its operands
whatever the chunk size: ``scripts/benchmarks/garo.py``), so a chunk also reads what the step
needs of the tensor while it is in cache: ``‖θ‖²`` and Prodigy's ``⟨g, δ⟩`` before its update,
``‖u‖²`` after, where whole-tensor reads would each be one more pass.
``tests/garo/test_runtime_chunked.py`` checks both paths against each other and against the pure
rule in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .features import prodigy_beta

# adam's updates of a CPU tensor from this many elements on run in chunks of _CHUNK (cache-sized)
_CHUNK_FROM, _CHUNK = 1 << 17, 1 << 16


class ChunkReads(NamedTuple):
    """What ``adam_chunked`` read of its tensor (host floats): ``‖u‖`` of the direction,
    ``‖θ‖²`` before the update and Prodigy's ``⟨g, δ⟩`` (δ before the update; 0 without)."""
    direction_norm: float
    param_square: float
    grad_dot_displacement: float


def chunkable(*tensors: Tensor) -> bool:
    """Whether ``adam_chunked`` takes this tensor: large, float32/64, contiguous, on the CPU."""
    return tensors[0].numel() >= _CHUNK_FROM and all(t.device.type == "cpu" and t.dtype in (
        torch.float32, torch.float64) and t.is_contiguous() for t in tensors)


def adam_chunked(rule, p, g, v, m, displacement, mom, wd, lr, eps, sqrt_c,
                 prodigy_sum=None, weight: float = 0.0) -> ChunkReads:
    """The adam bucket's ops of ``update_`` on one tensor, chunk by chunk: each element goes
    through the same ops in the same order (the same bits), and the buffer decays of a chunk are
    one call (``_foreach_mul_``: each buffer's own ``mul_``), its two ``−a·u`` adds another.
    Returns ``ChunkReads``, each summed over the chunks while they are in cache, so the direction
    ``u = m + λ·θ`` is never stored whole. With Prodigy's scale its weighted sum
    ``s ← β₃ s + weight·g`` too, while the gradient's chunk is in cache."""
    pcs, gcs, vcs, mcs = (t.view(-1).split(_CHUNK) for t in (p, g, v, m))
    scs = None if prodigy_sum is None else prodigy_sum.view(-1).split(_CHUNK)
    dcs = None if displacement is None else displacement.view(-1).split(_CHUNK)
    beta2, beta3 = rule.beta2, prodigy_beta(rule.beta2)
    scratch = torch.empty(2, min(p.numel(), _CHUNK), dtype=p.dtype)
    reads = []  # per chunk: ‖θ‖², [⟨g, δ⟩], ‖u‖²
    for k, (pc, gc, vc, mc) in enumerate(zip(pcs, gcs, vcs, mcs)):
        reads.append(torch.dot(pc, pc))
        if scs is not None:
            sc = scs[k]
            reads.append(torch.dot(gc, dcs[k]))
            torch._foreach_mul_([sc, vc, mc], [beta3, beta2, mom])
            sc.add_(gc, alpha=weight)
        else:
            torch._foreach_mul_([vc, mc], [beta2, mom])
        denom, dirc = scratch[0, :pc.numel()], scratch[1, :pc.numel()]
        vc.addcmul_(gc, gc, value=1 - beta2)
        torch.sqrt(vc, out=denom).add_(eps * sqrt_c)
        mc.addcdiv_(gc, denom, value=sqrt_c)
        dirc = mc if wd == 0.0 else torch.add(mc, pc, alpha=wd, out=dirc)
        reads.append(torch.dot(dirc, dirc))
        if dcs is not None:  # θ ← θ − a·u and δ ← δ − a·u in one call
            torch._foreach_add_([pc, dcs[k]], [dirc, dirc], alpha=-lr)
        else:
            pc.add_(dirc, alpha=-lr)
    values = torch.stack(reads).tolist()
    stride = 3 if scs is not None else 2
    return ChunkReads(math.sqrt(sum(values[stride - 1::stride])), sum(values[::stride]),
                      sum(values[1::stride]) if scs is not None else 0.0)


def l1_norm(t: Tensor) -> Tensor:
    """``‖t‖₁`` of a large CPU tensor (0-d): ``|t|`` a cache-sized chunk at a time into a scratch,
    then its sum (``linalg.vector_norm(t, 1)`` is ~3× slower on the CPU, and ``t.abs().sum()``
    writes a whole copy)."""
    scratch = torch.empty(min(t.numel(), _CHUNK), dtype=t.dtype)
    parts = []
    for chunk in t.view(-1).split(_CHUNK):
        out = scratch[:chunk.numel()]
        parts.append(torch.abs(chunk, out=out).sum())
    return torch.stack(parts).sum()
