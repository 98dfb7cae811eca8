"""One segment of ``B`` stacked inner runs: the batched twin of ``unroll.unroll_segment``.

``unroll_group`` advances runs whose tasks form one ``TaskBatch`` (``metaopt.task``)::

    L = batch.loss(θ, b)                          (B,) losses, θ stacked (B, ...) per tensor
    g = ∂ Σ_b L_b / ∂θ                            every run's own gradient (tasks are independent)
    θ', s' = vmap(learned.step)(θ, (L, g), s, φ)   the SAME rule code, one program for B runs

with the meta-loss terms, truncation, divergence test, batch streams and the rule's own compute
charge (``segment_penalty``) of ``unroll_segment``, run for run. A ``step`` marked ``native``
(``metaopt.meta.native_batched``) is the rule stepping the stacked runs itself; it is also given
``evaluate(points)``, the group's loss and gradients anywhere on this step's minibatch.
Runs leave the batch when their segment ends (per-run lengths) or when they diverge
(two host reads per step of the group: the gradients' finiteness, then the divergence flags); a
diverged run's terms are replaced by exact zeros through a double ``where``, a run whose loss or
gradient is not finite does not step, and the cotangents of a dropped run's rows are set to exact
zeros where they reach its parameters (``_fence``), so the infinite derivatives of a run that
overflowed never turn its zero cotangent into a NaN. The stacking helpers put per-run rule states
(dicts / lists of tensors; entries with one tensor per parameter go through
``TaskBatch.stack_values``, which may pad) along a leading run dimension and back.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..rules.base import State, TensorList
from ..task_batch import TaskBatch
from .flat_buckets import row_of
from .native_batched import evaluator


# -- stacking run states along a leading run dimension ---------------------------------------------
def _is_param_list(values: Sequence, shapes: Sequence[Sequence[torch.Size]]) -> bool:
    """A state entry with one tensor per parameter, shaped like it, in every run."""
    return all(isinstance(v, (list, tuple)) and len(v) == len(s) and
               all(isinstance(t, Tensor) and t.shape == p for t, p in zip(v, s))
               for v, s in zip(values, shapes))


class SameShapes:
    """The ``TaskBatch.stack_values`` that ``stack_tree`` needs for runs whose per-parameter
    entries already share their shapes (no padding)."""

    def stack_values(self, name, values):
        return torch.stack(list(values))


def stack_tree(values: Sequence, batch: TaskBatch, names: Sequence[str],
               shapes: Sequence[Sequence[torch.Size]]):
    """Per-run pytrees of tensors -> one pytree of ``(B, ...)`` tensors (per-parameter entries
    through ``batch.stack_values``, which may pad)."""
    first = values[0]
    if isinstance(first, Tensor):
        return torch.stack(list(values))
    if isinstance(first, dict):
        return {k: stack_tree([v[k] for v in values], batch, names, shapes) for k in first}
    if isinstance(first, (list, tuple)):
        if _is_param_list(values, shapes):
            return type(first)(batch.stack_values(names[j], [v[j] for v in values])
                               for j in range(len(first)))
        return type(first)(stack_tree([v[j] for v in values], batch, names, shapes)
                           for j in range(len(first)))
    raise TypeError(f"vectorised engine: cannot stack a rule-state entry of type {type(first)}")


def unstack_tree(value, batch: TaskBatch, names: Sequence[str], params: Sequence[Tensor]) -> list:
    """The inverse of ``stack_tree``: one pytree per run."""
    count = len(batch)
    if isinstance(value, Tensor):
        return list(value.unbind(0))
    if isinstance(value, dict):
        parts = {k: unstack_tree(v, batch, names, params) for k, v in value.items()}
        return [{k: parts[k][b] for k in value} for b in range(count)]
    if isinstance(value, (list, tuple)):
        if len(value) == len(params) and all(isinstance(t, Tensor) and t.shape == p.shape
                                             for t, p in zip(value, params)):
            parts = [batch.unstack_values(n, t) for n, t in zip(names, value)]
        else:
            parts = [unstack_tree(v, batch, names, params) for v in value]
        return [type(value)(part[b] for part in parts) for b in range(count)]
    raise TypeError(f"vectorised engine: cannot unstack a rule-state entry of type {type(value)}")


def take_rows(tree, index: Tensor):
    """Rows ``index`` of every tensor of a pytree."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {k: take_rows(v, index) for k, v in tree.items()}
    return type(tree)(take_rows(v, index) for v in tree)


