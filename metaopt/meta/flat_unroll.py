"""The vectorised engine's flat path: same-key groups of runs, of any families, unrolled through
shared rule steps as rows of flat buckets (``metaopt.meta.flat_buckets`` states the layout)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .batched_unroll import SameShapes, stack_tree, unroll_group
from .flat_buckets import (
    FlatBatch,
    GroupLayout,
    flat_row,
    flatten_state,
    plan_buckets,
    rows_of,
    split_row,
    unflatten_state,
)
from .learned import detach_state
from .native_batched import decode_ints, encode_ints
from .truncation import segment_length
from .unroll import batch_generator

__all__ = ["unroll_flat"]


def unroll_flat(pool, groups: Sequence[Sequence[int]], begin, weights, *, differentiable: bool,
                step, losses: list, finals: list) -> None:
    """Unroll the runs of ``groups`` (run indices, one ``batch_key`` each) in flat buckets,
    writing each run's meta-loss into ``losses`` and where it ended, ``(params, state)`` (None
    if it diverged), into ``finals``."""
    kinds: dict = {}
    for group in groups:
        first = begin[group[0]][0][0]
        kinds.setdefault((first.dtype, first.device), []).append(list(group))
    inits: dict = {}
    for members in kinds.values():
        lengths = [[sum(p.numel() for p in begin[i][0]) for i in g] for g in members]
        for bucket in plan_buckets(lengths):
            _unroll_bucket(pool, [members[i] for i in bucket], begin, weights, inits,
                           differentiable, step, losses, finals)


def _unroll_bucket(pool, groups, begin, weights, inits, differentiable, step, losses,
                   finals) -> None:
    learned = pool.learned
    indices = [i for g in groups for i in g]
    runs = [pool.runs[i] for i in indices]
    shapes = [[p.shape for p in begin[i][0]] for i in indices]
    real = [sum(s.numel() for s in run) for run in shapes]
    first = begin[indices[0]][0][0]
    batches, names, layouts = [], [], []
    for g in groups:
        batch = type(pool.runs[g[0]].task).stack([pool.runs[i].task for i in g])
        batches.append(batch)
        names.append(pool.runs[g[0]].names)
        layouts.append(GroupLayout(batch, names[-1], [[p.shape for p in begin[i][0]] for i in g],
                                   first.device))
    # the last column stays 0 (a group's padding reads it); an identity layout reads its own
    width = max([max(real) + 1] + [layout.size for layout in layouts if layout.identity])
    layouts = [layout.place(width) for layout in layouts]
    flat = FlatBatch(batches, names, layouts, width)
    states, ints = [], []
    for i, run, run_shapes, n in zip(indices, runs, shapes, real):
        key = (n, run.horizon)
        if key not in inits:
            with torch.no_grad():
                inits[key] = learned.init([first.new_zeros(n)], weights, horizon=run.horizon)
        states.append(flatten_state(begin[i][1], run_shapes, inits[key], width))
    if getattr(step, "native", False):  # its step counters: (B,) tensors (native_batched)
        states, ints = zip(*(encode_ints(s) for s in states))
        ints = ints[0]
    params = torch.stack([flat_row(begin[i][0], width) for i in indices])
    state = stack_tree(states, SameShapes(), ["flat"], [[torch.Size([width])]] * len(indices))
    lengths = [segment_length(pool.truncation_length, run.step, run.horizon) for run in runs]
    generators = [batch_generator(run.batch_seed, run.step) for run in runs]
    bucket_losses, ends = unroll_group(
        learned, weights, flat, ["flat"], [params], state, lengths, generators, pool.meta_loss,
        differentiable=differentiable, second_order=pool.second_order, step=step)
    for b, i in enumerate(indices):
        losses[i] = bucket_losses[b]
    for members, (end_params,), end_state in ends:  # detached (the finals' contract)
        param_rows = end_params.detach().unbind(0)
        state_rows = rows_of(detach_state(end_state), len(members))
        for k, b in enumerate(members):
            i = indices[b]
            if losses[i] is not None:
                finals[i] = (split_row(param_rows[k], shapes[b]), decode_ints(
                    unflatten_state(state_rows[k], begin[i][1], shapes[b]), ints))
