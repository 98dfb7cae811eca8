"""GARO's per-tensor buffers as views of one flat tensor per kind: the small-model adam path.

On a small CPU model each foreach op costs a few µs *per tensor* (a CPU foreach op is a loop of
single-tensor kernels), so a step that runs ~16 such ops on 18 tensors spends ~1.3 ms in
dispatch, twice ``torch.optim.Adam``'s step. The runtime optimizer (``metaopt.optim.GARO``)
therefore keeps each per-tensor buffer kind (``GARORule.per_tensor_keys``: m, v, Prodigy's
δ and s) as one flat tensor whose slices are the per-parameter state entries (views: the state
dict, a checkpoint and ``opt.state[p]`` see the usual per-parameter tensors). When a step has
one update bucket (one segment, equal lr and decay multipliers: the default), its adam update
runs on the flat tensors, one kernel per op, with the gradients and parameters gathered by one
``torch.cat`` each and written back by one foreach add::

    s ← β₃ s + λ g,   v ← β₂ v + (1 − β₂) g²,   m ← μ m + √c · g / (√v + ε√c)
    u = m + wd·θ,     θ ← θ − a·u,   δ ← δ − a·u          (the ops of ``update.update_``)

A one-tensor model (a test function such as Rosenbrock) takes this path too, its flat tensor
a view of the tensor itself: one plain op costs less than a foreach op over one tensor, and its
reads are the per-tensor ones (``tests/garo/test_flat.py``). The three buffer decays
(``s``, ``v``, ``m``) are one ``_foreach_mul_`` call with a scalar per buffer (on the CPU each
buffer's own ``mul_``; the buffers are distinct, so their order does not matter).

Each element goes through the same ops in the same order as the per-tensor foreach path, so
the update is the same bits (elementwise kernels do not depend on where a tensor starts). Such
a step also reads its reductions over the concatenated tensors (``one_bucket``), which the flat
buffers are; the per-tensor path (under ``torch.compile``, or ``GARORule.apply_``) gathers them,
so both paths give the same bits. ``tests/garo/test_flat.py`` checks both paths against each
other and against the pure rule.

A buffer replaced from outside (``load_state_dict``, a hand edit) is no longer a view: the next
step sees it and gathers the flat tensors again from the per-parameter entries (their values,
so a resumed run continues bit for bit).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import is_

import torch
from torch import Tensor

from . import chunked
from .features import prodigy_beta

# up to this many elements in all (a small model) the buffers are flat; beyond it the step is
# bandwidth-bound and the per-tensor path (chunked on the CPU) is the faster one
FLAT_NUMEL = 1 << 20


def gather(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors' elements concatenated into one 1-D tensor (``torch.cat`` of views, in one
    C++ call); one contiguous tensor is its own flat view (read only, like the gathered copy)."""
    if len(tensors) == 1 and tensors[0].is_contiguous():
        return tensors[0] if tensors[0].dim() == 1 else tensors[0].reshape(-1)
    return torch._C._nn.flatten_dense_tensors(list(tensors))


def one_bucket(params: Sequence[Tensor], hyper, num_segments: int,
               flat: FlatBuffers | None = None) -> bool:
    """Whether a step of the runtime reads its segment sums over the concatenated tensors: a
    small model (``small_model``; ``flat`` knows it for its parameters) whose step has one
    update bucket (one segment, equal lr and decay multipliers). Then ``‖g‖``, ``‖θ‖``,
    ``‖Δθ‖`` (one step size), Prodigy's ``Σ_i ⟨g_i, δ_i⟩`` and ``Σ_i ‖s_i‖₁`` are one reduction
    each over the concatenation, which the flat buffers hold already, instead of one per tensor
    (the same sums, added in another order)."""
    if flat is not None and flat.bucket_key == (hyper, num_segments):
        return flat.bucket  # (this hyper's answer, kept: the optimizer reuses its hyper)
    whole = num_segments == 1 and _uniform(hyper.lr_scale) and \
        _uniform(hyper.weight_decay_scale) and (flat.small if flat is not None
                                                else small_model(params))
    if flat is not None:
        flat.bucket_key, flat.bucket = (hyper, num_segments), whole
    return whole


def small_model(params: Sequence[Tensor]) -> bool:
    """At most ``FLAT_NUMEL`` elements in dense floating tensors of one dtype and device: ≥ 2
    tensors, or one below ``adam_chunked``'s size (a larger one is updated chunk by chunk)."""
    first = params[0]
    return _enough(params) and first.is_floating_point() and \
        sum(p.numel() for p in params) <= FLAT_NUMEL and \
        all(p.dtype == first.dtype and p.device == first.device and not p.is_sparse
            for p in params)


def _enough(params: Sequence[Tensor]) -> bool:
    """≥ 2 tensors, or one that ``adam_chunked`` would not take (a one-tensor model such as a
    test function: its plain ops on the flat view cost less than the foreach ones)."""
    return len(params) > 1 or (len(params) == 1 and params[0].numel() < chunked._CHUNK_FROM)


