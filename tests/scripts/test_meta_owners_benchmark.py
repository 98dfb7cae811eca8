"""``scripts/benchmarks/meta_owners.py``: the count it reports, on the shipped mixture's first
meta-steps (no timing)."""
from __future__ import annotations

from types import SimpleNamespace

from scripts.benchmarks import meta_owners


def test_ownership_by_key_holds_fewer_groups_per_rank_than_the_position_rule():
    rows = {row["rule"]: row for row in meta_owners.run(SimpleNamespace(config=None, rounds=3))}
    position, by_key = rows["position"], rows["by key, imbalance 0.25"]
    assert position["runs"] == by_key["runs"] == 64
    assert position["groups_per_batch"] == by_key["groups_per_batch"] > 4
    assert by_key["busier_rank_groups"] < position["busier_rank_groups"] - 2
    assert (position["min_runs"], position["max_runs"]) == (32, 32)
    assert 24 <= by_key["min_runs"] <= by_key["max_runs"] <= 40
