"""Learning-rate sensitivity around the best value (a GDSearch study:
sensitivity around the best hyperparameters, lr ± 10%).

``best_lr`` picks the lr of a grid with the lowest final loss (ties: fewer steps to target);
``lr_sensitivity`` reruns at lr·(1 + r) for r in a relative grid (default −10 %, −5 %, 0, +5 %,
+10 %) and reports the spread of the final loss (max − min and max/min) and of the steps to target
(max − min; None when some perturbed run never reaches it). A robust optimum has a small spread;
an optimum at the edge of stability shows a spread of orders of magnitude (one side diverges).

A run is any ``run(lr) -> losses`` (a loss per step, the initial loss first), so the instrument is
independent of what is optimised; ``function_run`` builds one for a torch.optim optimizer on a
function of a point.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .convergence import as_losses, steps_to_target

__all__ = ["Sensitivity", "best_lr", "function_run", "lr_sensitivity"]

Run = Callable[[float], Sequence[float] | Tensor]


def function_run(function: Callable[[Tensor], Tensor], start: Sequence[float] | Tensor,
                 make_optimizer: Callable[..., torch.optim.Optimizer], steps: int) -> Run:
    """``run(lr)``: ``make_optimizer([x], lr=lr)`` for ``steps`` steps on ``function`` from
    ``start`` (float64); losses f(x_0..x_steps), inf from an overflow on.

    L_t is the loss ``step(closure)`` returns (torch.optim convention: the closure's value at the
    point before the step), so each step costs the optimizer's own evaluations and no more."""
    x0 = torch.as_tensor(start, dtype=torch.float64).detach().clone()

    def run(lr: float) -> Tensor:
        x = x0.clone().requires_grad_()
        optimizer = make_optimizer([x], lr=lr)
        losses = torch.full((steps + 1,), math.inf, dtype=torch.float64)

        def closure():
            optimizer.zero_grad()
            loss = function(x)
            loss.backward()
            return loss
        for t in range(steps):
            loss = optimizer.step(closure)
            if not torch.isfinite(loss):
                return losses
            losses[t] = loss.detach()
        with torch.no_grad():
            final = function(x)
        if torch.isfinite(final):
            losses[steps] = final
        return losses
    return run


def _score(losses: Tensor, target: float | None, relative: bool, minimum: float):
    final = float(losses[-1]) if math.isfinite(float(losses[-1])) else math.inf
    hit = None if target is None else steps_to_target(losses, target, relative=relative,
                                                       minimum=minimum)
    return final, hit


def best_lr(run: Run, lrs: Sequence[float], *, target: float | None = None,
            relative: bool = False, minimum: float = 0.0) -> tuple[float, list[float]]:
    """The lr with the lowest final loss (ties by steps to target); returns it and the finals."""
    if not lrs:
        raise ValueError("lrs: empty grid")
    scored = []
    for lr in lrs:
        final, hit = _score(as_losses(run(lr)), target, relative, minimum)
        scored.append((final, math.inf if hit is None else hit, lr))
    best = min(scored)
    return best[2], [s[0] for s in scored]


@dataclass(frozen=True)
class Sensitivity:
    best_lr: float
    relative: list[float]               # r of each run (lr = best_lr·(1 + r))
    lrs: list[float]
    final_losses: list[float]           # inf where the run overflowed
    steps_to_target: list[int | None]   # None where the target was never reached

    @property
    def final_loss_spread(self) -> float:
        return max(self.final_losses) - min(self.final_losses)

    @property
    def final_loss_ratio(self) -> float:
        low = min(self.final_losses)
        return max(self.final_losses) / low if low > 0 else math.inf

    @property
    def steps_spread(self) -> int | None:
        if any(s is None for s in self.steps_to_target):
            return None
        return max(self.steps_to_target) - min(self.steps_to_target)

    def rows(self) -> list[dict]:
        return [{"relative": r, "lr": lr, "final_loss": f, "steps_to_target": s}
                for r, lr, f, s in zip(self.relative, self.lrs, self.final_losses,
                                       self.steps_to_target)]


def lr_sensitivity(run: Run, best: float, relative: Sequence[float] = (-0.1, -0.05, 0.0, 0.05, 0.1),
                   *, target: float | None = None, relative_target: bool = False,
                   minimum: float = 0.0) -> Sensitivity:
    """Rerun at best·(1 + r) for each r; final losses and steps to ``target``."""
    if not best > 0 or not math.isfinite(best):
        raise ValueError(f"best: must be a positive finite lr, got {best}")
    if any(not r > -1 for r in relative) or not relative:
        raise ValueError(f"relative: needs values > -1, got {list(relative)}")
    lrs = [best * (1.0 + r) for r in relative]
    finals, hits = [], []
    for lr in lrs:
        final, hit = _score(as_losses(run(lr)), target, relative_target, minimum)
        finals.append(final)
        hits.append(hit)
    return Sensitivity(best, list(relative), lrs, finals, hits)