def _fence(tensors: Sequence[Tensor], dropped: Sequence[bool]) -> None:
    """Exact zeros for the cotangents of the ``dropped`` rows of ``tensors``.

    A dropped run gives no loss, so every cotangent of its rows is zero, but the backward passes
    of the losses evaluated at a run that overflowed multiply those zeros by infinite
    derivatives (``0·∞ = NaN``, e.g. a quartic's Hessian at |θ| ≈ 1e100); replacing the rows by
    zeros at its parameters keeps the NaN out of every other run's and the meta-parameters'
    gradient, as the loop, which never backpropagates a diverged run, does."""
    mask = torch.tensor(dropped)
    for t in tensors:
        if t.requires_grad:
            rows = mask.to(t.device).view(-1, *[1] * (t.dim() - 1))
            t.register_hook(lambda g, rows=rows: torch.where(rows, torch.zeros_like(g), g))


def _flatten(tree, leaves: list):
    """Tensors of a dict/list/tuple tree appended to ``leaves``; returns the tree's structure.
    (vmap over a flat tuple: torch's generic pytree handling costs more than the rule's ops.)"""
    if isinstance(tree, Tensor):
        leaves.append(tree)
        return None
    if isinstance(tree, dict):
        return dict, [(k, _flatten(v, leaves)) for k, v in tree.items()]
    return type(tree), [_flatten(v, leaves) for v in tree]


def _unflatten(spec, leaves):
    if spec is None:
        return next(leaves)
    kind, children = spec
    if kind is dict:
        return {k: _unflatten(c, leaves) for k, c in children}
    return kind(_unflatten(c, leaves) for c in children)


def batched_step(learned, weights: Mapping[str, Tensor]) -> Callable:
    """``(θ, L, g, s) -> (θ', s')`` for stacked runs: ``learned.step`` under ``torch.func.vmap``."""
    def one(spec, leaves):
        params, loss, grads, state = _unflatten(spec, iter(leaves))

        def grad_fn(points):
            if len(points) != len(params) or any(p is not q for p, q in zip(points, params)):
                raise RuntimeError("vectorised engine: the rule evaluated grad_fn away from the "
                                   "current parameters; use unroll.engine=loop for it")
            return loss, list(grads)
        out: list = []
        out_spec[0] = _flatten(learned.step(list(params), grad_fn, state, weights), out)
        return tuple(out)

    out_spec = [None]

    def step(params, loss, grads, state):
        leaves: list = []
        spec = _flatten((list(params), loss, list(grads), state), leaves)
        out = torch.func.vmap(lambda *xs: one(spec, xs))(*leaves)
        return _unflatten(out_spec[0], iter(out))
    return step


def _redraw(batch: TaskBatch, generators: Sequence[torch.Generator],
            selected: dict | None = None) -> Callable:
    """``redraw(rows) -> (batch.select(rows), its minibatch)``: the minibatch
    ``batch.train_batch(generators)`` is about to draw, for those runs alone (each run's batch
    comes from its own generator: from a copy of its state now, the same draws). ``selected``
    keeps the selections of ``batch`` made so far (the same runs are often probed again at later
    steps)."""
    states = [g.get_state() for g in generators]
    selected = {} if selected is None else selected

    def redraw(rows: Sequence[int]):
        copies = []
        for r in rows:
            copy = torch.Generator(device=generators[r].device)
            copy.set_state(states[r])
            copies.append(copy)
        key = tuple(rows)
        if key not in selected:
            selected[key] = batch.select(rows)
        return selected[key], selected[key].train_batch(copies)
    return redraw


