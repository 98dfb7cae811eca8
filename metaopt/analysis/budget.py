"""Optimizers compared at an equal gradient-evaluation budget (the
Runge–Kutta gradient-flow experiment "RK2 vs SGD: test accuracy and loss").

A Runge–Kutta step of s stages costs s gradient evaluations (Heun and Ralston: 2), so "RK2 vs SGD
for N steps" gives RK2 twice the work. ``train_for_budget`` runs any ``torch.optim`` optimizer with
``step(closure)`` on a task and *counts* the closure's gradient evaluations instead of assuming
them: it stops before the step that would exceed ``budget`` evaluations. Every stage of a step
sees the same minibatch (one batch per step: an RK step integrates the flow of one objective).
The test loss/accuracy are recorded against the evaluations spent, so curves of methods with
different per-step costs share an x axis.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from metaopt.task import Task

__all__ = ["BudgetRun", "train_for_budget"]


@dataclass(frozen=True)
class BudgetRun:
    steps: int                    # optimizer steps taken
    gradient_evaluations: int     # closure calls counted (forward + backward each)
    evaluations_per_step: float
    curve_evaluations: list[int]  # gradient evaluations at each measurement
    train_loss: list[float]       # full-batch train loss at each measurement
    test_loss: list[float]
    test_accuracy: list[float]    # NaN for tasks without accuracy
    params: dict[str, torch.Tensor]
    diverged: bool                # a measured loss became non-finite (training stopped)


def _measure(task: Task, module) -> tuple[float, float, float]:
    with torch.no_grad():
        train = float(task.module_loss(module, task.eval_batch("train")))
        test = float(task.module_loss(module, task.eval_batch("test")))
        accuracy = task.accuracy({n: p.detach() for n, p in module.named_parameters()},
                                 task.eval_batch("test"))
    return train, test, float("nan") if accuracy is None else float(accuracy)


def train_for_budget(task: Task, make_optimizer: Callable[..., torch.optim.Optimizer],
                     budget: int, *, generator: torch.Generator, eval_every: int = 50,
                     init_generator: torch.Generator | None = None) -> BudgetRun:
    """Train ``task.module(init_generator)`` until ``budget`` gradient evaluations are spent.

    Measurements are taken at the start, at the first step boundary after every ``eval_every``
    evaluations, and at the end."""
    if budget < 1 or eval_every < 1:
        raise ValueError(f"budget and eval_every must be >= 1, got {budget}, {eval_every}")
    module = task.module(init_generator)
    params = list(module.parameters())
    optimizer = make_optimizer(params)
    calls = 0
    batch = None

    def closure():
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = task.module_loss(module, batch)
        loss.backward()
        return loss

    curve, train_l, test_l, acc = [], [], [], []

    def measure() -> bool:
        train, test, accuracy = _measure(task, module)
        curve.append(calls)
        train_l.append(train)
        test_l.append(test)
        acc.append(accuracy)
        return torch.isfinite(torch.tensor([train, test])).all().item()

    measure()
    steps, per_step, next_eval, finite = 0, 0, eval_every, True
    while finite and calls + max(per_step, 1) <= budget:
        batch = task.train_batch(generator)
        before = calls
        optimizer.step(closure)
        per_step = calls - before
        steps += 1
        if calls >= next_eval:
            finite = measure()
            next_eval = (calls // eval_every + 1) * eval_every
    if curve[-1] != calls:
        finite = measure() and finite
    return BudgetRun(steps, calls, calls / max(steps, 1), curve, train_l, test_l, acc,
                     {n: p.detach().clone() for n, p in module.named_parameters()}, not finite)
