"""Runs of different families through one rule step: each run's parameters as one flat vector.

A rule whose step on a run's tensors equals its step on their concatenation (GARO with one
segment, and the hybrid's rules: their features are global norms and sums, their updates
elementwise; probed by
``metaopt.meta.batch_plan.rule_flattens_exactly``) can advance runs of *any* families together:

    θ_b = [vec θ_b,1, …, vec θ_b,K_b, 0, …, 0] ∈ ℝᴺ     run b's own tensors, zero-padded
    L_b = task_b.loss(θ_b as the group's tensors)      one ``loss`` call per same-key group
    θ', s' = learned.stacked_step(θ, (L, ∂L/∂θ), s)    ONE rule call for the whole bucket
                                                       (vmap(learned.step) for another rule)

``FlatBatch`` is that bucket as a ``TaskBatch`` with a single parameter ``"flat"`` of shape
``(R, N)``; ``unroll_group`` advances it unchanged (truncation, divergence, meta-loss terms).
A run's row holds only its real coordinates, so the rule never works on a group's padding: a
group whose tasks differ in shape (``TaskBatch.stack_values`` pads them) reads its padded
tensors from the rows by one ``gather`` whose padding entries point at the row's last column,
which every row keeps at 0 (``N`` = the longest run + 1; the rule pads exactly), or, for a
group padded only at the end of one tensor, straight from the row's own zero tail. Its gradient
is taken with respect to the rows themselves (the gather's backward puts it back in place). A
group whose loss reads its tensors rescaled (``TaskBatch.tensor_scales``: the augmented tasks'
``θ = s ⊙ θ'``) has its rows rescaled by one multiply of the bucket by a per-coordinate scale, the
same products as a multiply per tensor. The rule's state is flattened the same way, run by run:
per-parameter lists become one padded vector, global entries stay as they are, and entries whose
shape depends on the number of tensors are run constants (GARO's element counts), taken from
``learned.init`` of the flat run (``flatten_state``) and given back from the run's own state
afterwards (``unflatten_state``). Runs are merged into buckets by length (``plan_buckets``): one
more rule call is cheaper than padding beyond ``PAD_BUDGET`` elements.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..task_batch import TaskBatch

__all__ = ["PAD_BUDGET", "FlatBatch", "GroupLayout", "flat_row", "flatten_state", "plan_buckets",
           "row_of", "rows_of", "split_row", "unflatten_state"]

# A rule step's fixed cost is worth about this many padded elements of its elementwise work,
# on CPU: under vmap ~2.9 ms forward and backward against ~75 ns an element, GARO's stacked step
# ~2.3 ms against ~55 ns (a slower machine). configs/garo_general.yaml, CPU time per meta-step,
# budgets run side by side on one core (mean of meta-steps 3-30): under vmap 2^16 and 2^17
# alike, 2-8% under 2^15 at 16 and 64 runs (at 16 runs the largest network no longer takes a
# rule call of its own), equal at 8 and 32 runs, 2^18 and 2^19 6% and 15% over 2^16-2^17 at 64;
# with the stacked step 2^14, 2^15 and 2^16 alike at 64 runs.
PAD_BUDGET = 1 << 16


def flat_row(tensors: Sequence[Tensor], width: int) -> Tensor:
    """One run's tensors -> their concatenation, zero-padded to ``width``."""
    row = torch.cat([t.reshape(-1) for t in tensors])
    return F.pad(row, (0, width - row.numel()))


def split_row(row: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """The inverse of ``flat_row``: the run's tensors (views of ``row``)."""
    out, start = [], 0
    for shape in shapes:
        size = int(torch.Size(shape).numel())
        out.append(row[start:start + size].view(shape))
        start += size
    return out


def _is_param_list(value, shapes) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == len(shapes) and
            all(isinstance(t, Tensor) and t.shape == s for t, s in zip(value, shapes)))


def _is_plain(value) -> bool:
    """A number in a rule state (the hybrid's step counters): the same in either form."""
    return isinstance(value, (bool, int, float))


