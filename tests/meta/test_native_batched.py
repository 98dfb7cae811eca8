"""Some runs of a group evaluated on their own (``native_batched.evaluator``'s ``rows``, the
hybrid's stability guard probing again only the runs whose step it shortened): each chosen run's
minibatch is drawn again from its generator's state before the group's draw
(``batched_unroll._redraw``). Oracle: the whole group's evaluation on its one draw, whose rows
for those runs must be the same values, float64, for every family of the shipped mixtures
(padded, merged, exact-architecture batches; stochastic and deterministic ones).
"""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from metaopt.meta.batched_unroll import _redraw
from metaopt.meta.native_batched import evaluator

from .test_vectorised_families import EXACT_FAMILIES, FAMILIES, family


def groups(name: str, count: int = 24) -> list[list]:
    """Same-key tasks of the family ``name``, in groups of three or more."""
    source, generator = family(name), torch.Generator().manual_seed(0)
    by_key = defaultdict(list)
    for _ in range(count):
        task = source.sample(generator)
        by_key[task.batch_key()].append(task)
    return [group for group in by_key.values() if len(group) >= 3]


def stacked(group: list) -> tuple:
    """``(batch, names, θ)``: the group's batch and its runs' initial points stacked."""
    batch = type(group[0]).stack(group)
    inits = [task.init_params(torch.Generator().manual_seed(i)) for i, task in enumerate(group)]
    names = list(inits[0])
    params = [batch.stack_values(name, [init[name] for init in inits]) for name in names]
    return batch, names, params


@pytest.mark.parametrize("name", sorted({**FAMILIES, **EXACT_FAMILIES}))
def test_some_runs_evaluated_alone_are_their_rows_of_the_group(name):
    found = groups(name)
    assert found, f"{name}: no group of three runs sampled"
    for group in found:
        batch, names, params = stacked(group)
        generators = [torch.Generator().manual_seed(100 + i) for i in range(len(group))]
        redraw = _redraw(batch, generators)
        data = batch.train_batch(generators)
        after = [g.get_state() for g in generators]
        evaluate = evaluator(batch, names, data, params, None, differentiable=False,
                             second_order=False, redraw=redraw)
        loss, grads = evaluate(params)
        for chosen in ([0, 2], [len(group) - 1]):
            subset = torch.tensor(chosen)
            part_loss, part_grads = evaluate.rows(params, subset)
            torch.testing.assert_close(part_loss, loss[subset], rtol=1e-12, atol=1e-14)
            for g, part in zip(grads, part_grads):
                torch.testing.assert_close(part, g[subset], rtol=1e-12, atol=1e-14)
        # drawing again leaves the runs' own generators where the group's draw left them
        assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, after))


def test_some_stepping_runs_evaluated_alone():
    """With only some runs of the group stepping (``rows``), ``subset`` counts among those."""
    batch, names, params = stacked(groups("mlp")[0])
    generators = [torch.Generator().manual_seed(7 + i) for i in range(len(batch))]
    redraw = _redraw(batch, generators)
    data = batch.train_batch(generators)
    stepping = torch.tensor([1, 2])
    evaluate = evaluator(batch, names, data, params, stepping, differentiable=False,
                         second_order=False, redraw=redraw)
    points = [p.index_select(0, stepping) * 1.5 for p in params]
    loss, grads = evaluate(points)
    part_loss, part_grads = evaluate.rows(points, torch.tensor([1]))
    torch.testing.assert_close(part_loss, loss[1:], rtol=1e-12, atol=1e-14)
    for g, part in zip(grads, part_grads):
        torch.testing.assert_close(part, g[1:], rtol=1e-12, atol=1e-14)


def test_a_selection_kept_across_steps_is_evaluated_on_each_step_s_draw():
    """``_redraw`` keeps a batch's selections across steps (``selected``); the minibatch is
    still each step's own."""
    batch, names, params = stacked(groups("mlp")[0])
    generators = [torch.Generator().manual_seed(30 + i) for i in range(len(batch))]
    selected, subset = {}, torch.tensor([0, 2])
    for _ in range(3):
        redraw = _redraw(batch, generators, selected)
        data = batch.train_batch(generators)
        evaluate = evaluator(batch, names, data, params, None, differentiable=False,
                             second_order=False, redraw=redraw)
        loss, grads = evaluate(params)
        part_loss, part_grads = evaluate.rows(params, subset)
        torch.testing.assert_close(part_loss, loss[subset], rtol=1e-12, atol=1e-14)
        for g, part in zip(grads, part_grads):
            torch.testing.assert_close(part, g[subset], rtol=1e-12, atol=1e-14)
    assert list(selected) == [(0, 2)]
