"""Scale-free GARO's online step-size estimates, for both paths, and the segment norms.

The meta path (``GARORule``, ``metaopt.garo.rule``, whose module docstring states the formulas)
computes them on tensors, differentiably; the runtime (``metaopt.garo.runtime``) from host
floats and one host read (the ``host_*`` functions). ``tests/garo/test_runtime.py`` proves the
two equal in float64.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from .chunked import l1_norm
from .features import HOST_OPS, TENSOR_OPS, distance_floor, prodigy_estimate
from .host_state import HostState


def safe_sqrt(x: Tensor) -> Tensor:
    """√x for x ≥ 0 whose derivative at 0 is 0 instead of ∞ (the double-``where`` trick)."""
    positive = x > 0  # (scalar branches: no filled tensors, forward or backward)
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def tensor_norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Per-tensor 2-norms: one fused foreach kernel when no graph is needed, else plain ops.

    (``torch._foreach_norm`` has no double-backward, so the differentiable path takes the loop.)
    """
    if not tensors:
        return []
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return [torch.linalg.vector_norm(t) for t in tensors]
    # A BLAS dot is a plain streaming read, ~2x faster on CPU than the norm kernel (measured by
    # scripts/benchmarks/garo.py); norms past ~1e19 overflow to inf, which apply_ treats as a
    # non-finite step.
    return [torch.dot(t.reshape(-1), t.reshape(-1)).sqrt() for t in tensors]


def segment_norms(norms: Sequence[Tensor], segment_ids: Tensor | None,
                  num_segments: int) -> Tensor:
    """(S,) 2-norms of each segment from per-tensor norms: sqrt(Σ_{i∈s} ‖x_i‖²)."""
    if num_segments == 1:
        return torch.linalg.vector_norm(torch.stack(list(norms))).reshape(1)
    squares = torch.stack(list(norms)).square()
    total = squares.new_zeros(num_segments).index_add(0, segment_ids, squares)
    return total.sqrt()


def root_numel(params, state, ids_t, num_segments: int) -> Tensor:
    """(S,) √n_s: the square root of each segment's number of elements — the counts ``init``
    recorded (``state["tensor_numel"]``) where present, so a run whose tensors a vectorised
    meta-batch pads with zeros keeps its own n_s, else the tensors' own."""
    ref = state["hidden"]
    sizes = state.get("tensor_numel")
    if sizes is None:
        sizes = torch.tensor([float(p.numel()) for p in params], dtype=ref.dtype,
                             device=ref.device)
    return segment_sums(sizes.to(ref.dtype), ids_t, num_segments).clamp_min(1).sqrt()



def segment_sums(values: Tensor, segment_ids: Tensor | None, num_segments: int) -> Tensor:
    """(S,) sums of per-tensor values by segment."""
    if num_segments == 1:
        return values.sum().reshape(1)
    return values.new_zeros(num_segments).index_add(0, segment_ids, values)


def distance_max(params, state, ids_t, num_segments, pnorm, started) -> Tensor:
    """r̄_t = max(r̄_{t−1}, ‖δ‖_s/√n_s), r̄_0 = r_ε (module docstring), per segment."""
    dtype = state["hidden"].dtype
    root_n = root_numel(params, state, ids_t, num_segments)
    rms = segment_norms(tensor_norms(state["displacement"]), ids_t, num_segments)
    floor = distance_floor(pnorm.to(dtype) / root_n)
    return torch.where(started > 0,
                       torch.maximum(state["distance_max"], rms.to(dtype) / root_n), floor)

def prodigy_d(params, state, ids_t, num_segments, pnorm, started) -> Tensor:
    """Prodigy's d_t = max(d_{t−1}, r_{t−1}/‖s_{t−1}‖₁), d_0 = r_ε, per segment."""
    dtype = state["hidden"].dtype
    root_n = root_numel(params, state, ids_t, num_segments)
    l1 = segment_sums(torch.stack([s.abs().sum() for s in state["prodigy_sum"]]).to(dtype),
                      ids_t, num_segments)
    estimate = prodigy_estimate(state["prodigy_d"], state["prodigy_numerator"], l1,
                                TENSOR_OPS)
    return torch.where(started > 0, estimate, distance_floor(pnorm.to(dtype) / root_n))



def prodigy_numerator(state, contributions: Sequence[Tensor], ids_t, beta3: float) -> Tensor:
    """Prodigy's ``r_t = β₃ r_{t−1} + Σ_i λ_i ⟨g_i, θ_0 − θ_i⟩`` per segment, from the
    per-tensor terms ``λ_i ⟨g_i, −δ_i⟩``."""
    previous = state["prodigy_numerator"]
    total = segment_sums(torch.stack(list(contributions)).to(previous.dtype), ids_t,
                         len(previous))
    return previous * beta3 + total


