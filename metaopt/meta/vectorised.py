"""Vectorised meta-batches: inner runs whose tasks share structure advance as one program.

``VectorisedPool`` is an ``InnerRunPool`` (same runs, refresh, ``run_keys``, ``state_dict``, so a
checkpoint resumes bit-exactly under either engine) whose ``segment`` groups the runs by
``Task.batch_key()`` and unrolls each group of ``B`` runs as one batched program
(learned_optimization's ``vmap`` over tasks, in PyTorch):

    L = batch.loss(θ, b)                         (B,) losses, θ stacked (B, ...) per tensor
    g = ∂ Σ_b L_b / ∂θ                           every run's own gradient (tasks are independent)
    θ', s' = vmap(learned.step)(θ, (L, g), s, φ)  the SAME rule code, one program for B runs

so dispatch costs are paid once per group step instead of once per run step. The meta-loss
terms, the truncation (``min(T, N − step)`` per run: runs that finish early leave the batch),
the divergence test and the batch streams are those of ``unroll.unroll_segment``, run for run:
the meta-gradient equals the loop's up to summation order (``tests/meta/test_vectorised.py``).
A run that diverges leaves the batch at the step it diverged (one host sync per group step, where
the loop has one per run step) and gives no loss; its slice of the earlier batched steps gets a
zero cotangent. Groups of one run, tasks without a ``batch_key`` (one notice per task type),
groups whose rule state cannot be stacked, and every run once the rule fails under vmap (e.g. it
reads a tensor on the host; one notice, ``VectorisedPool.fallback``) take the loop.

The learned rule is called through ``torch.func.vmap`` generically; its ``grad_fn`` returns the
precomputed ``(L_b, g_b)`` and must only be evaluated at the current parameters (GARO's is).
``aten::gru_cell`` has no vmap batching rule in PyTorch (a per-sample fallback loop); this module
registers its decomposition (PyTorch's own GRU-cell formula) for vmap, at import, when missing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules.base import State, TensorList
from ..task import TaskBatch
from .inner_runs import InnerRunPool, SegmentBatch
from .learned import detach_state
from .truncation import segment_length
from .unroll import batch_generator, unroll_segment

log = logging.getLogger(__name__)


def _gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """``aten::gru_cell`` in the order of ATen's CPU kernel (``RNN.cpp``), for vmap."""
    i_r, i_z, i_n = F.linear(input, w_ih, b_ih).chunk(3, -1)
    h_r, h_z, h_n = F.linear(hx, w_hh, b_hh).chunk(3, -1)
    reset, update = (h_r + i_r).sigmoid(), (h_z + i_z).sigmoid()
    new = (i_n + h_n * reset).tanh()
    return (hx - new) * update + new


if not torch._C._dispatch_has_kernel_for_dispatch_key("aten::gru_cell", "FuncTorchBatched"):
    _VMAP_LIBRARY = torch.library.Library("aten", "IMPL", "FuncTorchBatched")
    _VMAP_LIBRARY.impl(torch.ops.aten.gru_cell.default, _gru_cell)


# -- stacking run states along a leading run dimension ----------------------------------------------
def _is_param_list(values: Sequence, shapes: Sequence[Sequence[torch.Size]]) -> bool:
    """A state entry with one tensor per parameter, shaped like it, in every run."""
    return all(isinstance(v, (list, tuple)) and len(v) == len(s) and
               all(isinstance(t, Tensor) and t.shape == p for t, p in zip(v, s))
               for v, s in zip(values, shapes))


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