def _uniform(values) -> bool:
    """Whether a multiplier (a number, or one per tensor) is the same for every tensor."""
    if isinstance(values, Tensor):
        return values.dim() == 0
    return not isinstance(values, (list, tuple)) or all(v == values[0] for v in values)


class FlatBuffers:
    """The flat buffers of one optimizer's parameter list (``flat``: key → 1-D tensor, None when
    these parameters do not qualify), and their per-parameter views (``views``)."""

    def __init__(self, params: Sequence[Tensor], states: Sequence[dict], keys: Sequence[str],
                 eligible: bool):
        self.params, self.keys = list(params), tuple(keys)
        self.sizes = [p.numel() for p in params]
        self.dtype, self.small = params[0].dtype, small_model(params)
        # ``one_bucket``'s last answer and what it was for: (the hyper, the segment count)
        self.bucket_key: tuple | None = None
        self.bucket = False
        # u = m + wd·θ when wd ≠ 0: one buffer (and its views) reused by every step; the next
        # step reads its norm before overwriting it
        self.direction: Tensor | None = None
        self.direction_views: list[Tensor] = []
        self.flat: dict[str, Tensor] | None = {} if eligible else None
        self.views: dict[str, list[Tensor]] = {}
        if not eligible:
            return
        for key in keys:
            flat = torch.cat([state[key].reshape(-1) for state in states])
            views = [v.view_as(p) for v, p in zip(flat.split(self.sizes), params)]
            for state, view in zip(states, views):
                state[key] = view
            self.flat[key], self.views[key] = flat, views
        self._view_ids = [id(v) for key in keys for v in self.views[key]]

    @classmethod
    def build(cls, rule, params: Sequence[Tensor], states: Sequence[dict]) -> FlatBuffers:
        """Flat buffers for these parameters (their states already initialised), when they
        qualify: the adam direction, ``small_model``'s number of dense contiguous floating
        tensors of one dtype and device, at most ``FLAT_NUMEL`` elements, buffers of the same
        dtype and device."""
        first = params[0]
        keys = rule.per_tensor_keys
        eligible = rule.direction == "adam" and _enough(params) and \
            first.is_floating_point() and sum(p.numel() for p in params) <= FLAT_NUMEL and \
            all(p.dtype == first.dtype and p.device == first.device and not p.is_sparse and
                p.is_contiguous() and all(s[k].dtype == first.dtype and
                                          s[k].device == first.device for k in keys)
                for p, s in zip(params, states))
        return cls(params, states, keys, eligible)

    def matches(self, params: Sequence[Tensor], states: Sequence[Mapping]) -> bool:
        """Whether these are still the parameters and state entries the buffers were built for."""
        if len(params) != len(self.params) or not all(map(is_, params, self.params)) or \
                params[0].dtype != self.dtype:
            return False
        # (one comparison of identities: the views, alive in ``views``, keep their ids)
        return self.flat is None or \
            [id(s[key]) for key in self.keys for s in states] == self._view_ids

    def adam_update(self, rule, params: Sequence[Tensor], flat_grad: Tensor, flat_param: Tensor,
                    mom: float, wd: float, lr: float, eps: float, sqrt_c: float,
                    prodigy_d: float | None) -> Tensor:
        """The one bucket's adam update (module docstring) on the flat buffers, from the
        gathered gradients and parameters; returns the flat direction ``u``."""
        buffers, g = self.flat, flat_grad
        v, m = buffers["exp_avg_sq"], buffers["momentum_buffer"]
        # s ← β₃ s, v ← β₂ v, m ← μ m in one call (each buffer's own op, as tensor.mul_)
        if prodigy_d is not None:
            s = buffers["prodigy_sum"]
            torch._foreach_mul_([s, v, m], [prodigy_beta(rule.beta2), rule.beta2, mom])
            s.add_(g, alpha=lr * prodigy_d)
        else:
            torch._foreach_mul_([v, m], [rule.beta2, mom])
        v.addcmul_(g, g, value=1 - rule.beta2)
        denom = v.sqrt().add_(eps * sqrt_c)
        m.addcdiv_(g, denom, value=sqrt_c)
        if wd != 0.0:
            if self.direction is None:
                self.direction = torch.empty_like(m)
                self.direction_views = [d.view_as(p) for d, p in zip(
                    self.direction.split(self.sizes), params)]
            direction, views = torch.add(m, flat_param, alpha=wd, out=self.direction), \
                self.direction_views
        else:
            direction, views = m, self.views["momentum_buffer"]
        # θ ← θ − a·u and δ ← δ − a·u in one call (each tensor's own add_, as before)
        if "displacement" in buffers:
            torch._foreach_add_([*params, buffers["displacement"]], [*views, direction],
                                alpha=-lr)
        elif len(params) == 1:  # (one tensor: its plain op)
            params[0].add_(views[0], alpha=-lr)
        else:
            torch._foreach_add_(list(params), views, alpha=-lr)
        return direction