# -- the runtime's host-float twins -----------------------------------------------------------

_DOT_NUMEL = 1 << 16  # from here on a tensor's norm is a BLAS dot (scripts/benchmarks/garo.py)


def fused_norms(tensors: Sequence[Tensor]) -> Tensor:
    """(len,) 2-norms without a graph: one ``_foreach_norm`` call, large tensors by BLAS dot."""
    return torch.stack(norm_list(tensors))


def norm_list(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``fused_norms`` as a list of 0-d tensors (to stack with other reads)."""
    big = [i for i, t in enumerate(tensors) if t.numel() >= _DOT_NUMEL]
    if not big:
        return list(torch._foreach_norm(list(tensors)))
    norms: list[Tensor | None] = [None] * len(tensors)
    small = [i for i, t in enumerate(tensors) if t.numel() < _DOT_NUMEL]
    if small:
        for i, norm in zip(small, torch._foreach_norm([tensors[i] for i in small])):
            norms[i] = norm
    for i in big:
        flat = tensors[i].reshape(-1)
        norms[i] = torch.dot(flat, flat).sqrt()
    return norms



def host_floats(values: Sequence[Tensor]) -> list[float]:
    """0-d tensors as host floats, in one host read: ``torch.stack(values).tolist()`` (a GPU
    waits once), or on the CPU each value read where it lies (the same floats — stacking only
    widens, exactly — without the stack, which costs more than the reads on a small model)."""
    if values and values[0].device.type == "cpu":
        return [v.item() for v in values]
    return torch.stack(list(values)).tolist() if values else []


def host_segment_norms(squares: Sequence[float], ids: Sequence[int],
                       num_segments: int) -> list[float]:
    """Segment 2-norms from per-tensor squared norms (host floats)."""
    if num_segments == 1:  # (the same additions, in the same order: 0 + s_0 + s_1 + …)
        return [math.sqrt(sum(squares, 0.0))]
    total = [0.0] * num_segments
    for s, sq in zip(ids, squares):
        total[s] += sq
    return [math.sqrt(t) for t in total]


def host_distance_max(host: HostState, params, ids, pnorms, displacement_norms) -> list[float]:
    """``r̄_t`` per segment (``GARORule._distance_max``) from the displacements' norms."""
    S = host.num_segments
    numel = [0] * S
    for p, s in zip(params, ids):
        numel[s] += p.numel()
    root_n = [math.sqrt(max(m, 1)) for m in numel]
    rms = [d / r for d, r in zip(host_segment_norms([v * v for v in displacement_norms], ids, S),
                                 root_n)]
    if host.step == 0:
        return host.rounded([distance_floor(p / r) for p, r in zip(pnorms, root_n)])
    return host.rounded([max(prev, x) for prev, x in zip(host.distance_max, rms)])


def prodigy_reads(grads, buffers, chunked: Collection[int] = ()) -> list[Tensor]:
    """0-d tensors, ``⟨g_i, δ_i⟩`` then ``‖s_i‖₁``: what Prodigy's ``d_t`` and ``r_t`` read
    (the dots of the tensors updated in chunks, ``chunked``, are read by their update)."""
    dots = [torch.dot(_flat(g), _flat(d)) for i, (g, d) in
            enumerate(zip(grads, buffers["displacement"])) if i not in chunked]
    sums = list(buffers["prodigy_sum"])
    if not chunked:
        return dots + list(torch._foreach_norm(sums, 1))
    small = [i for i in range(len(sums)) if i not in chunked]
    l1 = dict(zip(small, torch._foreach_norm([sums[i] for i in small], 1))) if small else {}
    return dots + [l1[i] if i in l1 else l1_norm(sums[i]) for i in range(len(sums))]


def _flat(t: Tensor) -> Tensor:
    """``t`` as a 1-D tensor (itself when it is one: no call on the flat path)."""
    return t if t.dim() == 1 else t.reshape(-1)


def host_prodigy_d(host: HostState, params, ids, pnorms, l1_norms) -> list[float]:
    """Prodigy's ``d_t`` per segment (``GARORule._prodigy_d``) from the ‖s_i‖₁ of the last step."""
    S = host.num_segments
    if host.step == 0:
        numel = [0] * S
        for p, s in zip(params, ids):
            numel[s] += p.numel()
        return host.rounded([distance_floor(p / math.sqrt(max(m, 1)))
                             for p, m in zip(pnorms, numel)])
    l1 = [0.0] * S
    for s, v in zip(ids, l1_norms):
        l1[s] += v
    return host.rounded([prodigy_estimate(d, r, v, HOST_OPS) for d, r, v in
                         zip(host.prodigy_d, host.prodigy_numerator, l1)])
