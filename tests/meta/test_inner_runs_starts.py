"""``InnerRunPool.segment(starts=...)``, ``SegmentBatch.ends`` and ``run_keys()`` (PES
particles)."""
from __future__ import annotations

import pytest
import torch

from .helpers import learned_rule, pool, quadratic_family


def test_starts_and_ends_chain_like_advancing():
    """Two probe segments chained through ``ends`` -> ``starts`` land where advancing twice does,
    and a probe leaves the stored runs untouched."""
    learned = learned_rule(hidden_size=2)
    weights = learned.meta_parameters()
    runs = pool(learned, quadratic_family(), num_runs=2, truncation_length=3, horizon=9)
    runs.refresh(weights, torch.Generator().manual_seed(0))
    keys = runs.run_keys()
    assert all(isinstance(k, tuple) and len(k) == 3 for k in keys)
    before = [[p.clone() for p in r.params] for r in runs.runs]
    with torch.no_grad():
        first = runs.segment(weights, differentiable=False, advance=False)
        assert all(torch.equal(a, b) for r, saved in zip(runs.runs, before)
                   for a, b in zip(r.params, saved))
        # the stored runs have not moved, so a second probe from the ends is the run's 2nd segment
        runs_step = [r.step for r in runs.runs]
        for r in runs.runs:
            r.step += 3  # what advancing would do to the step counter
        second = runs.segment(weights, differentiable=False, advance=False, starts=first.ends)
        for r, step in zip(runs.runs, runs_step):
            r.step = step
        runs.segment(weights, differentiable=False, advance=True)
        advanced = runs.segment(weights, differentiable=False, advance=True)
    assert advanced.ends == []
    for end, run, loss, reference in zip(second.ends, runs.runs, second.losses, advanced.losses):
        assert all(torch.equal(a, b) for a, b in zip(end[0], run.params))
        assert torch.equal(loss, reference)
    assert runs.run_keys() == keys


def test_starts_are_checked():
    learned = learned_rule(hidden_size=2)
    runs = pool(learned, quadratic_family(), num_runs=2)
    runs.refresh(learned.meta_parameters(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="starts"):
        runs.segment(learned.meta_parameters(), differentiable=False, advance=False, starts=[None])
    with pytest.raises(ValueError, match="starts"):
        runs.segment(learned.meta_parameters(), differentiable=False, advance=True,
                     starts=[None, None])
