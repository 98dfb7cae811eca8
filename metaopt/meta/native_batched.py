"""The vectorised engine's native batched path: a rule that steps stacked runs itself.

``torch.func.vmap(learned.step)`` (``metaopt.meta.batched_unroll.batched_step``) gives the rule a
``grad_fn`` that only returns the precomputed ``(L, g)`` at θ: a rule that evaluates the
gradient elsewhere (the hybrid GD–ODE optimizer's Runge–Kutta stages) cannot run under it. A
learned rule whose ``batched_form()`` returns an object with ``native = True`` and
``step(θ, grad_fn, s, φ)`` on stacked runs (``metaopt.meta.hybrid_learned.BatchedHybrid``) is
called once per group step instead, with a ``grad_fn`` that really evaluates the group::

    grad_fn(θ)       = (L, g)                                 the step's precomputed evaluation
    grad_fn(points)  = batch.loss_and_grads(points, b_k)      every run at its own point, on the
                                                              minibatch b_k of this step

so every run's stages get its own gradients on its own minibatch, as in ``unroll_segment``'s
``grad_fn``. When only some runs of the batch step (the train split: runs at their final term
do not), their points are written into the others' θ and the whole batch is evaluated: the
others' rows are those of θ (finite, discarded), so no minibatch is drawn twice.

``grad_fn.evaluate_rows(points, rows)`` evaluates the runs ``rows`` alone (``(L, g)`` of those
rows): the hybrid's stability guard probes again only the runs whose step it shortened. Their
minibatch is drawn again from their generators' states before this step's draw
(``TaskBatch.train_batch`` draws each run's batch from its own generator alone), so it is the
batch the whole group was evaluated on.

The runs' states are stacked as the vmap path stacks them, except that a Python int (the
hybrid's step counter) becomes a ``(B,)`` tensor on the way in and an int again on the way out
(``encode_ints`` / ``decode_ints``), so the runs' states keep the loop's format and a checkpoint
resumes under either engine.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..task_batch import TaskBatch

__all__ = ["decode_ints", "encode_ints", "evaluator", "native_form", "native_step"]


def native_form(learned):
    """``learned.batched_form()`` when it steps stacked runs itself (``native``), else None (a
    rule without one, or whose configuration has no batched form, e.g. a Lanczos probe)."""
    make = getattr(learned, "batched_form", None)
    if make is None:
        return None
    try:
        form = make()
    except (ValueError, TypeError):
        return None
    return form if getattr(form, "native", False) else None


def native_step(form, weights: Mapping[str, Tensor]) -> Callable:
    """``(θ, L, g, s, evaluate) -> (θ', s')`` for stacked runs: ``form.step`` with a ``grad_fn``
    that returns ``(L, g)`` at θ and ``evaluate(points)`` anywhere else."""
    def step(params, loss, grads, state, evaluate):
        params, first = list(params), (loss, list(grads))

        def grad_fn(points):
            if points is params or (len(points) == len(params)
                                    and all(p is q for p, q in zip(points, params))):
                return first
            return evaluate(points)
        if getattr(evaluate, "rows", None) is not None:
            grad_fn.evaluate_rows = evaluate.rows
        return form.step(params, grad_fn, state, weights)
    step.native = True
    return step


def evaluator(batch: TaskBatch, names: Sequence[str], data, params: Sequence[Tensor],
              rows: Tensor | None, *, differentiable: bool, second_order: bool,
              redraw: Callable | None = None) -> Callable:
    """``evaluate(points) -> (L, g)`` of the runs ``rows`` of ``batch`` (None: all) at
    ``points``, on the drawn minibatch ``data``, with the gradient graph of ``unroll_segment``'s
    ``grad_fn`` (module docstring). ``redraw(batch_rows)``: ``batch.select(batch_rows)`` and its
    runs' minibatch drawn again; given, ``evaluate.rows(points, subset)`` evaluates the runs
    ``subset`` (positions in ``points``) alone."""
    def graph(points):
        if differentiable:
            return [p if p.requires_grad else p.detach().requires_grad_() for p in points]
        return [p.detach().requires_grad_() for p in points]

    def on(part, part_data, points):
        with torch.enable_grad():
            loss, grads = part.loss_and_grads(
                dict(zip(names, graph(points))), part_data, grad=True,
                retain_graph=differentiable, create_graph=differentiable and second_order)
        return (loss if differentiable else loss.detach()), list(grads)

    def evaluate(points):
        if rows is not None:  # the others at their own θ, discarded below
            points = [p.index_copy(0, rows, q.to(p.dtype)) for p, q in zip(params, points)]
        loss, grads = on(batch, data, points)
        if rows is not None:
            loss, grads = loss.index_select(0, rows), [g.index_select(0, rows) for g in grads]
        return loss, grads

    def evaluate_rows(points, subset: Tensor):
        at = subset if rows is None else rows.index_select(0, subset)
        part, part_data = redraw(at.tolist())
        return on(part, part_data,
                  [q.index_select(0, subset).to(p.dtype) for p, q in zip(params, points)])
    evaluate.rows = evaluate_rows if redraw is not None else None
    return evaluate


def encode_ints(state) -> tuple[object, list[tuple]]:
    """``state`` with every Python int a 0-dim int64 tensor, and the paths of those ints."""
    paths: list[tuple] = []

    def walk(value, path):
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            paths.append(path)
            return torch.tensor(value, dtype=torch.int64)
        if isinstance(value, dict):
            return {k: walk(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v, path + (i,)) for i, v in enumerate(value))
        return value
    return walk(state, ()), paths


def decode_ints(state, paths: Sequence[tuple]):
    """The inverse of ``encode_ints`` for one run's state: the tensors at ``paths`` as ints."""
    for path in paths:
        *parents, last = path
        holder = state
        for key in parents:
            holder = holder[key]
        if isinstance(holder, tuple):
            raise TypeError("vectorised engine: an int inside a tuple of a rule state")
        holder[last] = int(holder[last])
    return state
