"""The hybrid's stability guard: steps past an explicit method's stability limit are shortened.

Linear stability (Hairer & Wanner, *Solving Ordinary Differential Equations II*, §IV.2): on the
gradient flow θ' = −∇L(θ) near a minimum with Hessian eigenvalue λ > 0, one explicit step of
size h multiplies that eigencomponent by R(−hλ), where R is the method's stability function —
for an explicit Runge–Kutta tableau (A, b) the polynomial R(z) = 1 + Σ_k z^k bᵀA^{k−1}𝟙. The step
is stable while |R(−hλ)| ≤ 1, i.e. while hλ ≤ β, β the method's real stability-interval bound:
β = 2 for gradient descent (the Euler step, R(z) = 1 + z: |1 − lr·λ| ≤ 1), 2 for every
two-stage second-order method (Heun, midpoint, Ralston), 2.5127 for three-stage third order,
2.7853 for classic RK4 (``real_stability_bound`` computes β from the tableau).

The guard estimates the curvature along the motion with the secant
κ̂ = ‖g_t − g_{t−1}‖ / ‖θ_t − θ_{t−1}‖ the switching features already compute (or the Lanczos
probe's |λ_max| where the rule has one). The norm form is ≥ the Rayleigh quotient
|⟨g_t − g_{t−1}, θ_t − θ_{t−1}⟩| / ‖θ_t − θ_{t−1}‖² (Cauchy–Schwarz) and ≤ λ_max on a quadratic,
so it never caps less than the inner-product secant (measured on an earlier variant of
this guard: with the inner product ``HybridGDODE()`` still diverged on Rosenbrock from
(−1.5, 2) in float32). Given a nominal step
size η (GD's lr, the ODE's h) the effective step is capped at

    η_eff = min(η, c/κ̂),        c = SAFETY · β,   SAFETY = 0.95

(c = 1.9 for GD, 2.646 for RK4): 5% inside the limit, so the stiffest mode still contracts
(|R| ≤ 0.9 for GD) despite the secant's estimation error. A GD step is shortened by scaling its
displacement, θ + (η_eff/η)·(θ_gd − θ) — for plain SGD exactly the step with lr = η_eff; an ODE
step is re-taken with h = η_eff. Where η·κ̂ ≤ c (or κ̂ is still unknown, κ̂ = 0) the step is left
bit-identical.

For GD, η = max(lr, (1 − μ)·‖θ_gd − θ‖/‖g‖), μ the module's momentum (0 if it has none): for
plain SGD exactly lr. The second term reads the step the module actually proposes, so a step
much longer than lr·‖g‖ is judged too — in particular a momentum buffer filled while the ODE
module ran (the GD module observes every step) can carry a step many times lr·‖g‖ when GD
resumes, which lr·κ̂ alone would not see. The factor (1 − μ) undoes heavy ball's steady-state
amplification ‖Δθ‖ → lr‖g‖/(1 − μ), so a healthy heavy-ball run stays inside the limit
(measured on a quadratic with lr·λ_max = 1.6, μ = 0.9: κ̂‖Δθ‖/‖g‖ ≤ 7.3, times 0.1 < 1.9);
Polyak's heavy ball is stable up to lr·λ < 2(1 + μ), so c = 1.9 is conservative for it.

For a Runge–Kutta step the secant along the last step is complemented by the secant between θ
and the step's first stage point, θ − h·a₂₁·g (the curvature along the gradient, free: the
stage is evaluated anyway), so the guard holds from the very first step, before any secant
exists. The guard reads it before the step is taken: the step is probed, only its first stage
evaluated; a probe past the limit is probed again at h = c/κ̂ (one evaluation each, charged; up
to 8 times, since on a steepening landscape the shorter chord sees a larger curvature), and the
step is then taken once at the last h, from its last probe's stage (an RK4 step refused once
costs 1 + 1 + 1 + 2 evaluations, where taking every attempt in full cost 1 + 3 + 3). The larger of
the two secants also guards the GD step that follows an ODE step, whose motion along the flow
can miss the stiff direction.

**Normalised GD modules are not guarded.** A GD module that divides the gradient by its own
running RMS (GARO's adam direction, ``GAROModule.normalised``) moves each coordinate by at most
about its step size a whatever the curvature, so its steps cannot blow up the way GD's do; at
its edge of stability (Cohen et al. 2022, *Adaptive Gradient Methods at the Edge of Stability*)
it oscillates, and the loss it then sees is what its controller reacts to. Both guards we tried
did harm there, measured on the hybrid with ``garo_general`` as its GD module: the Euclidean
secant (a flat coordinate moves as far as a stiff one) shortened nearly every step and cut the
validation speedup vs tuned Adam from 1.28 to 0.18; the same guard in the preconditioner's
metric (κ̂ = ‖D^{−1/2}Δg‖/‖D^{1/2}Δθ‖ against heavy ball's 2(1 + μ)) hid the oscillation from
the controller, whose Prodigy-scaled step kept growing until one step the secant missed blew
Rosenbrock up at 10x its horizon (GARO alone recovers). Non-finite steps are still undone.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..rules.base import Scalar
from ..rules.tableaus import ButcherTableau
from .handoff import _expand

__all__ = ["GD_STABILITY_BOUND", "SAFETY", "cap_scale", "capped_step_sizes", "gd_module_momentum",
           "ode_stability_limit", "gd_step_size", "real_stability_bound", "shorten",
           "stage_curvature"]

GD_STABILITY_BOUND = 2.0  # forward Euler: |1 − lr·λ| ≤ 1
SAFETY = 0.95


def stability_polynomial(tableau: ButcherTableau) -> list[float]:
    """Coefficients c_k of R(z) = Σ_k c_k z^k: c_0 = 1, c_k = bᵀA^{k−1}𝟙 (explicit: degree s)."""
    s = tableau.stages
    a = [[tableau.a[i][j] if j < i else 0.0 for j in range(s)] for i in range(s)]
    vector, coefficients = [1.0] * s, [1.0]
    for _ in range(s):
        coefficients.append(sum(b * v for b, v in zip(tableau.b, vector)))
        vector = [sum(a[i][j] * vector[j] for j in range(s)) for i in range(s)]
    return coefficients


@functools.cache
def real_stability_bound(tableau: ButcherTableau) -> float:
    """β = sup{x : |R(−y)| ≤ 1 for all y ∈ [0, x]}, by a scan and bisection (1e-12)."""
    coefficients = stability_polynomial(tableau)

    def unstable(x: float) -> bool:
        return abs(sum(c * (-x) ** k for k, c in enumerate(coefficients))) > 1 + 1e-12

    low, step = 0.0, 1e-2
    while not unstable(low + step):
        low += step
        if low > 1e3:
            return math.inf
    high = low + step
    while high - low > 1e-12:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if unstable(mid) else (mid, high)
    return low


def ode_stability_limit(ode_rule) -> float | None:
    """c = SAFETY·β for a fixed-step Runge–Kutta module; None for modules whose own error
    control chooses the step (embedded pairs, torchdiffeq flows): their step is not η."""
    tableau = getattr(ode_rule, "tableau", None)
    if tableau is None or tableau.adaptive:
        return None
    return SAFETY * real_stability_bound(tableau)


def cap_scale(eta: Tensor | float, kappa: Tensor, c: float) -> Tensor:
    """η_eff/η = min(1, c/(η·κ̂)); exactly 1 where η·κ̂ ≤ c, κ̂ = 0 or η = 0."""
    product = torch.as_tensor(eta, dtype=kappa.dtype, device=kappa.device) * kappa
    over = product > c
    return torch.where(over, c / torch.where(over, product, torch.ones_like(product)),
                       torch.ones_like(product))


def capped_step_sizes(lrs: list, kappa: Tensor, c: float, like: Sequence[Tensor],
                      batched: bool, runs: list | None = None):
    """The step sizes capped at c/κ̂ (module docstring), or None where every one is
    within the limit (then the caller keeps the originals: bit-identical steps). ``runs``: a
    list that receives which runs were capped (``(R,)`` when batched)."""
    # per-run step sizes may already be expanded against their tensor: back to (R,)
    lrs = [h.reshape(-1) if batched and isinstance(h, Tensor) and h.dim() > 0 else h
           for h in lrs]
    scales = [cap_scale(h, kappa, c) for h in lrs]
    if runs is not None:
        runs.append(torch.stack([(s < 1).expand_as(kappa) for s in scales]).any(dim=0))
    if not any(bool((s < 1).any()) for s in scales):
        return None
    return [_expand(torch.as_tensor(h, dtype=p.dtype, device=p.device) * s.to(p.dtype), p,
                    batched) for h, s, p in zip(lrs, scales, like)]


def _largest(value) -> float:
    if isinstance(value, (list, tuple)):
        return max((_largest(v) for v in value), default=0.0)
    return float(value.detach().max()) if isinstance(value, Tensor) else float(value)


def gd_step_size(displacement: Sequence[Tensor], grad_norm: Tensor, norms, lr=0.0,
                 momentum=0.0) -> Tensor:
    """η = max(lr, (1 − μ)·‖θ_gd − θ‖/‖g‖) (module docstring; lr where g = 0)."""
    moved = norms([d.detach() for d in displacement])
    positive = grad_norm > 0
    per_gradient = torch.where(positive, moved / torch.where(positive, grad_norm,
                                                             torch.ones_like(grad_norm)),
                               torch.zeros_like(moved))
    discount = torch.full_like(per_gradient, 1.0 - min(max(_largest(momentum), 0.0), 1.0))
    lr = torch.as_tensor(lr.detach() if isinstance(lr, Tensor) else lr, dtype=moved.dtype,
                         device=moved.device)
    return torch.maximum(lr, per_gradient * discount)


def gd_module_momentum(hyper) -> Scalar:
    """The GD module's momentum: ``hyper.gd_momentum`` if given (GARO's last mom_t), else its
    hyper's ``momentum`` (0 for a rule without one)."""
    if hyper.gd_momentum is not None:
        return hyper.gd_momentum
    gd = hyper.gd
    return gd.get("momentum", 0.0) if isinstance(gd, Mapping) else getattr(gd, "momentum", 0.0)


