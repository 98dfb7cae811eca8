"""Optimizers vectorised over many independent starting points: one tensor program for a whole grid.

Basin maps and noise experiments run thousands of tiny 2-D problems. Looping torch.optim over
them costs a Python step per start per iteration; here the N starts are the rows of one (N, d)
tensor ``X``, the function is evaluated on all rows at once (on ``X`` for functions written over
the last dimension, on ``X.T`` for coordinate-wise ones, else by ``torch.func.vmap``) and the
gradients come from one autograd pass over the sum (rows are independent, so
∂(Σ_n f(x_n))/∂x_n = ∇f(x_n)).

The update rules replicate torch.optim's single-tensor formulas operation for operation (float64
results equal a loop of ``torch.optim`` runs; ``tests/analysis/test_batched.py`` holds them equal).
They are not the pure rules of ``metaopt.rules`` (``SGDRule``, ``AdamRule``, ``RMSpropRule``):
those cover the subset a controller drives (momentum, coupled decay) and lack Nesterov,
dampening, AMSGrad, AdamW's decoupled decay and centred RMSprop, which the GDSearch studies use;
on the common subset the test holds both equal. Names follow the optimizer registry
(``metaopt.registry``), matched case-insensitively:

* ``sgd``:      g ← g + wd·x;  b ← g (first step) else μ·b + (1 − τ)·g;  d = g + μ·b (Nesterov)
  or b;  x ← x − lr·d
* ``adam`` / ``adamw``: m ← lerp(m, g, 1 − β1);  v ← β2·v + (1 − β2)·g²;  (AMSGrad: v̄ = max)
  x ← x − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε);  L2 decay (adam) or x ← x(1 − lr·wd) (adamw)
* ``rmsprop``:  s ← α·s + (1 − α)·g²;  centred: a ← lerp(a, g, 1 − α), den = √(s − a²) + ε;
  with momentum b ← μ·b + g/den, x ← x − lr·b, else x ← x − lr·g/den
* a Butcher tableau name (``rk4``, ``heun``, ``ralston``, …): ``metaopt.rules.runge_kutta`` on the
  gradient flow, the same rule the ``metaopt.optim`` integrators use.

Gradient noise (the GDSearch controlled-noise experiment) adds σ·ξ, ξ ~ N(0, I) drawn from an
explicit generator, to every gradient evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaopt.registry import match_name
from metaopt.rules.hyper import ODEHyper
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.tableaus import TABLEAUS

__all__ = ["BatchedOptimizer", "BatchedRun", "batched_gradient", "run_batched"]

_DEFAULTS = {
    "sgd": dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
    "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False),
}
_RK_DEFAULTS = dict(lr=1e-2, weight_decay=0.0)  # metaopt.optim.RungeKutta's defaults
GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def _stacked_form(function: Callable[[Tensor], Tensor], d: int) -> Callable[[Tensor], Tensor]:
    """``X (N, d) -> (f(x_n))_n`` without vmap where ``function`` allows it: written over the last
    dimension (the bundled test functions), ``function(X)``; written on coordinates ``v[0], v[1],
    …`` without reducing over ``v``, ``function(X.T)``; else ``torch.func.vmap(function)``.
    Each direct form is checked against vmap at fixed probe points."""
    probe = torch.linspace(-1.3, 1.7, 5 * d, dtype=torch.float64).reshape(5, d)
    expected = torch.func.vmap(function)(probe)
    for form in (function, lambda x: function(x.T)):
        try:
            direct = form(probe)
        except Exception:  # noqa: BLE001  (any failure means: not this form)
            continue
        if direct.shape == expected.shape and torch.allclose(direct, expected, rtol=1e-13,
                                                             atol=0):
            return form
    return torch.func.vmap(function)


def batched_gradient(function: Callable[[Tensor], Tensor], d: int = 2) -> GradFn:
    """``X (N, d) -> (f(x_n) (N,), ∇f(x_n) (N, d))`` by one autograd pass of Σ_n f(x_n).

    The function is evaluated on all rows at once without vmap where its form allows
    (``_stacked_form``: ≈2.5× faster than vmap on CPU).
    """
    values_of = _stacked_form(function, d)

    def grad_fn(points: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = points.detach().requires_grad_()
            values = values_of(leaf)
            (grads,) = torch.autograd.grad(values.sum(), leaf)
        return values.detach(), grads
    return grad_fn


@dataclass(frozen=True)
class BatchedOptimizer:
    """A torch.optim rule (``sgd``, ``adam``, ``adamw``, ``rmsprop``) or an RK tableau name, with
    torch.optim's keyword options (missing ones take torch.optim's defaults)."""

    name: str
    options: Mapping = field(default_factory=dict)

    def __post_init__(self):
        # the registry's vocabulary and matching ("SGD" and "sgd" are one name)
        name = match_name(self.name, sorted(_DEFAULTS) + sorted(TABLEAUS), "name")
        object.__setattr__(self, "name", name)
        allowed = set(_DEFAULTS.get(self.name, _RK_DEFAULTS))
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise ValueError(f"options: {self.name} does not take {unknown}; "
                             f"takes {sorted(allowed)}")
        for key, value in self.hyper.items():
            values = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"options.{key}: must be finite, got {value!r}")

    @property
    def hyper(self) -> dict:
        base = dict(_DEFAULTS.get(self.name, _RK_DEFAULTS))
        base.update(self.options)
        if "betas" in base:
            base["betas"] = tuple(base["betas"])
        return base

    def init(self, x: Tensor) -> dict:
        return {"step": 0}

    def step(self, x: Tensor, grad_fn: GradFn, state: dict) -> Tensor:
        h = self.hyper
        if self.name in TABLEAUS:
            rule = state.setdefault("rule", RungeKuttaRule(self.name))
            new, _ = rule.step([x], lambda ps: _as_list(grad_fn(ps[0])), {}, ODEHyper(**h))
            return new[0]
        _, g = grad_fn(x)
        state["step"] += 1
        return getattr(self, f"_{self.name}")(x, g, state, h)

    @staticmethod
    def _sgd(x, g, state, h):
        if h["weight_decay"] != 0:
            g = g.add(x, alpha=h["weight_decay"])
        if h["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.clone()
            else:
                buf.mul_(h["momentum"]).add_(g, alpha=1 - h["dampening"])
            g = g.add(buf, alpha=h["momentum"]) if h["nesterov"] else buf
        return x.add(g, alpha=-h["lr"])

    def _adamw(self, x, g, state, h):
        return self._adam(x, g, state, h, decoupled=True)

    @staticmethod
    def _adam(x, g, state, h, decoupled=False):
        beta1, beta2 = h["betas"]
        if h["weight_decay"] != 0:
            if decoupled:
                x = x.mul(1 - h["lr"] * h["weight_decay"])
            else:
                g = g.add(x, alpha=h["weight_decay"])
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(x), torch.zeros_like(x)
            if h["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(x)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = h["lr"] / (1 - beta1 ** t)
        bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
        if h["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        denom = (v.sqrt() / bias_correction2_sqrt).add_(h["eps"])
        return x.addcdiv(m, denom, value=-step_size)

    @staticmethod
    def _rmsprop(x, g, state, h):
        if h["weight_decay"] != 0:
            g = g.add(x, alpha=h["weight_decay"])
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(x)
            if h["centered"]:
                state["grad_avg"] = torch.zeros_like(x)
            if h["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(x)
        s = state["square_avg"]
        s.mul_(h["alpha"]).addcmul_(g, g, value=1 - h["alpha"])
        if h["centered"]:
            a = state["grad_avg"]
            a.lerp_(g, 1 - h["alpha"])
            avg = s.addcmul(a, a, value=-1).sqrt_()
        else:
            avg = s.sqrt()
        avg = avg.add_(h["eps"])
        if h["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.mul_(h["momentum"]).addcdiv_(g, avg)
            return x.add(buf, alpha=-h["lr"])
        return x.addcdiv(g, avg, value=-h["lr"])


def _as_list(pair):
    loss, grads = pair
    return loss.sum(), [grads]


@dataclass
class BatchedRun:
    final: Tensor                 # (N, d) points after the run
    final_loss: Tensor            # (N,) f at the final points (NaN/inf where diverged)
    diverged_at: Tensor           # (N,) int64 first step with a non-finite point, −1 if never
    events: dict[str, Tensor]     # name -> (N,) int64 first step (0 = start) the event held, −1
    path: Tensor | None        # (T+1, N, d) when ``record=True``


def run_batched(function: Callable[[Tensor], Tensor], starts: Tensor, optimizer: BatchedOptimizer,
                steps: int, *, noise_std: float = 0.0, generator: torch.Generator | None = None,
                events: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
                record: bool = False) -> BatchedRun:
    """Run ``optimizer`` from every row of ``starts`` (N, d) for ``steps`` steps, all at once.

    ``events`` maps names to predicates ``X -> (N,) bool``; the first step each holds is recorded
    per start (e.g. "left the saddle's ball", "reached a minimum"). With ``noise_std > 0`` every
    gradient evaluation gets σ·ξ added, ξ ~ N(0, I) from ``generator`` (required then).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: must be an int >= 0, got {steps!r}")
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std: must be finite and >= 0, got {noise_std!r}")
    if noise_std > 0 and generator is None:
        raise ValueError("generator: required when noise_std > 0 (randomness is explicit)")
    exact = batched_gradient(function, starts.shape[1])
    grad_fn = exact
    if noise_std > 0:
        def grad_fn(points):
            values, grads = exact(points)
            noise = torch.randn(grads.shape, generator=generator, dtype=grads.dtype,
                                device=generator.device).to(grads.device)
            return values, grads + noise_std * noise
    x = starts.detach().clone()
    n = x.shape[0]
    never = torch.full((n,), -1, dtype=torch.long, device=x.device)
    diverged_at = never.clone()
    hits = {name: torch.where(pred(x), 0, -1) for name, pred in (events or {}).items()}
    path = [x.clone()] if record else None
    state = optimizer.init(x)
    for t in range(1, steps + 1):
        with torch.no_grad():
            x = optimizer.step(x, grad_fn, state)
        bad = ~torch.isfinite(x).all(dim=1)
        diverged_at = torch.where(bad & (diverged_at < 0), t, diverged_at)
        for name, pred in (events or {}).items():
            hits[name] = torch.where(pred(x) & (hits[name] < 0), t, hits[name])
        if record:
            path.append(x.clone())
    final_loss, _ = exact(x) if n else (x.new_zeros(0), None)
    return BatchedRun(final=x, final_loss=final_loss, diverged_at=diverged_at, events=hits,
                      path=torch.stack(path) if record else None)
