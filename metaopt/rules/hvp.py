"""Hessian-vector products over parameter lists, for the Lanczos curvature probes (DCAO).

An HVP operator is a callable ``hvp(vectors) -> H·vectors`` on lists of tensors shaped like the
parameters; it counts its calls in ``.count`` so probes can report their cost.

* ``gradient_hvp(grads, params)``: double backward, ``H v = ∂(gᵀv)/∂θ``, through gradients that
  still carry their graph (``create_graph=True``). One forward+backward builds the graph once;
  every product then costs one backward pass through it (≈ 1–2 gradient evaluations).
* ``functional_hvp(loss_fn, params, method)``: the same from a functional loss ``loss_fn(params)``;
  ``method="forward_over_reverse"`` instead pushes a tangent through the gradient with
  ``torch.func.jvp(torch.func.grad(loss_fn), (θ,), (v,))`` (no retained double-backward graph).
* ``CreateGraphBackward``: a ``TorchFunctionMode`` under which a torch.optim-style closure's
  ``loss.backward()`` keeps the graph of the gradient, so DCAO probes work with ordinary closures.
* ``hutchinson_trace``: tr(H) ≈ (1/s) Σ zᵀHz over Rademacher vectors z (E[zzᵀ] = I).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .base import TensorList

HVP_METHODS = ("double_backward", "forward_over_reverse")


class HessianVectorProduct:
    """Callable ``v -> H v`` over tensor lists with a call counter."""

    def __init__(self, apply: Callable[[Sequence[Tensor]], TensorList]):
        self._apply = apply
        self.count = 0

    def __call__(self, vectors: Sequence[Tensor]) -> TensorList:
        self.count += 1
        return self._apply(vectors)


def gradient_hvp(grads: Sequence[Tensor], params: Sequence[Tensor]) -> HessianVectorProduct:
    """HVP by double backward through ``grads`` (computed from ``params`` with create_graph=True).

    Gradients that do not require grad (their loss is at most linear in the parameters, e.g. a
    zero loss) contribute a zero Hessian block, so such probes return ``H v = 0`` instead of
    failing.
    """
    params = list(params)
    live = [i for i, g in enumerate(grads) if g.requires_grad]

    def apply(vectors):
        if not live:
            return [torch.zeros_like(p) for p in params]
        with torch.enable_grad():
            out = torch.autograd.grad([grads[i] for i in live], params,
                                      grad_outputs=[vectors[i].detach() for i in live],
                                      retain_graph=True, allow_unused=True,
                                      materialize_grads=True)
        return [o.detach() for o in out]
    return HessianVectorProduct(apply)


def functional_hvp(loss_fn: Callable[[TensorList], Tensor], params: Sequence[Tensor],
                   method: str = "double_backward") -> HessianVectorProduct:
    """HVP of ``loss_fn`` at ``params`` (not mutated): double backward or forward-over-reverse."""
    if method not in HVP_METHODS:
        raise ValueError(f"method: expected one of {HVP_METHODS}, got {method!r}")
    point = [p.detach() for p in params]
    if method == "forward_over_reverse":
        gradient = torch.func.grad(lambda ps: loss_fn(list(ps)))

        def apply(vectors):
            return list(torch.func.jvp(gradient, (tuple(point),),
                                       (tuple(v.detach() for v in vectors),))[1])
        return HessianVectorProduct(apply)
    leaves = [p.clone().requires_grad_() for p in point]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(leaves), leaves, create_graph=True,
                                    allow_unused=True, materialize_grads=True)
    return gradient_hvp(grads, leaves)


def dense_hessian(loss_fn: Callable[[TensorList], Tensor], params: Sequence[Tensor]) -> Tensor:
    """The full (N × N) Hessian of ``loss_fn`` at ``params`` by ``torch.func.hessian``.

    Forward-over-reverse on the flattened parameters: for small models only (analysis, and the
    independent oracle the Lanczos tests compare against).
    """
    sizes = [p.numel() for p in params]

    def flat_loss(flat):
        return loss_fn([c.view(p.shape) for c, p in zip(torch.split(flat, sizes), params)])
    return torch.func.hessian(flat_loss)(torch.cat([p.reshape(-1) for p in params]))


def matrix_hvp(matrix: Tensor) -> HessianVectorProduct:
    """HVP of an explicit symmetric matrix acting on a one-tensor list (tests and analysis)."""
    return HessianVectorProduct(lambda vectors: [matrix @ vectors[0]])


class CreateGraphBackward(TorchFunctionMode):
    """Within this mode ``Tensor.backward`` keeps the graph of the gradient (create_graph=True).

    DCAO runs a torch.optim closure under it at probe steps: afterwards ``p.grad`` can be
    differentiated again (``gradient_hvp([p.grad ...], params)``). The caller must replace
    ``p.grad`` by ``p.grad.detach()`` when done, which breaks the parameter↔grad reference cycle
    PyTorch warns about (that warning is silenced here for exactly this reason).
    """

    def __init__(self):
        super().__init__()
        self.backward_calls = 0  # 0 after the closure: its gradients bypassed Tensor.backward

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.backward:
            self.backward_calls += 1
            kwargs["create_graph"] = True
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle")
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def rademacher_like(like: Sequence[Tensor], generator: torch.Generator) -> TensorList:
    """Independent ±1 entries shaped like ``like``, drawn from ``generator`` (on its device)."""
    out = []
    for t in like:
        bits = torch.randint(0, 2, t.shape, generator=generator, device=generator.device)
        out.append((2.0 * bits - 1.0).to(device=t.device, dtype=t.dtype))
    return out


def gaussian_like(like: Sequence[Tensor], generator: torch.Generator) -> TensorList:
    """Standard normal entries shaped like ``like``, drawn from ``generator`` (on its device)."""
    return [torch.randn(t.shape, generator=generator, device=generator.device, dtype=t.dtype)
            .to(t.device) for t in like]


def hutchinson_trace(hvp: Callable[[Sequence[Tensor]], TensorList], like: Sequence[Tensor],
                     generator: torch.Generator, samples: int = 10,
                     dtype: torch.dtype | None = torch.float64) -> Tensor:
    """Hutchinson's estimator tr(H) ≈ (1/s) Σ_{j=1..s} z_jᵀ H z_j, z_j Rademacher (unbiased)."""
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples!r}")
    total = torch.zeros((), dtype=dtype)
    for _ in range(samples):
        z = rademacher_like(like, generator)
        hz = hvp(z)
        total = total + sum((a * b).sum().to(dtype).cpu() for a, b in zip(z, hz))
    return total / samples
