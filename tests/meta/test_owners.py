"""``assign_owners``: which rank owns each slot of a sharded meta-batch (no processes needed).

Properties checked against the old position rule (slot ``s`` on rank ``s mod W``) on random
meta-batches: runs that go on never move; every rank holds between 1 and ``owner_cap`` runs; a
key ends up on two ranks only when the rank holding it is full (or an empty rank had to be given
a run); and the table depends on which keys are equal, never on their values (ranks whose tasks
live on different devices, ``cuda:0`` and ``cuda:1``, still agree).
"""
from __future__ import annotations

import random

import pytest

from metaopt.meta.distributed import assign_owners, owner_cap


def _position(owners, keys, world, cap):  # the rule before ownership was group-aware
    return [slot % world for slot in range(len(owners))]


def _splits_explained(before, after, keys, world, cap) -> bool:
    """Every key held by two ranks after the refresh was held by two before, or sits on a full
    rank, or a rank that held nothing had to be given a run."""
    went_empty = any(r not in before for r in range(world))
    for key in {k for k in keys if k is not None}:
        ranks = {after[s] for s, k in enumerate(keys) if k == key}
        if len(ranks) < 2:
            continue
        was = {before[s] for s, k in enumerate(keys) if k == key and before[s] is not None}
        if len(was) < 2 and not went_empty and all(after.count(r) < cap for r in ranks):
            return False
    return True


def _meta_steps(rule, seed, num_runs=24, world=2, steps=30, num_keys=5, imbalance=0.25):
    """A meta-training's refreshes: every step some runs end and new ones (random keys) start."""
    rng = random.Random(seed)
    cap = owner_cap(num_runs, world, imbalance)
    keys = [rng.randrange(num_keys) for _ in range(num_runs)]
    owners = rule([None] * num_runs, keys, world, cap)
    yield [None] * num_runs, owners, keys, cap
    for _ in range(steps):
        ended = rng.sample(range(num_runs), rng.randrange(1, num_runs // 2))
        before = [None if s in ended else o for s, o in enumerate(owners)]
        for s in ended:
            keys[s] = rng.randrange(num_keys) if rng.random() > 0.1 else None  # None: no key
        owners = rule(before, keys, world, cap)
        yield before, owners, list(keys), cap


@pytest.mark.parametrize("seed", range(20))
def test_runs_stay_put_the_load_is_bounded_and_keys_stay_together(seed):
    for before, after, keys, cap in _meta_steps(assign_owners, seed):
        assert all(b is None or b == a for b, a in zip(before, after))  # runs never migrate
        counts = [after.count(r) for r in range(2)]
        assert min(counts) >= 1 and max(counts) <= cap
        assert _splits_explained(before, after, keys, 2, cap)


def test_position_sharding_splits_keys_without_cause():
    """The property above fails for the old rule: the check can fail."""
    assert not all(_splits_explained(before, after, keys, 2, cap)
                   for before, after, keys, cap in _meta_steps(_position, 0))


def test_fewer_groups_per_rank_than_position_sharding():
    def groups(rule):
        return sum(len({k for s, k in enumerate(keys) if after[s] == r and k is not None})
                   for _, after, keys, _ in _meta_steps(rule, 1, num_runs=64, steps=50,
                                                        num_keys=8) for r in range(2))
    assert groups(assign_owners) < 0.75 * groups(_position)


def test_the_table_depends_only_on_which_keys_are_equal():
    for before, after, keys, cap in _meta_steps(assign_owners, 3, world=3):
        renamed = [None if k is None else ("cuda:1", str(k)) for k in keys]
        assert assign_owners(before, renamed, 3, cap) == after


def test_without_keys_it_deals_the_slots_out_in_turn_and_balances_counts():
    """The loop's case (no key): the first refresh is the old position rule; later new runs go
    to the ranks with fewest runs."""
    assert assign_owners([None] * 7, [None] * 7, 3, owner_cap(7, 3)) == _position(
        [None] * 7, None, 3, None)
    assert assign_owners([0, 0, None, 1, None, None], [None] * 6, 2, 3) == [0, 0, 1, 1, 0, 1]


def test_every_rank_gets_a_run_even_when_one_key_could_fill_a_rank():
    assert assign_owners([None] * 4, ["a"] * 4, 2, 3) == [0, 0, 0, 1]
    assert assign_owners([0, 0, 0, None], ["a", "a", "a", "a"], 2, 3) == [0, 0, 0, 1]
    assert assign_owners([None, None, 1], ["a", "a", "b"], 3, 2) == [0, 2, 1]


def test_bad_caps_are_one_line_errors():
    with pytest.raises(ValueError, match="cannot hold 5 runs"):
        assign_owners([None] * 5, [None] * 5, 2, 2)
    with pytest.raises(ValueError, match="imbalance"):
        owner_cap(8, 2, -0.5)
    assert owner_cap(64, 2) == 40 and owner_cap(4, 2) == 3 and owner_cap(2, 2) == 1
    assert owner_cap(64, 2, 0.0) == 32 and owner_cap(5, 2, 0.0) == 3
