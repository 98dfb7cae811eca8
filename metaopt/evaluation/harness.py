"""The evaluation harness: run an optimizer factory on tasks and record what the methods are
judged by.

The hybrid GD–ODE optimizer's evaluation lists the metrics: convergence speed (iterations to
reach a target loss), final loss, ability to escape local minima, computational efficiency (time
per iteration, memory). The GDSearch studies add the generalisation gap and divergence as an
*outcome* ("the anomaly ... wasn't a failure"): a run that blows up is recorded, never raised.

Every step calls ``optimizer.step(closure)`` where the closure zeroes the gradients, computes the
minibatch loss through the task's ``nn.Module``, back-propagates and returns the loss; so
closure-based optimizers (Runge-Kutta integrators evaluate it at several stage points) work, and
the number of closure calls is the number of gradient evaluations. The minibatch is drawn once
per step, so all stages of one step see the same batch.

Divergence: the step's loss (or a full-batch evaluation) is non-finite, or
``loss - offset > divergence_factor * loss_scale`` (with the task's normaliser this is
"the optimality gap grew ``divergence_factor`` (1e6) times beyond the initial gap"), or the step
raised ``OverflowError`` / ``RuntimeError`` / ``FloatingPointError`` (optimizers that refuse
non-finite values), or a parameter became non-finite.

Losses are measured where the optimizer says its solution is: inside ``evaluation_mode``
(``optimizer.eval()`` ... ``optimizer.train()`` for schedule-free optimizers, else a no-op).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the run (``memory_method =
"cuda_max_memory_allocated"``); on CPU, ``tracemalloc``'s peak (``"tracemalloc"``), which sees the
Python heap but not tensor storage (PyTorch's CPU allocator bypasses it). For a device-independent
comparison ``optimizer_state_bytes`` counts the bytes of all tensors in ``optimizer.state``.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from metaopt.task import Task, TaskFamily, generator_from_seed

from .contenders import evaluation_mode
from .results import RunResult

__all__ = ["TARGET_KINDS", "evaluate", "run_family", "run_task"]

TARGET_KINDS = ("absolute", "relative")
DIVERGENCE_EXCEPTIONS = (OverflowError, RuntimeError, FloatingPointError)


def _optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def _absolute_target(task: Task, initial_loss: float, target: float | None,
                     target_kind: str) -> float | None:
    if target is None:
        return None
    if target_kind == "absolute":
        return float(target)
    if target_kind == "relative":
        # reach a fraction `target` of the initial optimality gap: L - f* <= target * (L0 - f*)
        return task.loss_offset + float(target) * (initial_loss - task.loss_offset)
    raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_task(
    task: Task,
    optimizer_factory: Callable[[Iterable[Any]], torch.optim.Optimizer],
    steps: int,
    *,
    seed: int = 0,
    eval_every: int = 10,
    target: float | None = None,
    target_kind: str = "relative",
    divergence_factor: float = 1e6,
    init: str = "canonical",
    track_memory: bool = True,
    optimizer_name: str | None = None,
    task_seed: int | None = None,
) -> RunResult:
    """Run ``optimizer_factory(module.parameters())`` on ``task`` for ``steps`` steps.

    ``seed`` drives the minibatch order (and the initial point when ``init="seed"``; by default
    the task's canonical initial point is used, so e.g. a fixed Rosenbrock start stays fixed).
    ``target`` with ``target_kind="absolute"`` is a loss value; with ``"relative"`` a fraction of
    the initial optimality gap. ``steps_to_target`` is the first ``t`` whose per-step train loss
    (at the parameters after ``t`` steps) is <= the target.
    """
    if steps < 0 or eval_every < 1:
        raise ValueError(f"need steps >= 0 and eval_every >= 1, got steps={steps}, "
                         f"eval_every={eval_every}")
    if init not in ("canonical", "seed"):
        raise ValueError(f"init must be 'canonical' or 'seed', got {init!r}")
    batch_generator = generator_from_seed(seed)
    # decorrelated from batches
    init_generator = generator_from_seed(seed + 7919) if init == "seed" else None
    module = task.module(init_generator)
    optimizer = optimizer_factory(module.parameters())
    name = optimizer_name or getattr(optimizer_factory, "label", None) or type(optimizer).__name__
    result = RunResult(optimizer=name, family=task.name, task=task.describe(), task_seed=task_seed,
                       seed=seed, steps=steps,
                       hyperparameters=dict(getattr(optimizer_factory, "hyperparameters", {})))
    threshold_scale = divergence_factor * task.loss_scale
    train_eval, test_eval = task.eval_batch("train"), task.eval_batch("test")

    def evaluate_now(step: int) -> bool:
        """Full-batch train/test loss (+ accuracy); returns False if non-finite."""
        with torch.no_grad(), evaluation_mode(optimizer):
            train_loss = float(task.module_loss(module, train_eval))
            test_loss = float(task.module_loss(module, test_eval))
            params = dict(module.named_parameters())
            test_accuracy = task.accuracy(params, test_eval)
        result.eval_steps.append(step)
        result.eval_train_losses.append(train_loss)
        result.eval_test_losses.append(test_loss)
        if test_accuracy is not None:
            result.eval_test_accuracies.append(float(test_accuracy))
        return math.isfinite(train_loss) and math.isfinite(test_loss)

    def mark_diverged(step: int, reason: str) -> None:
        result.diverged, result.divergence_step, result.divergence_reason = True, step, reason

    evaluate_now(0)
    result.initial_loss = result.eval_train_losses[0]
    target_loss = _absolute_target(task, result.initial_loss, target, target_kind)
    result.target_loss = target_loss
    if not math.isfinite(result.initial_loss):
        mark_diverged(0, "non-finite initial loss")

    grad_evals = 0
    step_loss: list[float] = []  # loss of the closure's first call within the current step

    def closure() -> torch.Tensor:
        nonlocal grad_evals
        grad_evals += 1
        with torch.enable_grad():
            optimizer.zero_grad(set_to_none=False)
            loss = task.module_loss(module, batch)
            loss.backward()
        if not step_loss:
            step_loss.append(float(loss.detach()))
        return loss

    on_cuda = task.device.type == "cuda"
    started_tracemalloc = False
    if track_memory and on_cuda:
        torch.cuda.reset_peak_memory_stats(task.device)
        result.memory_method = "cuda_max_memory_allocated"
    elif track_memory:
        if not tracemalloc.is_tracing():
            tracemalloc.start()
            started_tracemalloc = True
        tracemalloc.reset_peak()
        result.memory_method = "tracemalloc"

    step_time = 0.0
    try:
        for step in range(steps):
            if result.diverged:
                break
            batch = task.train_batch(batch_generator)
            step_loss.clear()
            evals_before_step = grad_evals
            _synchronize(task.device)
            start = time.perf_counter()
            try:
                optimizer.step(closure)
            except DIVERGENCE_EXCEPTIONS as error:
                mark_diverged(step, f"{type(error).__name__}: {error}")
            _synchronize(task.device)
            step_time += time.perf_counter() - start
            result.steps_completed = step + 1
            loss = step_loss[0] if step_loss else math.nan
            result.train_losses.append(loss)
            if result.diverged:
                break
            if not math.isfinite(loss):
                mark_diverged(step, "non-finite loss")
                break
            if loss - task.loss_offset > threshold_scale:
                mark_diverged(step, f"loss {loss:.3e} exceeds {divergence_factor:g} x the "
                                    "initial gap")
                break
            if target_loss is not None and result.steps_to_target is None and loss <= target_loss:
                result.steps_to_target, result.grad_evals_to_target = step, evals_before_step
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                mark_diverged(step, "non-finite parameters")
                break
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                if not evaluate_now(step + 1):
                    mark_diverged(step + 1, "non-finite evaluation loss")
                    break
    finally:
        if track_memory and on_cuda:
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(task.device))
        elif track_memory:
            result.peak_memory_bytes = int(tracemalloc.get_traced_memory()[1])
            if started_tracemalloc:
                tracemalloc.stop()

    result.grad_evals = grad_evals
    reported = getattr(optimizer, "num_grad_evals", None)
    result.optimizer_grad_evals = None if reported is None else int(reported)
    result.total_wall_time = step_time
    result.wall_time_per_step = (step_time / result.steps_completed if result.steps_completed
                                 else math.nan)
    result.optimizer_state_bytes = _optimizer_state_bytes(optimizer)
    finite_losses = [v for v in result.train_losses if math.isfinite(v)]
    result.best_train_loss = min(finite_losses) if finite_losses else math.nan
    if target_loss is not None and result.steps_to_target is None and not result.diverged \
            and result.eval_train_losses and result.eval_steps[-1] == steps \
            and result.eval_train_losses[-1] <= target_loss:
        # the loss after the last step is only seen by the final evaluation
        result.steps_to_target, result.grad_evals_to_target = steps, grad_evals
    if not result.diverged:
        result.final_train_loss = result.eval_train_losses[-1]
        result.final_test_loss = result.eval_test_losses[-1]
        result.generalization_gap = result.final_test_loss - result.final_train_loss
        result.final_normalized_loss = float(task.normalized_loss(result.final_train_loss))
        if result.eval_test_accuracies:
            result.final_test_accuracy = result.eval_test_accuracies[-1]
            with torch.no_grad(), evaluation_mode(optimizer):
                train_accuracy = task.accuracy(dict(module.named_parameters()), train_eval)
            result.final_train_accuracy = float(train_accuracy)
    return result


def run_family(
    family: TaskFamily,
    optimizer_factory: Callable[[Iterable[Any]], torch.optim.Optimizer],
    steps: int,
    *,
    task_seeds: Sequence[int] = (0,),
    seeds: Sequence[int] = (0,),
    **run_kwargs: Any,
) -> list[RunResult]:
    """``run_task`` on ``family.sample_seed(s)`` for every task seed ``s``, times every run seed."""
    results = []
    for task_seed in task_seeds:
        task = family.sample_seed(task_seed)
        for seed in seeds:
            results.append(run_task(task, optimizer_factory, steps, seed=seed, task_seed=task_seed,
                                    **run_kwargs))
    return results


def evaluate(
    families: Mapping[str, TaskFamily],
    optimizers: Mapping[str, Callable[[Iterable[Any]], torch.optim.Optimizer]],
    steps: int,
    *,
    task_seeds: Sequence[int] = (0,),
    seeds: Sequence[int] = (0,),
    on_result: Callable[[RunResult], None] | None = None,
    **run_kwargs: Any,
) -> list[RunResult]:
    """Every optimizer on every family's sampled tasks and seeds. The dictionary keys are the
    labels used in results (``RunResult.optimizer`` / ``RunResult.family``). ``on_result`` is
    called after each run (e.g. to log it)."""
    results = []
    for family_label, family in families.items():
        tasks = [(task_seed, family.sample_seed(task_seed)) for task_seed in task_seeds]
        for optimizer_label, factory in optimizers.items():
            for task_seed, task in tasks:
                for seed in seeds:
                    result = run_task(task, factory, steps, seed=seed, task_seed=task_seed,
                                      optimizer_name=optimizer_label, **run_kwargs)
                    result.family = family_label
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results
