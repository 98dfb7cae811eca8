"""Vectorised meta-batches: inner runs whose tasks share structure advance as one program.

``VectorisedPool`` is an ``InnerRunPool`` (same runs, refresh, ``run_keys``, ``state_dict``, so a
checkpoint resumes bit-exactly under either engine) whose ``segment`` groups the runs by
``Task.batch_key()`` and unrolls each group of ``B`` runs as one batched program
(learned_optimization's ``vmap`` over tasks, in PyTorch):

    L = batch.loss(θ, b)                         (B,) losses, θ stacked (B, ...) per tensor
    g = ∂ Σ_b L_b / ∂θ                           every run's own gradient (tasks are independent)
    θ', s' = vmap(learned.step)(θ, (L, g), s, φ)  the SAME rule code, one program for B runs

(``metaopt.meta.batched_unroll``), so dispatch costs are paid once per group step instead of once
per run step. The meta-loss terms, the truncation (``min(T, N − step)`` per run: runs that finish
early leave the batch), the divergence test and the batch streams are those of
``unroll.unroll_segment``, run for run: the meta-gradient equals the loop's up to summation order
(``tests/meta/test_vectorised.py``).
A run that diverges leaves the batch at the step it diverged (one host sync per group step, where
the loop has one per run step) and gives no loss; its slice of the earlier batched steps gets a
zero cotangent. Groups of one run (unless the rule's steps are shared, below), tasks without a
``batch_key`` (one notice per task type), groups whose rule state cannot be stacked, and every
run once the rule fails under vmap (e.g. it reads a tensor on the host; one notice,
``VectorisedPool.fallback``) take the loop. Tasks of
different parameter sizes share a zero-padded batch only when the rule pads exactly (probed once,
``metaopt.meta.batch_plan.rule_pads_exactly``); otherwise the group key adds the exact shapes.
When the rule also steps a run's tensors exactly as one flat vector (GARO with one segment;
``rule_flattens_exactly``), groups of every family, groups of one included, share the rule's
steps: each group's loss is one call, and the rule runs once per bucket of runs of similar size
(``metaopt.meta.flat_buckets``). A learned rule with a ``stacked_step`` (GARO's,
``metaopt.garo.stacked``) takes those rows in its own step, without vmap's per-operation
dispatch. ``describe`` says all this in plain words before training starts.

The learned rule is called through ``torch.func.vmap`` generically; its ``grad_fn`` returns the
precomputed ``(L_b, g_b)`` and must only be evaluated at the current parameters (GARO's is).
A rule that evaluates the gradient elsewhere and can step stacked runs itself (``batched_form``:
the hybrid GD–ODE optimizer's rules, whose Runge–Kutta stages need each run's gradient at its own
stage points) is called once per group step instead, with a ``grad_fn`` that evaluates the group
wherever it asks (``metaopt.meta.native_batched``; on a flat bucket, the whole bucket at its
rows' points); its groups are padded when it pads exactly, share flat buckets when it flattens
exactly (its step counters, Python ints, ride along as ``(B,)`` tensors), and a rule's own
compute charge (``segment_penalty``) is added run by run as the loop adds it.
``aten::gru_cell`` has no vmap batching rule in PyTorch (a per-sample fallback loop); this module
registers its decomposition (PyTorch's own GRU-cell formula) for vmap, at import, when missing.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rules.base import State, TensorList
from .batch_plan import (
    loop_report,
    rule_batch_error,
    rule_flattens_exactly,
    rule_pads_exactly,
    task_label,
)
from .batched_unroll import batched_step, stack_tree, unroll_group, unstack_tree
from .flat_unroll import unroll_flat
from .inner_runs import InnerRunPool, SegmentBatch
from .learned import detach_state
from .native_batched import decode_ints, encode_ints, native_form, native_step
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


# -- the pool --------------------------------------------------------------------------------------
class VectorisedPool(InnerRunPool):
    """``InnerRunPool`` whose segments advance groups of same-``batch_key`` runs as one program.

    Same constructor, ``refresh``, ``run_keys``, ``state_dict`` / ``load_state_dict`` and
    ``segment(weights, *, differentiable, advance, starts=None) -> SegmentBatch`` (with ``ends``)
    as the loop pool, and the same numbers up to summation order (module docstring).

    Args (beyond ``InnerRunPool``'s):
        compile: ``torch.compile`` the batched rule step (measured by ``scripts/benchmark.py
            meta``; off by default: on CPU the unrolled graphs are too small to pay for it).
    """

    groups_by_key = True  # sharded, a new run goes to the rank holding its batch_key's group

    def __init__(self, *args, compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.compile = bool(compile)
        self._noticed: set[str] = set()
        self.fallback: str | None = None  # why the rule took the loop, once it could not vmap
        self._pads_exactly: bool | None = None  # rule_pads_exactly, probed at the first segment
        self._flat: bool | None = None  # rule_flattens_exactly (then runs share flat buckets)
        self._native = native_form(self.learned)  # the rule steps stacked runs itself

    def group_key(self, task, shapes=None):
        """The key runs are grouped by: ``task.batch_key()``, refined by the exact parameter
        ``shapes`` (default: the task's own) when the rule does not pad exactly
        (``metaopt.meta.batch_plan``), so then no parameter is padded; None: no batched form."""
        key = task.batch_key()
        if key is None or self._pads_exactly:
            return key
        if shapes is None:
            shapes = [p.shape for p in task.init_params().values()]
        return key, tuple(tuple(s) for s in shapes)

    def _check_padding(self, weights) -> None:
        if self._pads_exactly is None:
            try:
                self._pads_exactly = rule_pads_exactly(self.learned, weights)
                self._flat = self._pads_exactly and rule_flattens_exactly(self.learned,
                                                                          weights)
            except Exception:  # noqa: BLE001 (a rule the probe cannot drive: do not pad)
                self._pads_exactly = self._flat = False

    def describe(self, weights: Mapping[str, Tensor], *, probe: int = 64) -> str:
        """What the engine will batch and what takes the loop, in plain words (the trainer prints
        it once at start): the rule's padding (``rule_pads_exactly``), the task types without a
        batched form and those often alone in their group, from ``probe`` sampled tasks."""
        self._check_padding(weights)
        rule = type(getattr(self.learned, "rule", self.learned)).__name__
        error = rule_batch_error(self.learned, weights)
        if error is not None:
            return (f"vectorised engine: {rule} cannot advance stacked runs ({error}): every run "
                    f"takes the loop")
        lines = [f"vectorised engine: {rule} " + (
            "steps stacked runs itself (each run's gradient evaluated at its own points, "
            "Runge-Kutta stages included), and " if self._native is not None else "") + (
            "steps a run's tensors as one flat vector, so runs of every family share its steps "
            "(flat buckets by size)" if self._flat else
            "pads exactly, so tasks of different sizes share a padded batch" if self._pads_exactly
            else "depends on the number of parameters (its step on zero-padded tensors differs), "
                 "so only tasks of identical parameter shapes share a batch")]
        lines += ["  " + line for line in loop_report(self.family, len(self.runs),
                                                      self.group_key, probe=probe,
                                                      flat=bool(self._flat))]
        return "\n".join(lines)

    def _groups(self, indices: Sequence[int]) -> tuple[list[list[int]], list[int]]:
        """Runs grouped by ``group_key`` (first-seen order) and the runs left to the loop (those
        without a key, and groups of one unless the runs share flat buckets)."""
        groups: dict = {}
        alone = []
        for i in indices:
            task = self.runs[i].task
            key = self.group_key(task, [p.shape for p in self.runs[i].params])
            if key is None:
                name = task_label(task)
                if name not in self._noticed:
                    self._noticed.add(name)
                    log.warning("vectorised engine: %s has no batch_key(); its runs take the "
                                "loop", name)
                alone.append(i)
            else:
                groups.setdefault(key, []).append(i)
        batched = [self._by_label(g) for g in groups.values() if len(g) > 1 or self._flat]
        alone += [g[0] for g in groups.values() if len(g) == 1 and not self._flat]
        return batched, sorted(alone)

    def _by_label(self, group: list[int]) -> list[int]:
        """The runs of ``group``, same-``batch_label`` runs next to each other (labels in order
        of first appearance, runs in slot order within a label): the batch splits its rows by
        that label in contiguous blocks (``metaopt.task.RowPartition``)."""
        labels = [self.runs[i].task.batch_label() for i in group]
        order = {label: k for k, label in enumerate(dict.fromkeys(labels))}
        return [i for _, i in sorted(zip((order[label] for label in labels), group))]

    def _step_fn(self, weights, *, flat: bool = False):
        """The rule's step on stacked runs; ``flat``: on flat buckets' rows (one tensor and one
        segment per run), where a rule's own ``stacked_step`` saves vmap's dispatch."""
        if self._native is not None:  # (its steps hold host decisions: not compiled)
            return native_step(self._native, weights)
        stacked = getattr(self.learned, "stacked_step", None) if flat else None
        step = batched_step(self.learned, weights) if stacked is None else stacked(weights)
        if not self.compile:
            return step
        compiled = torch.compile(step, dynamic=True)
        from torch._dynamo.exc import TorchDynamoException  # (imports dynamo: only when asked)

        def guarded(*args):
            # A compiler that fails on the rule (inductor on GARO's float multipliers, today)
            # costs the compilation, not the engine: the step runs eagerly from then on.
            if self.compile:
                try:
                    return compiled(*args)
                except TorchDynamoException as error:
                    self.compile = False
                    log.warning("vectorised engine: torch.compile of the rule step failed (%s); "
                                "it runs eagerly", str(error).splitlines()[0])
            return step(*args)
        return guarded

    def segment(self, weights: Mapping[str, Tensor], *, differentiable: bool, advance: bool,
                starts: Sequence[tuple[TensorList, State] | None] | None = None) -> SegmentBatch:
        """One truncation of every run at meta-parameters ``weights`` (``InnerRunPool.segment``)."""
        self._check_starts(starts, advance)
        if any(run is None for run in self.runs):
            raise RuntimeError("InnerRunPool.segment: call refresh() first")
        begin = [(run.params, run.state) if starts is None or starts[i] is None else starts[i]
                 for i, run in enumerate(self.runs)]
        count = len(self.runs)
        self._check_padding(weights)
        losses: list = [None] * count
        finals: list = [None] * count  # (params, state) at the segment's end, None if diverged
        groups, alone = self._groups(range(count))
        if self.fallback is not None:
            groups, alone = [], list(range(count))
        try:
            # a run whose tensors differ in dtype or device keeps them (its group is not flat);
            # one group is a bucket already
            flat = [g for g in groups if self._flat and len({
                (p.dtype, p.device) for i in g for p in begin[i][0]}) == 1]
            flat = flat if len(flat) > 1 else []
            if flat:
                unroll_flat(self, flat, begin, weights, differentiable=differentiable,
                            step=self._step_fn(weights, flat=True), losses=losses,
                            finals=finals)
            rest = [g for g in groups if g not in flat]
            step = self._step_fn(weights) if rest else None
            for group in rest:
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
            finals[i] = None if result.diverged else (detach_state(list(result.params)),
                                                      detach_state(result.state))
        # every path leaves its finals detached (the flat path unbinds each stacked tensor once)
        if not advance:
            return SegmentBatch(losses, 0, {}, finals)
        resets, emitted = 0, {}
        for i, run in enumerate(self.runs):
            if finals[i] is None:
                self.runs[i] = None  # reset: the next refresh() starts a new task here
                resets += 1
                continue
            run.params, run.state = list(finals[i][0]), finals[i][1]
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
        ints: list = []
        try:
            states = [begin[i][1] for i in group]
            if self._native is not None:  # its step counters: (B,) tensors
                states, ints = zip(*(encode_ints(s) for s in states))
                ints = ints[0]
            state = stack_tree(list(states), batch, names, shapes)
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
            end_params, end_state = detach_state(list(end_params)), detach_state(end_state)
            per_params = [chunk.unstack_values(n, p) for n, p in zip(names, end_params)]
            per_state = unstack_tree(end_state, chunk, names, end_params)
            for b, member in enumerate(members):
                if losses[group[member]] is not None:
                    finals[group[member]] = ([p[b] for p in per_params],
                                             decode_ints(per_state[b], ints))
        return True
