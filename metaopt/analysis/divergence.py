"""Divergence anatomy of heavy-ball momentum (the GDSearch case: SGD+momentum β=0.99,
lr=0.01 overflows on Rosenbrock from (−1.5, 2); lr=0.001 is stable; "rule of thumb: if β > 0.9,
use lr < 0.001·(1−β)").

torch.optim.SGD with momentum β (dampening 0) is the heavy ball

    v_{t+1} = β v_t + ∇f(θ_t),   θ_{t+1} = θ_t − lr · v_{t+1}       (v_1 = ∇f(θ_0)).

Near a point where the Hessian is H (eigenvalue λ along an eigenvector) the pair (v, θ) evolves by
the matrix [[β, λ], [−lr·β, 1 − lr·λ]], whose eigenvalues are the roots of
z² − (1 + β − lr·λ) z + β = 0. The iteration is linearly stable iff every root has |z| < 1, i.e.
0 < lr·λ < 2(1 + β) (Polyak 1964); the largest |z| is the predicted per-step growth of the velocity
once the dominant direction takes over. ``divergence_anatomy`` reports, for one run of
torch.optim.SGD, the exact Hessian at the start (condition number, λ_max), that prediction, the
measured velocity growth ‖v_{t+1}‖/‖v_t‖ and the step at which the loss overflows, plus the exact
curvature along the path. ``heavy_ball_grid`` runs a whole (β × lr) grid as one tensor program to
check the rule of thumb against the observed stability boundary.
"""
from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .hessian import condition_number

__all__ = ["DivergenceAnatomy", "HeavyBallGrid", "divergence_anatomy", "heavy_ball_grid",
           "heavy_ball_growth", "heavy_ball_max_stable_lr", "point_hessians", "rule_of_thumb_lr"]


def heavy_ball_growth(lr: float, beta: float, eigenvalue: float) -> float:
    """Spectral radius of the heavy-ball iteration on curvature ``eigenvalue``: the largest |z| with
    z² − (1 + β − lr·λ) z + β = 0 (> 1: every step multiplies the velocity by about this much)."""
    b = 1.0 + beta - lr * eigenvalue
    root = cmath.sqrt(b * b - 4.0 * beta)
    return max(abs((b + root) / 2), abs((b - root) / 2))


def heavy_ball_max_stable_lr(beta: float, eigenvalue: float) -> float:
    """The largest stable step on curvature λ > 0: lr < 2(1 + β)/λ."""
    return 2.0 * (1.0 + beta) / eigenvalue


def rule_of_thumb_lr(beta: float) -> float:
    """The rule-of-thumb starting point for high momentum: lr = 0.001·(1 − β)."""
    return 1e-3 * (1.0 - beta)


def point_hessians(function: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """Exact Hessians (N, d, d) of a scalar function of a d-vector at ``points`` (N, d), by double
    backward over the vmapped forward (row i of H_n is ∂(∂f/∂x_i summed over n)/∂x_n). Same
    numbers as ``torch.func.hessian`` without its forward-mode machinery, whose first use costs
    seconds of imports."""
    with torch.enable_grad():
        leaf = points.detach().requires_grad_()
        values = torch.func.vmap(function)(leaf)
        (grads,) = torch.autograd.grad(values.sum(), leaf, create_graph=True)
        rows = [torch.autograd.grad(grads[:, i].sum(), leaf, retain_graph=True)[0]
                for i in range(points.shape[-1])]
    return torch.stack(rows, dim=1).detach()


@dataclass(frozen=True)
class DivergenceAnatomy:
    lr: float
    beta: float
    start: Tensor                # (d,)
    hessian: Tensor              # (d, d) exact Hessian at the start
    eigenvalues: Tensor          # (d,) ascending
    condition_number: float      # max|λ| / min|λ| at the start
    lr_lambda_max: float         # lr · λ_max(start); stable needs < 2(1 + β)
    max_stable_lr: float         # 2(1 + β)/λ_max(start)
    predicted_growth: float      # heavy_ball_growth(lr, β, λ_max(start))
    losses: Tensor               # (T+1,) f(θ_t) until the end or the overflow
    path: Tensor                 # (T+1, d)
    velocity_norms: Tensor       # (T,) ‖v_t‖, t = 1..T
    velocity_growth: Tensor      # (T−1,) ‖v_{t+1}‖/‖v_t‖
    lambda_max_path: Tensor      # λ_max of the Hessian at the first ``curvature_steps`` + 1 points
    diverged_at: int | None      # first step whose loss is non-finite (or > overflow)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def divergence_anatomy(function: Callable[[Tensor], Tensor], start: Sequence[float] | Tensor,
                       lr: float, beta: float, steps: int = 1000, overflow: float = math.inf,
                       curvature_steps: int = 100) -> DivergenceAnatomy:
    """Run torch.optim.SGD(lr, momentum=β) on ``function`` from ``start`` (float64) and dissect it.

    The exact Hessian is evaluated at the first ``curvature_steps`` + 1 points of the path (a
    blow-up happens within a few steps; the exact 2×2 Hessians cost a vmapped double backward)."""
    x0 = torch.as_tensor(start, dtype=torch.float64).detach().clone()
    hessian = point_hessians(function, x0[None])[0]
    eigenvalues = torch.linalg.eigvalsh(hessian)
    lam_max = float(eigenvalues.abs().max())
    x = x0.clone().requires_grad_()
    optimizer = torch.optim.SGD([x], lr=lr, momentum=beta)
    losses, path, velocities, diverged_at = [], [x0.clone()], [], None
    for t in range(steps + 1):
        optimizer.zero_grad()
        loss = function(x)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or losses[-1] > overflow:
            diverged_at = t
            break
        if t == steps:
            break
        loss.backward()
        optimizer.step()
        velocities.append(float(optimizer.state[x]["momentum_buffer"].norm()))
        path.append(x.detach().clone())
    path_t = torch.stack(path)
    head = path_t[:curvature_steps + 1]
    finite = torch.isfinite(head).all(dim=1)
    lam_path = torch.full((head.shape[0],), math.nan, dtype=torch.float64)
    if finite.any():
        lam_path[finite] = torch.linalg.eigvalsh(point_hessians(function, head[finite]))[:, -1]
    v = torch.tensor(velocities, dtype=torch.float64)
    return DivergenceAnatomy(
        lr=lr, beta=beta, start=x0, hessian=hessian, eigenvalues=eigenvalues,
        condition_number=float(condition_number(eigenvalues)), lr_lambda_max=lr * lam_max,
        max_stable_lr=heavy_ball_max_stable_lr(beta, lam_max),
        predicted_growth=heavy_ball_growth(lr, beta, lam_max),
        losses=torch.tensor(losses, dtype=torch.float64), path=path_t, velocity_norms=v,
        velocity_growth=v[1:] / v[:-1], lambda_max_path=lam_path, diverged_at=diverged_at)


