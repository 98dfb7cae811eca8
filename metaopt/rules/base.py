"""The rule interface shared by the meta-training path and the torch.optim path
(docs/architecture.md).

A rule is pure tensor code over a list of parameter tensors::

    state = rule.init(params)
    params, state = rule.step(params, grad_fn, state, hyper)

``grad_fn(points) -> (loss, grads)`` evaluates the objective's gradient at any point (Runge-Kutta
stages and Hessian-vector probes need gradients away from the current iterate). ``hyper`` is the
rule family's typed container (``metaopt.rules.hyper``: ``GDHyper``, ``ODEHyper``, GARO's,
DCAO's, the hybrid's), read by field; its fields hold floats or tensors, so a controller can set
them every step and gradients flow through them (a plain mapping of the same fields is converted
by the container's ``coerce``). A rule never mutates its inputs: the runtime optimizer calls it
under ``no_grad`` and copies the result into the parameters; the meta path calls it with a
differentiable ``grad_fn``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

TensorList = list[Tensor]
GradFn = Callable[[Sequence[Tensor]], tuple[Tensor, TensorList]]
Scalar = float | Tensor
# A step size is one scalar for every tensor, or one per tensor (param groups with their own lr).
StepSize = Scalar | Sequence[Scalar]
State = dict[str, Any]


class Rule(Protocol):
    def init(self, params: Sequence[Tensor]) -> State: ...

    def step(
        self, params: Sequence[Tensor], grad_fn: GradFn, state: State, hyper: Any
    ) -> tuple[TensorList, State]: ...


def per_tensor(value: StepSize, n: int) -> list[Scalar]:
    """Broadcast a scalar hyperparameter to one entry per tensor."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} per-tensor values, got {len(value)}")
        return list(value)
    return [value] * n


def is_uniform(values: Sequence[Scalar]) -> bool:
    """True when every per-tensor scalar is the same Python number (enables the alpha= fast
    path)."""
    first = values[0]
    return not isinstance(first, Tensor) and all(
        not isinstance(v, Tensor) and v == first for v in values
    )


def add_scaled(base: Sequence[Tensor], terms: Sequence[Sequence[Tensor]],
               coeffs: Sequence[float], scale: Sequence[Scalar]) -> TensorList:
    """``base + scale * sum_j coeffs[j] * terms[j]`` over tensor lists, out of place.

    ``scale`` has one entry per tensor. Zero coefficients are skipped, so a Butcher row only costs
    its non-zero entries. With a uniform Python-float scale every term is one fused foreach add.
    """
    pairs = [(c, t) for c, t in zip(coeffs, terms) if c != 0.0]
    if not pairs:
        return list(base)
    if is_uniform(scale):
        s = float(scale[0])
        out = torch._foreach_add(list(base), list(pairs[0][1]), alpha=s * pairs[0][0])
        for c, t in pairs[1:]:
            out = torch._foreach_add(out, list(t), alpha=s * c)
        return out
    acc = torch._foreach_mul(list(pairs[0][1]), pairs[0][0])
    for c, t in pairs[1:]:
        acc = torch._foreach_add(acc, list(t), alpha=c)
    return [b + s * a for b, s, a in zip(base, scale, acc)]


def with_weight_decay(grads: Sequence[Tensor], params: Sequence[Tensor],
                      weight_decay: Sequence[Scalar]) -> TensorList:
    """Coupled (L2) weight decay: ``g + wd * theta`` per tensor; a no-op where wd == 0."""
    if all(not isinstance(w, Tensor) and w == 0.0 for w in weight_decay):
        return list(grads)
    return [g if (not isinstance(w, Tensor) and w == 0.0) else g + w * p
            for g, p, w in zip(grads, params, weight_decay)]


def axpy_(ys: Sequence[Tensor], xs: Sequence[Tensor], alphas: Sequence[Scalar]) -> None:
    """In place ``y += alpha * x`` per tensor (runtime fast paths only: mutates ``ys``)."""
    if is_uniform(alphas):
        torch._foreach_add_(list(ys), list(xs), alpha=float(alphas[0]))
    else:
        for y, x, a in zip(ys, xs, alphas):
            y.add_(x, alpha=float(a))


def add_into(out: Sequence[Tensor], base: Sequence[Tensor], xs: Sequence[Tensor],
             alphas: Sequence[Scalar]) -> None:
    """``out = base + alpha * x`` per tensor in one pass (``out=``; runtime fast paths only)."""
    for o, b, x, a in zip(out, base, xs, alphas):
        torch.add(b, x, alpha=float(a), out=o)


def scale_into(out: Sequence[Tensor], xs: Sequence[Tensor], factor: float) -> None:
    """``out = factor * x`` per tensor in one pass (``out=``; runtime fast paths only)."""
    for o, x in zip(out, xs):
        torch.mul(x, factor, out=o)