def _take(tree, index: Tensor):
    """Rows ``index`` of every tensor of a pytree."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {k: _take(v, index) for k, v in tree.items()}
    return type(tree)(_take(v, index) for v in tree)


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


# -- one group of runs through one segment ----------------------------------------------------------
def unroll_group(learned, weights, batch: TaskBatch, names: Sequence[str], params: TensorList,
                 state: State, lengths: Sequence[int], generators: Sequence[torch.Generator],
                 meta_loss, *, differentiable: bool, second_order: bool,
                 step: Callable | None = None):
    """``unroll_segment`` for ``B`` stacked runs (module docstring).

    Returns ``(losses, ends)``: per run the combined meta-loss (None where diverged), and the
    ``(runs, params, state)`` chunks, stacked, in which the surviving runs ended the segment.
    """
    step = step or batched_step(learned, weights)
    count, train = len(batch), meta_loss.split == "train"
    every = meta_loss.needs_every_term
    rows, sub = list(range(count)), batch                 # the runs still in the batch
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
            with torch.enable_grad():
                loss = sub.loss(dict(zip(names, points)),
                                sub.train_batch([generators[b] for b in rows]))
                grads = None
                if any(stepping):
                    grads = torch.autograd.grad(loss.sum(), points, retain_graph=differentiable,
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
                # a non-finite run is dropped below; finite stand-ins keep its backward finite
                loss_in = torch.where(finite, loss, torch.ones_like(loss))
                grads_in = [torch.where(finite.view(-1, *[1] * (g.dim() - 1)), g,
                                        torch.ones_like(g)) for g in grads]
                inner = [i for i, s in enumerate(stepping) if s]
                if len(inner) == len(rows):
                    new = step(list(params), loss_in, grads_in, state)
                else:  # train split: runs at their final term do not step
                    at = torch.tensor(inner, device=device)
                    new = step(_take(list(params), at), _take(loss_in, at),
                               _take(grads_in, at), _take(state, at))
                if not train:  # every run in the batch steps: held-out terms at θ_{k+1}
                    wanted = [every or k == lengths[b] - 1 for b in rows]
                    test = sub.test_batch([generators[b] if w else None
                                           for b, w in zip(rows, wanted)])
                    term = sub.normalized_loss(sub.loss(dict(zip(names, new[0])), test))
                    add(term, rows, wanted)
                    bad = bad | (torch.tensor(wanted, device=device)
                                 & meta_loss.is_divergent(term.detach()))
            flags = bad.tolist()  # the one host sync of a group step
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
                ends.append(([rows[i] for i in finished], _take(list(source[0]), at),
                             _take(source[1], at)))
            if new is None or not keep:
                break
            params, state = new
            kept = [inner_of[i] for i in keep]
            if kept != list(range(len(inner_of))):
                at = torch.tensor(kept, device=device)
                params, state = _take(list(params), at), _take(state, at)
            if len(keep) != len(rows):
                rows = [rows[i] for i in keep]
                sub = batch.select(rows)
    losses: list[Tensor | None] = [None] * count
    if total is not None:
        counts = torch.tensor([max(t, 1) for t in terms], dtype=total.dtype, device=total.device)
        combined = total / counts
        losses = [combined[b] if alive[b] else None for b in range(count)]
    return losses, ends


# -- the pool -----------------------------------------------------------------------------------------
class VectorisedPool(InnerRunPool):
    """``InnerRunPool`` whose segments advance groups of same-``batch_key`` runs as one program.

    Same constructor, ``refresh``, ``run_keys``, ``state_dict`` / ``load_state_dict`` and
    ``segment(weights, *, differentiable, advance, starts=None) -> SegmentBatch`` (with ``ends``)
    as the loop pool, and the same numbers up to summation order (module docstring).

    Args (beyond ``InnerRunPool``'s):
        compile: ``torch.compile`` the batched rule step (measured by ``scripts/benchmark.py
            meta``; off by default: on CPU the unrolled graphs are too small to pay for it).
    """

    def __init__(self, *args, compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.compile = bool(compile)
        self._noticed: set[str] = set()
        self.fallback: str | None = None  # why the rule took the loop, once it could not vmap

    def _groups(self, indices: Sequence[int]) -> tuple[list[list[int]], list[int]]:
        """Runs grouped by ``batch_key`` (first-seen order) and the runs left to the loop."""
        groups: dict = {}
        alone = []
        for i in indices:
            task = self.runs[i].task
            key = task.batch_key()
            if key is None:
                name = type(task).__name__
                if name not in self._noticed:
                    self._noticed.add(name)
                    log.warning("vectorised engine: %s has no batch_key(); its runs take the "
                                "loop", name)
                alone.append(i)
            else:
                groups.setdefault(key, []).append(i)
        batched = [g for g in groups.values() if len(g) > 1]
        alone += [g[0] for g in groups.values() if len(g) == 1]
        return batched, sorted(alone)

    def _step_fn(self, weights):
        step = batched_step(self.learned, weights)
        return torch.compile(step, dynamic=True) if self.compile else step

    def segment(self, weights: Mapping[str, Tensor], *, differentiable: bool, advance: bool,
                starts: Sequence[tuple[TensorList, State] | None] | None = None) -> SegmentBatch:
        """One truncation of every run at meta-parameters ``weights`` (``InnerRunPool.segment``)."""
        if starts is not None:
            if advance:
                raise ValueError("starts: only with advance=False (the runs keep their own state)")
            if len(starts) != len(self.runs):
                raise ValueError(f"starts: {len(starts)} given, this pool has {len(self.runs)} runs")
        if any(run is None for run in self.runs):
            raise RuntimeError("InnerRunPool.segment: call refresh() first")
        begin = [(run.params, run.state) if starts is None or starts[i] is None else starts[i]
                 for i, run in enumerate(self.runs)]
        count = len(self.runs)
        losses: list = [None] * count
        finals: list = [None] * count  # (params, state) at the segment's end, None if diverged
        groups, alone = self._groups(range(count))
        if self.fallback is not None:
            groups, alone = [], list(range(count))
        try:
            step = self._step_fn(weights) if groups else None
            for group in groups:
                if not self._group(group, begin, weights, differentiable, step, losses, finals):
                    alone += group
        except RuntimeError as error:  # the rule cannot run under vmap (a host sync, ...)
            self.fallback = f"{type(self.learned).__name__}: {str(error).splitlines()[0]}"
            log.warning("vectorised engine: the rule does not vectorise (%s); every run takes "
                        "the loop", self.fallback)
            losses, finals, alone = [None] * count, [None] * count, list(range(count))
        for i in sorted(alone):
            run = self.runs[i]
            result = unroll_segment(
                self.learned, weights, run.task, run.names, begin[i][0], begin[i][1],
                segment_length(self.truncation_length, run.step, run.horizon), self.meta_loss,
                batch_seed=run.batch_seed, inner_step=run.step, differentiable=differentiable,
                second_order=self.second_order)
            losses[i] = result.loss
            finals[i] = None if result.diverged else (list(result.params), result.state)
        if not advance:
            ends = [None if f is None else (detach_state(list(f[0])), detach_state(f[1]))
                    for f in finals]
            return SegmentBatch(losses, 0, {}, ends)
        resets, emitted = 0, {}
        for i, run in enumerate(self.runs):
            if finals[i] is None:
                self.runs[i] = None  # reset: the next refresh() starts a new task here
                resets += 1
                continue
            run.params, run.state = detach_state(list(finals[i][0])), detach_state(finals[i][1])
            run.step += segment_length(self.truncation_length, run.step, run.horizon)
            for key, value in self.learned.trace(run.state).items():
                emitted.setdefault(key, []).append(float(value))
        traces = {key: sum(values) / len(values) for key, values in emitted.items()}
        return SegmentBatch(losses, resets, traces, [])

    def _group(self, group, begin, weights, differentiable, step, losses, finals) -> bool:
        """Unroll the runs ``group`` as one batch; False (nothing done) if their rule states
        cannot be stacked (then they take the loop)."""
        runs = [self.runs[i] for i in group]
        batch = type(runs[0].task).stack([run.task for run in runs])
        names = runs[0].names
        shapes = [[p.shape for p in begin[i][0]] for i in group]
        params = [batch.stack_values(n, [begin[i][0][j] for i in group])
                  for j, n in enumerate(names)]
        try:
            state = stack_tree([begin[i][1] for i in group], batch, names, shapes)
        except (TypeError, RuntimeError) as error:
            name = type(runs[0].task).__name__
            if name not in self._noticed:
                self._noticed.add(name)
                log.warning("vectorised engine: %s; %s runs take the loop", error, name)
            return False
        lengths = [segment_length(self.truncation_length, run.step, run.horizon) for run in runs]
        generators = [batch_generator(run.batch_seed, run.step) for run in runs]
        group_losses, ends = unroll_group(
            self.learned, weights, batch, names, params, state, lengths, generators,
            self.meta_loss, differentiable=differentiable, second_order=self.second_order,
            step=step)
        for b, i in enumerate(group):
            losses[i] = group_losses[b]
        for members, end_params, end_state in ends:
            chunk = batch.select(members)
            per_params = [chunk.unstack_values(n, p) for n, p in zip(names, end_params)]
            per_state = unstack_tree(end_state, chunk, names, end_params)
            for b, member in enumerate(members):
                if losses[group[member]] is not None:
                    finals[group[member]] = ([p[b] for p in per_params], per_state[b])
        return True