def flatten_state(state, shapes: Sequence[torch.Size], flat_init, width: int):
    """A run's rule state -> its flat form (module docstring); ``flat_init``: ``learned.init``
    of the run as one flat tensor (its run constants)."""
    if _is_param_list(state, shapes):
        return type(state)([flat_row(list(state), width)])
    if _is_plain(state):
        return state
    if isinstance(state, Tensor):
        return state if state.shape == flat_init.shape else flat_init
    if isinstance(state, dict):
        if set(state) != set(flat_init):
            raise TypeError("vectorised engine: the flat rule state has other entries")
        return {k: flatten_state(v, shapes, flat_init[k], width) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(flatten_state(v, shapes, c, width)
                           for v, c in zip(state, flat_init, strict=True))
    raise TypeError(f"vectorised engine: cannot flatten a rule-state entry of type {type(state)}")


def unflatten_state(flat, start, shapes: Sequence[torch.Size]):
    """The inverse of ``flatten_state``: ``flat`` back to the form of ``start`` (the run's state
    at the segment's start, whose run constants it gives back)."""
    if _is_param_list(start, shapes):
        return type(start)(split_row(flat[0], shapes))
    if _is_plain(start):
        return flat
    if isinstance(start, Tensor):
        return flat if flat.shape == start.shape else start
    if isinstance(start, dict):
        return {k: unflatten_state(flat[k], v, shapes) for k, v in start.items()}
    return type(start)(unflatten_state(f, v, shapes) for f, v in zip(flat, start))


def row_of(tree, b: int):
    """Row ``b`` of every tensor of a stacked pytree."""
    if isinstance(tree, Tensor):
        return tree[b]
    if isinstance(tree, dict):
        return {k: row_of(v, b) for k, v in tree.items()}
    return type(tree)(row_of(v, b) for v in tree)


def rows_of(tree, count: int) -> list:
    """``[row_of(tree, b) for b in range(count)]``, each tensor unbound once: one walk of the
    tree for all its rows (a walk per run cost ~3% of a 64-run meta-step)."""
    if isinstance(tree, Tensor):
        return list(tree.unbind(0))
    if isinstance(tree, dict):
        parts = {k: rows_of(v, count) for k, v in tree.items()}
        return [{k: part[b] for k, part in parts.items()} for b in range(count)]
    parts = [rows_of(v, count) for v in tree]
    return [type(tree)(part[b] for part in parts) for b in range(count)]


def plan_buckets(lengths: Sequence[Sequence[int]], budget: int = PAD_BUDGET) -> list[list[int]]:
    """Groups (``lengths[i]``: the flat lengths of group ``i``'s runs) merged into buckets: in
    order of their longest run, a group joins the current bucket while the bucket's padding,
    Σ over its runs of (longest − length), stays within ``budget`` elements."""
    order = sorted(range(len(lengths)), key=lambda i: max(lengths[i]))
    buckets: list[list[int]] = []
    rows = real = 0
    for i in order:
        longest, count, total = max(lengths[i]), len(lengths[i]), sum(lengths[i])
        if not buckets or (rows + count) * longest - real - total > budget:
            buckets.append([])
            rows = real = 0
        buckets[-1].append(i)
        rows, real = rows + count, real + total
    return buckets


class GroupLayout:
    """Where a group's stacked (padded) tensors sit in its runs' rows (module docstring):
    ``index`` (B, P) reads them from the rows (None: they are the rows' first P columns).

    Derived from the group's own ``stack_values``: each run's coordinate numbers 1, 2, … are
    stacked like its parameters, so wherever the group pads (at the end of each dimension, or
    per gate block of a GRU), a 0 marks the padding. When every real coordinate already sits at
    its own column (one tensor padded at its end: points, quadratics), the padding reads the
    row's own zero tail, so no gather is needed (``identity``; the rows must then be at least
    ``size`` long: ``place``).
    """

    def __init__(self, batch: TaskBatch, names: Sequence[str],
                 shapes: Sequence[Sequence[torch.Size]], device):
        numbers, starts, self.padded = [], [0] * len(shapes), []
        self.device = device
        self.numels = [[shape.numel() for shape in run] for run in shapes]
        for j, name in enumerate(names):
            values = []
            for b, run in enumerate(shapes):
                count = run[j].numel()
                values.append(torch.arange(starts[b] + 1, starts[b] + count + 1,
                                           dtype=torch.float64, device=device).view(run[j]))
                starts[b] += count
            stacked = batch.stack_values(name, values)
            self.padded.append(stacked.shape[1:])
            numbers.append(stacked.reshape(len(shapes), -1))
        self._numbers = torch.cat(numbers, dim=1).long() - 1
        self.size = self._numbers.shape[1]
        positions = torch.arange(self.size, device=device).expand_as(self._numbers)
        real = self._numbers >= 0
        self.identity = torch.equal(self._numbers[real], positions[real])
        self.index = None

    def place(self, width: int) -> GroupLayout:
        """The gather indices for rows ``width`` long (none for an ``identity`` layout)."""
        index = self._numbers
        if self.identity:
            if width < self.size:
                raise ValueError(f"width: {width} < this group's {self.size} columns")
            return self
        self.index = torch.where(index >= 0, index, width - 1)
        return self

    def tensors(self, rows: Tensor) -> list[Tensor]:
        """The group's stacked tensors from its rows."""
        padded = rows[:, :self.size] if self.index is None else rows.gather(1, self.index)
        # one split, not a slice per tensor: its backward is one concatenation, where each
        # slice's would allocate a zero gradient of the whole row (and the BPTT meta-gradient
        # goes through these backward passes again)
        parts = padded.split([shape.numel() for shape in self.padded], dim=1)
        return [part.view(len(rows), *shape) for part, shape in zip(parts, self.padded)]

    def tensor_numbers(self, width: int) -> Tensor:
        """``(B, width)``: which of a run's tensors each column of its row holds (the number of
        tensors, K, past its end)."""
        K = len(self.padded)
        counts = [c for run in self.numels for c in (*run, width - sum(run))]
        numbers = torch.arange(K + 1, device=self.device).repeat(len(self.numels))
        return numbers.repeat_interleave(torch.tensor(counts, device=self.device)).view(-1, width)

    def select(self, local: Sequence[int]) -> GroupLayout:
        out = GroupLayout.__new__(GroupLayout)
        out.padded, out.size, out.identity = self.padded, self.size, self.identity
        out.device, out.numels = self.device, [self.numels[i] for i in local]
        out.index = None
        if self.index is not None:
            out.index = self.index[torch.tensor(list(local), device=self.index.device)]
        return out


class FlatBatch(TaskBatch):
    """Same-key ``TaskBatch`` groups whose runs are rows of one ``(R, N)`` parameter ``"flat"``:
    group ``i`` holds rows ``offsets[i]:offsets[i+1]``, its tensors ``names[i]`` placed by
    ``layouts[i]``."""

    def __init__(self, groups: Sequence[TaskBatch], names: Sequence[Sequence[str]],
                 layouts: Sequence[GroupLayout], width: int, row_scales: Tensor | None = None):
        super().__init__([task for group in groups for task in group.tasks])
        self.groups, self.names, self.layouts = list(groups), list(names), list(layouts)
        self.width = int(width)
        self.offsets = [0]
        for group in self.groups:
            self.offsets.append(self.offsets[-1] + len(group))
        rescaled = any(group.tensor_scales() is not None for group in self.groups)
        self.row_scales = row_scales if row_scales is not None or not rescaled \
            else self._row_scales()

    def _row_scales(self) -> Tensor:
        """``(R, N)``: each coordinate's scale ``s`` in the groups that rescale their tensors
        (``TaskBatch.tensor_scales``), 1 elsewhere; the rows are rescaled by one multiply."""
        rows = []
        for group, names, layout in zip(self.groups, self.names, self.layouts):
            scales = group.tensor_scales()
            if scales is None:
                rows.append(torch.ones(len(group), self.width, dtype=self.dtype,
                                       device=self.device))
                continue
            per_tensor = F.pad(torch.stack([scales[name] for name in names], dim=1), (0, 1),
                               value=1.0)  # (B, K + 1): the last, past a run's tensors
            rows.append(per_tensor.gather(1, layout.tensor_numbers(self.width)))
        return torch.cat(rows)

    def _parts(self, flat: Tensor, batch):
        # one split (its backward one concatenation), not a slice per group
        sizes = [b - a for a, b in zip(self.offsets, self.offsets[1:])]
        for layout, group, part, rows in zip(self.layouts, self.groups, batch,
                                             flat.split(sizes)):
            yield group, part, layout.tensors(rows)

    def loss(self, params, batch) -> Tensor:
        flat = params["flat"]
        if self.row_scales is not None:
            flat = flat * self.row_scales
        return torch.cat([group.rescaled_loss(dict(zip(names, tensors)), part) for names, (
            group, part, tensors) in zip(self.names, self._parts(flat, batch))])

    def loss_and_grads(self, params, batch, *, grad: bool, retain_graph: bool = False,
                       create_graph: bool = False):
        """``(L, (∂ Σ L / ∂ flat,))`` (None when ``grad`` is False): the gradient taken with
        respect to the rows themselves, so autograd places each group's gradients back through
        its layout's gather (exactly: every real coordinate is read once, and the padding the
        gather reads from a row's zero column has exactly zero gradient)."""
        flat = params["flat"]
        loss = self.loss(params, batch)
        if not grad:
            return loss, None
        return loss, torch.autograd.grad(loss.sum(), [flat], retain_graph=retain_graph,
                                         create_graph=create_graph)

    def _split(self, generators):
        return [generators[a:b] for a, b in zip(self.offsets, self.offsets[1:])]

    def train_batch(self, generators):
        return [g.train_batch(part) for g, part in zip(self.groups, self._split(generators))]

    def test_batch(self, generators):
        return [g.test_batch(part) for g, part in zip(self.groups, self._split(generators))]

    def select(self, rows: Sequence[int]) -> FlatBatch:
        """The rows ``rows`` (ascending), each group keeping its own."""
        kept = []
        for i, group in enumerate(self.groups):
            local = [r - self.offsets[i] for r in rows
                     if self.offsets[i] <= r < self.offsets[i + 1]]
            if local:
                kept.append((group.select(local), self.names[i], self.layouts[i].select(local)))
        scales = None if self.row_scales is None else self.row_scales.index_select(
            0, torch.tensor(list(rows), device=self.device))
        return FlatBatch([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept],
                         self.width, scales)
