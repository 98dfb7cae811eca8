"""The hybrid's switching criteria as pure functions (the hybrid GD–ODE optimizer).

Gradient magnitude, curvature (the secant ‖g_t − g_{t−1}‖/‖θ_t − θ_{t−1}‖ every step, or a
Lanczos probe of |λ_max| from ``metaopt.rules.lanczos`` on finite-difference HVPs), stagnation
(relative loss progress over a window), the normalised ``FEATURES`` they form, and the decision
rules that read them (``HeuristicSwitch`` with hysteresis; ``ConstantSwitch``). The step that
uses them is ``metaopt.hybrid.rule.HybridRule``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rules.base import GradFn
from ..rules.lanczos import lanczos

FEATURES = ("log_grad_ratio", "log_stability", "progress", "mode", "log_dwell")
NUM_FEATURES = len(FEATURES)
CRITERIA = ("gradient", "curvature", "stagnation")
_TINY = 1e-30
_LOG_CLIP = 30.0


def run_norms(tensors: Sequence[Tensor], batched: bool = False) -> Tensor:
    """2-norm over all tensors (``()``), or per run over the leading dimension (``(R,)``)."""
    if batched:
        return torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1) for t in tensors]), dim=0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def difference_norm(a: Sequence[Tensor], b: Sequence[Tensor], norm_a: Tensor | None = None,
                    norm_b: Tensor | None = None, batched: bool = False) -> Tensor:
    """‖a − b‖. Given both norms and no graph, by ‖a‖² + ‖b‖² − 2⟨a, b⟩ (one dot per tensor, no
    temporary: the policy-cost benchmark asks for it), computed exactly instead where the
    difference is under 3% of the norms (there the identity would cancel)."""
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in list(a) + list(b))
    if norm_a is None or norm_b is None or batched or needs_graph:
        return run_norms([x - y for x, y in zip(a, b)], batched)
    dots = torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()
    square = (norm_a.square() + norm_b.square() - 2 * dots).clamp_min(0)
    if bool(square < 1e-3 * (norm_a.square() + norm_b.square())):
        return run_norms([x - y for x, y in zip(a, b)], batched)
    return square.sqrt()


def secant_curvature(grads: Sequence[Tensor], prev_grads: Sequence[Tensor],
                     displacement_norm: Tensor, batched: bool = False,
                     grad_norm: Tensor | None = None,
                     prev_grad_norm: Tensor | None = None) -> Tensor:
    """κ = ‖g_t − g_{t−1}‖ / ‖θ_t − θ_{t−1}‖ (0 where the iterate did not move)."""
    diff = difference_norm(grads, prev_grads, grad_norm, prev_grad_norm, batched)
    moved = displacement_norm > 0
    return torch.where(moved, diff / torch.where(moved, displacement_norm,
                                                 torch.ones_like(displacement_norm)),
                       torch.zeros_like(diff))


def lanczos_curvature(grad_fn: GradFn, params: Sequence[Tensor], grads: Sequence[Tensor],
                      iters: int, generator: torch.Generator) -> Tensor:
    """|λ_max| of the Hessian by ``metaopt.rules.lanczos`` on finite-difference HVPs
    Hv ≈ (∇L(θ + εv) − ∇L(θ))/ε (one gradient evaluation each, so any closure works)."""
    with torch.no_grad():
        theta = [p.detach() for p in params]
        scale = 1.0 + float(run_norms(theta))
        eps = math.sqrt(torch.finfo(theta[0].dtype).eps) * scale

        def hvp(vectors):
            _, shifted = grad_fn([p + eps * v for p, v in zip(theta, vectors)])
            return [(s.detach() - g.detach()) / eps for s, g in zip(shifted, grads)]
        result = lanczos(hvp, theta, k=1, max_iters=iters, tol=1e-2, generator=generator)
    return result.eigenvalues[0].abs().to(theta[0].dtype)


def relative_progress(losses: Tensor, seen: int | Tensor) -> Tensor:
    """(L_{t−W} − L_t)/(|L_{t−W}| + |L_t|) ∈ [−1, 1] over the window ``losses`` (oldest first);
    1 (progressing) until the window is full or when no loss is known. ``seen``: the losses
    seen, an int, or one per run (runs of a meta-batch at different steps)."""
    newest, oldest = losses[-1], losses[0]
    value = (oldest - newest) / (oldest.abs() + newest.abs() + _TINY)
    if isinstance(seen, Tensor):
        return torch.where((seen < losses.shape[0]) | ~torch.isfinite(value),
                           torch.ones_like(value), value)
    if seen < losses.shape[0]:
        return torch.ones_like(value)
    return torch.where(torch.isfinite(value), value, torch.ones_like(value))


def switch_features(log_grad_ratio: Tensor, log_stability: Tensor, progress: Tensor,
                    mode: Tensor, dwell: Tensor) -> Tensor:
    """Stack the ``FEATURES`` (last dimension), logs clipped to ±30."""
    return torch.stack([log_grad_ratio.clamp(-_LOG_CLIP, _LOG_CLIP),
                        log_stability.clamp(-_LOG_CLIP, _LOG_CLIP), progress.clamp(-1, 1),
                        mode, torch.log1p(dwell)], dim=-1)


@dataclass(frozen=True)
class HeuristicSwitch:
    """Seed §2.3's three criteria, each usable alone or combined (``criteria``), with hysteresis.

    From GD, go to ODE when any enabled criterion fires::

        gradient:   ‖g‖/‖g_0‖ < grad_threshold           (small gradient: near a minimum)
        curvature:  lr·κ > curvature_threshold           (GD unstable: highly curved region)
        stagnation: progress over the window < stagnation_threshold

    From ODE, go back to GD when every enabled gradient/curvature criterion has cleared its
    threshold widened by ``hysteresis`` (‖g‖/‖g_0‖ > h·τ_g, lr·κ < τ_κ/h), or the ODE stagnates.
    Defaults were measured on the study's five functions (``scripts/hybrid_study.py sweep=true``,
    400 starts, SGD-momentum lr 0.01 / RK4): τ_κ = 2 is GD's stability limit and the best
    curvature threshold on Rastrigin (median final gap 9.95 vs 12.3–16.9 at 1 and 4); τ_g = 1e-2
    halves the iterations to target on Himmelblau / six-hump camel at 1.5× the evaluations of
    1e-3, while 1e-1 spends 2× more for little gain; the stagnation threshold barely matters
    between 1e-4 and 1e-2 (its window W = 10 decides); h = 2 and min_dwell = 5 stop chattering.
    """

    criteria: tuple[str, ...] = CRITERIA
    grad_threshold: float = 1e-2
    curvature_threshold: float = 2.0
    stagnation_threshold: float = 1e-3
    hysteresis: float = 2.0
    hard: bool = True

    def __post_init__(self):
        unknown = set(self.criteria) - set(CRITERIA)
        if unknown or not self.criteria:
            raise ValueError(f"criteria: choose a non-empty subset of {CRITERIA}, "
                             f"got {self.criteria!r}")
        for name in ("grad_threshold", "curvature_threshold", "stagnation_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        if not (isinstance(self.hysteresis, (int, float)) and math.isfinite(self.hysteresis)
                and self.hysteresis >= 1):
            raise ValueError(f"hysteresis: must be a finite number >= 1, got {self.hysteresis!r}")

    def gate(self, features: Tensor) -> Tensor:
        """The desired mode (1 = ODE) from ``FEATURES`` (last dimension)."""
        r, s, progress, mode = (features[..., i] for i in range(4))
        log_tg, log_tk = math.log(self.grad_threshold), math.log(self.curvature_threshold)
        log_h = math.log(self.hysteresis)
        false = torch.zeros_like(r, dtype=torch.bool)
        enter, clear, leave = false, ~false, false
        any_clear = False
        if "gradient" in self.criteria:
            enter = enter | (r < log_tg)
            clear, any_clear = clear & (r > log_tg + log_h), True
        if "curvature" in self.criteria:
            enter = enter | (s > log_tk)
            clear, any_clear = clear & (s < log_tk - log_h), True
        if "stagnation" in self.criteria:
            stagnating = progress < self.stagnation_threshold
            enter, leave = enter | stagnating, leave | stagnating
        if any_clear:
            leave = leave | clear
        return torch.where(mode > 0.5, ~leave, enter).to(features.dtype)


@dataclass(frozen=True)
class ConstantSwitch:
    """Always GD (``p = 0``) or always ODE (``p = 1``): the study's single-module baselines."""

    p: float
    hard: bool = True

    def gate(self, features: Tensor) -> Tensor:
        return torch.full_like(features[..., 0], float(self.p))