def shorten(params: Sequence[Tensor], proposed: Sequence[Tensor], scale: Tensor,
            expand) -> list[Tensor]:
    """θ + s·(θ' − θ) where s < 1, θ' itself (bit-identical) where s = 1."""
    if scale.dim() == 0 and not bool(scale < 1):  # one step, within the limit: nothing to do
        return list(proposed)
    out = []
    for p, q in zip(params, proposed):
        s = expand(scale, q).to(q.dtype)
        out.append(torch.where(s < 1, p + s * (q - p), q))
    return out


def stage_curvature(point: Sequence[Tensor], grads: Sequence[Tensor], params: Sequence[Tensor],
                    first: Sequence[Tensor], norms) -> Tensor:
    """κ̂ = ‖∇L(y) − ∇L(θ)‖ / ‖y − θ‖ between θ and an ODE stage point y (0 if y = θ): the
    secant a Runge–Kutta step evaluates anyway, known before the first step has been taken."""
    with torch.no_grad():
        moved = norms([y.detach() - p.detach() for y, p in zip(point, params)])
        change = norms([g.detach() - f.detach() for g, f in zip(grads, first)])
        return torch.where(moved > 0, change / torch.where(moved > 0, moved,
                                                           torch.ones_like(moved)),
                           torch.zeros_like(change))
