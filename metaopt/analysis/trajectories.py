"""Optimizer trajectories on 2-D test functions, and Adam's per-coordinate effective learning rate
(the GDSearch question "why does Adam shoot in early iterations?").

Any ``torch.optim.Optimizer`` runs: torch.optim classes, ``metaopt.optim`` (the integrators get a
closure, so every optimizer is stepped as ``opt.step(closure)``), and pretrained checkpoints via
``metaopt.load_optimizer``. A run records the points, f and ∇f along the path (exact, vmapped
after the run so the optimizer's own closure calls are not disturbed) and stops at the first
non-finite point or once |f| exceeds ``divergence`` (where a float loop would overflow).

For Adam/AdamW the effective learning rate of coordinate i at step t is

    η_t,i = lr / (sqrt(v̂_t,i) + ε),   v̂_t = v_t / (1 − β2ᵗ)   (AMSGrad: the running max of v)

so the step is Δx_t = −η_t ⊙ m̂_t with m̂_t = m_t / (1 − β1ᵗ). At t = 1, m̂/√v̂ = sign(g): every
coordinate moves by ≈ lr whatever the gradient's size, which is the early "shot".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Trajectory", "adam_effective_lr", "make_optimizer", "optimizer_factory",
           "resolve_function", "run_trajectories", "run_trajectory"]

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def resolve_function(function: str | Callable[[Tensor], Tensor]):
    """``(f, minimizers)`` from a registered 2-D test-function family name (a family of the task
    registry, ``metaopt.task_registry``, whose tasks carry a ``spec``) or a callable (then no
    known minimisers)."""
    if callable(function):
        return function, ()
    from metaopt.task_registry import get_family
    spec = getattr(get_family(function), "spec", None)
    if spec is None:
        raise ValueError(f"function: {function!r} is not a 2-D test function")
    return spec.function, spec.minimizers


def make_optimizer(name: str, params, **options) -> torch.optim.Optimizer:
    """Build ``name`` over ``params`` through the optimizer registry (``metaopt.registry``): a
    ``torch.optim`` or ``metaopt.optim`` class in any case (``"SGD"``, ``"sgd"``, ``"rk4"``), a
    preset (``"sgd_momentum"``), or a checkpoint (shipped name or existing path) with
    ``options`` as ``load_optimizer`` overrides. Unknown names: ``ValueError`` (did you mean)."""
    from metaopt import registry
    return registry.build(name, params, **options)


def optimizer_factory(name: str, **options) -> OptimizerFactory:
    """A factory ``params -> optimizer`` for ``make_optimizer(name, params, **options)``."""
    return lambda params: make_optimizer(name, params, **options)


def adam_effective_lr(optimizer: torch.optim.Optimizer, param: Tensor) -> Tensor:
    """lr / (sqrt(v̂) + ε) per coordinate of ``param`` from a torch.optim Adam/AdamW's state."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError("optimizer: expected torch.optim.Adam or AdamW, got "
                        f"{type(optimizer).__name__}")
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state[param]
    step = float(state["step"])
    v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
    v_hat = v / (1 - group["betas"][1] ** step)
    return group["lr"] / (v_hat.sqrt() + group["eps"])


@dataclass
class Trajectory:
    optimizer: str
    path: Tensor                     # (T+1, d) points x_0 … x_T (T < steps if it diverged)
    losses: Tensor                   # (T+1,) f(x_t)
    gradients: Tensor                # (T+1, d) ∇f(x_t)
    effective_lr: Tensor | None   # (T, d) Adam's η_t per coordinate (None for others)
    diverged_at: int | None       # first step whose point was non-finite / beyond the bound

    @property
    def step_lengths(self) -> Tensor:
        """(T,) ‖x_{t+1} − x_t‖."""
        return (self.path[1:] - self.path[:-1]).norm(dim=-1)

    def distance_to(self, minimizers: Sequence[Sequence[float]]) -> Tensor:
        """(T+1,) distance from each point to the nearest of ``minimizers``."""
        mins = torch.tensor(minimizers, dtype=self.path.dtype)
        return torch.cdist(self.path, mins).min(dim=1).values


def run_trajectory(function: str | Callable[[Tensor], Tensor], start: Sequence[float],
                   factory: OptimizerFactory, steps: int, *, name: str = "",
                   dtype: torch.dtype = torch.float64, divergence: float = 1e12) -> Trajectory:
    """Run one optimizer from ``start`` for ``steps`` steps of ``opt.step(closure)``."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: must be an int >= 0, got {steps!r}")
    f, _ = resolve_function(function)
    x = nn.Parameter(torch.as_tensor(start, dtype=dtype).clone())
    optimizer = factory([x])
    is_adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))

    def closure():
        optimizer.zero_grad()
        loss = f(x)
        loss.backward()
        return loss
    points, rates, diverged_at = [x.detach().clone()], [], None
    for t in range(1, steps + 1):
        optimizer.step(closure)
        point = x.detach().clone()
        with torch.no_grad():
            value = f(point)
        if not (torch.isfinite(point).all() and math.isfinite(float(value))
                and abs(float(value)) <= divergence):
            diverged_at = t
            break
        points.append(point)
        if is_adam:
            rates.append(adam_effective_lr(optimizer, x).detach().clone())
    path = torch.stack(points)
    losses = torch.func.vmap(f)(path)
    gradients = torch.func.vmap(torch.func.grad(f))(path)
    return Trajectory(name or type(optimizer).__name__, path, losses, gradients,
                      torch.stack(rates) if is_adam and rates else None, diverged_at)


def run_trajectories(function: str | Callable[[Tensor], Tensor],
                     optimizers: Mapping[str, OptimizerFactory], starts: Sequence[Sequence[float]],
                     steps: int, **kwargs) -> dict[str, list[Trajectory]]:
    """Every optimizer from every start: ``{name: [trajectory per start]}``."""
    return {name: [run_trajectory(function, start, factory, steps, name=name, **kwargs)
                   for start in starts] for name, factory in optimizers.items()}
