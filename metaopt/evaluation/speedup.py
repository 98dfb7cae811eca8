"""Speedup of an optimizer over a reference, the learned-optimizer literature's headline number.

VeLO (arXiv 2211.09760) and Celo (arXiv 2501.12670) report, per task,

    speedup = (steps the reference needs to reach the candidate's final loss) / (candidate's steps)

so 2.0 means "the reference needs twice as many steps to get where the candidate ended". The
reference curve may be longer than the candidate's horizon (the reference run continued past
``T``) to resolve speedups above 1; a reference that never gets there within its curve gives the
lower bound ``len / T`` (reported with ``reached=False``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Speedup", "speedup", "speedup_in_grad_evals", "steps_to_reach"]


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
    """The first recorded step whose loss is <= ``target`` (None if none is)."""
    for step, loss in zip(steps, losses):
        if math.isfinite(loss) and loss <= target:
            return int(step)
    return None


@dataclass(frozen=True)
class Speedup:
    value: float
    reached: bool  # False: the reference never reached the target; value is a lower bound


def speedup(reference_steps: Sequence[int], reference_losses: Sequence[float],
            candidate_final_loss: float, candidate_steps: int) -> Speedup:
    """``steps_to_reach(reference, candidate_final_loss) / candidate_steps`` (module docstring).

    A diverged candidate (non-finite final loss) has speedup 0.
    """
    if candidate_steps < 1:
        raise ValueError(f"candidate_steps: must be >= 1, got {candidate_steps!r}")
    if not math.isfinite(candidate_final_loss):
        return Speedup(0.0, True)
    needed = steps_to_reach(reference_steps, reference_losses, candidate_final_loss)
    if needed is None:
        return Speedup(max(reference_steps, default=0) / candidate_steps, False)
    return Speedup(needed / candidate_steps, True)


def speedup_in_grad_evals(reference, candidate) -> Speedup:
    """``speedup`` with both sides counted in gradient evaluations (``RunResult``s of the
    harness): the reference's curve is at ``eval_steps · (grad_evals / steps_completed)``
    evaluations, the candidate is charged its ``grad_evals`` (a closure optimizer that evaluates
    the gradient k times a step pays k per step). A diverged candidate has speedup 0."""
    if reference.steps_completed < 1:
        raise ValueError("reference: the run completed no step")
    per_step = reference.grad_evals / reference.steps_completed
    final = math.inf if candidate.diverged else float(candidate.final_train_loss)
    return speedup([s * per_step for s in reference.eval_steps], reference.eval_train_losses,
                   final, max(int(candidate.grad_evals), 1))