# -- one group of runs through one segment ---------------------------------------------------------
def unroll_group(learned, weights, batch: TaskBatch, names: Sequence[str], params: TensorList,
                 state: State, lengths: Sequence[int], generators: Sequence[torch.Generator],
                 meta_loss, *, differentiable: bool, second_order: bool,
                 step: Callable | None = None):
    """``unroll_segment`` for ``B`` stacked runs (module docstring).

    Returns ``(losses, ends)``: per run the combined meta-loss (None where diverged), and the
    ``(runs, params, state)`` chunks, stacked, in which the surviving runs ended the segment.
    """
    step = step or batched_step(learned, weights)
    start = state
    count, train = len(batch), meta_loss.split == "train"
    every = meta_loss.needs_every_term
    rows, sub = list(range(count)), batch                 # the runs still in the batch
    selected: dict = {}                                   # sub's selections (_redraw)
    alive, ends = [True] * count, []
    terms = [0] * count                                   # terms taken per run
    total = None                                          # (B,) running sum of (log-)terms

    def add(values: Tensor, at: list[int], taken: list[bool]):
        # A run whose term is not taken, or not finite (it diverged: it gives no loss), adds an
        # exact 0 through a double `where`, so no NaN reaches the backward pass.
        nonlocal total
        ok = torch.tensor(taken, device=values.device) & torch.isfinite(values.detach())
        values = torch.where(ok, values, torch.ones_like(values))
        if meta_loss.kind == "log":
            values = torch.log(values.clamp_min(0.0) + meta_loss.log_eps)
        values = torch.where(ok, values, torch.zeros_like(values))
        if at != list(range(count)):
            index = torch.tensor(at, device=values.device)
            values = values.new_zeros(count).index_add(0, index, values)
        total = values if total is None else total + values
        for b, t in zip(at, taken):
            terms[b] += t

    with torch.set_grad_enabled(differentiable):
        for k in range(max(lengths) + 1):
            if not rows:
                break
            device = params[0].device
            stepping = [k < lengths[b] for b in rows]     # else: the final train term only
            points = [p if differentiable and p.requires_grad else p.detach().requires_grad_()
                      for p in params]
            drawn = [generators[b] for b in rows]
            redraw = _redraw(sub, drawn, selected) if getattr(step, "native", False) else None
            data = sub.train_batch(drawn)
            with torch.enable_grad():
                loss, grads = sub.loss_and_grads(
                    dict(zip(names, points)), data,
                    grad=any(stepping), retain_graph=differentiable,
                    create_graph=differentiable and second_order)
            if not differentiable:
                loss = loss.detach()
            normalized = sub.normalized_loss(loss)
            bad = meta_loss.is_divergent(normalized.detach())
            if train:  # a run's k-th loss is its term (k ≥ 1); at k = length the final one
                add(normalized, rows, [(every and 0 < k < lengths[b]) or k == lengths[b]
                                       for b in rows])
            new = None
            if grads is not None:
                squares = sum(g.detach().square().flatten(1).sum(1) for g in grads)
                finite = torch.isfinite(loss.detach()) & torch.isfinite(squares)
                bad = bad | (torch.tensor(stepping, device=device) & ~finite)
                # a non-finite run does not step: the rule's backward never meets its values
                stepping = [s and f for s, f in zip(stepping, finite.tolist())]
                inner = [i for i, s in enumerate(stepping) if s]
                at = None if len(inner) == len(rows) else torch.tensor(inner, device=device)
                native = () if redraw is None else (evaluator(
                    sub, names, data, points, at, differentiable=differentiable,
                    second_order=second_order, redraw=redraw),)  # (it evaluates away from θ)
                if at is None:
                    new = step(list(params), loss, list(grads), state, *native)
                elif inner:  # train split: runs at their final term do not step
                    new = step(take_rows(list(params), at), take_rows(loss, at),
                               take_rows(list(grads), at), take_rows(state, at), *native)
                if not train and inner:  # every finite run steps: held-out terms at θ_{k+1}
                    members = [rows[i] for i in inner]
                    part = sub if at is None else batch.select(members)
                    wanted = [every or k == lengths[b] - 1 for b in members]
                    test = part.test_batch([generators[b] if w else None
                                            for b, w in zip(members, wanted)])
                    term = part.normalized_loss(part.loss(dict(zip(names, new[0])), test))
                    add(term, members, wanted)
                    diverged = torch.tensor(wanted, device=device) & \
                        meta_loss.is_divergent(term.detach())
                    bad = bad | (diverged if at is None else torch.zeros_like(bad).index_copy(
                        0, at, diverged))
            flags = bad.tolist()  # the group step's host sync (with the finiteness read above)
            if differentiable and any(flags):
                _fence(points, flags)
                if new is not None and not train:
                    _fence(new[0], [flags[i] for i, s in enumerate(stepping) if s])
            inner_of = {i: j for j, i in enumerate(i for i, s in enumerate(stepping) if s)}
            keep, finished = [], []
            for i, b in enumerate(rows):
                if flags[i]:
                    alive[b] = False
                elif stepping[i] and (train or k + 1 < lengths[b]):
                    keep.append(i)
                else:
                    finished.append(i)
            if finished:  # train: they end at θ_k (their final term); test: at θ_{k+1}
                source, where = ((params, state), finished) if train else \
                    (new, [inner_of[i] for i in finished])
                at = torch.tensor(where, device=device)
                ends.append(([rows[i] for i in finished], take_rows(list(source[0]), at),
                             take_rows(source[1], at)))
            if new is None or not keep:
                break
            params, state = new
            kept = [inner_of[i] for i in keep]
            if kept != list(range(len(inner_of))):
                at = torch.tensor(kept, device=device)
                params, state = take_rows(list(params), at), take_rows(state, at)
            if len(keep) != len(rows):
                rows = [rows[i] for i in keep]
                sub, selected = batch.select(rows), {}
    losses: list[Tensor | None] = [None] * count
    if total is not None:
        counts = torch.tensor([max(t, 1) for t in terms], dtype=total.dtype, device=total.device)
        combined = total / counts
        losses = [combined[b] if alive[b] else None for b in range(count)]
        penalty = getattr(learned, "segment_penalty", None)
        for members, _, end in ends if penalty is not None else ():
            for j, b in enumerate(members):  # a rule's own charge (the hybrid's evaluations),
                if losses[b] is not None:    # run by run as unroll_segment adds it
                    losses[b] = losses[b] + penalty(row_of(start, b), row_of(end, j),
                                                    lengths[b])
    return losses, ends