@dataclass(frozen=True)
class HeavyBallGrid:
    betas: Tensor        # (B,)
    lrs: Tensor          # (L,)
    diverged_at: Tensor  # (B, L) int64, −1 where the run stayed finite for all steps
    final_loss: Tensor   # (B, L) loss after ``steps`` steps (inf where diverged)

    @property
    def diverged(self) -> Tensor:
        return self.diverged_at >= 0

    def max_stable_lr(self) -> Tensor:
        """(B,) per β, the largest lr of the grid below which no run diverged (NaN if none)."""
        out = torch.full((len(self.betas),), math.nan, dtype=torch.float64)
        order = torch.argsort(self.lrs)
        for i in range(len(self.betas)):
            for j in order.tolist():
                if bool(self.diverged[i, j]):
                    break
                out[i] = self.lrs[j]
        return out


def heavy_ball_grid(function: Callable[[Tensor], Tensor], start: Sequence[float] | Tensor,
                    lrs: Sequence[float], betas: Sequence[float], steps: int = 1000,
                    overflow: float = math.inf) -> HeavyBallGrid:
    """Every (β, lr) pair from the same start, advanced together as one (B·L, d) tensor.

    The update is torch.optim.SGD's (momentum buffer initialised to the first gradient); rows are
    independent, so one vmapped gradient serves them all. A row that overflows is frozen."""
    lr_t = torch.as_tensor(lrs, dtype=torch.float64)
    beta_t = torch.as_tensor(betas, dtype=torch.float64)
    bb, ll = torch.meshgrid(beta_t, lr_t, indexing="ij")
    beta_col, lr_col = bb.reshape(-1, 1), ll.reshape(-1, 1)
    x = torch.as_tensor(start, dtype=torch.float64).expand(beta_col.shape[0], -1).clone()
    values_of = torch.func.vmap(function)  # forward vmapped, one backward of the sum: rows are
    # independent so ∂Σf/∂x_n = ∇f(x_n) (~10x cheaper than vmapping torch.func.grad)
    velocity = torch.zeros_like(x)
    diverged_at = torch.full((x.shape[0],), -1, dtype=torch.int64)
    alive = torch.ones(x.shape[0], dtype=torch.bool)
    loss = torch.empty(0)
    for t in range(steps + 1):
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            values = values_of(leaf)
            (grad,) = torch.autograd.grad(values.sum(), leaf)
        loss = values.detach()
        bad = alive & (~torch.isfinite(loss) | (loss > overflow))
        diverged_at[bad] = t
        alive &= ~bad
        if t == steps or not alive.any():
            break
        velocity = beta_col * velocity + grad  # v_1 = ∇f(θ_0), as torch.optim.SGD
        x = torch.where(alive[:, None], x - lr_col * velocity, x)
    final = torch.where(alive, loss, torch.full_like(loss, math.inf))
    shape = (len(beta_t), len(lr_t))
    return HeavyBallGrid(beta_t, lr_t, diverged_at.reshape(shape), final.reshape(shape))
