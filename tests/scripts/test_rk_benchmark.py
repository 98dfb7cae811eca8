"""``scripts/benchmarks/rk.py``: the rows its pass mode reports and its mode check (no timing)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from scripts.benchmarks import rk


def args(mode):
    return SimpleNamespace(mode=mode, rounds=1, seed=0, device="cpu")


def test_pass_mode_times_every_pass_hot_and_after_a_closure():
    rows = rk.run(args("passes"))
    assert {(r["pass"], r["when"]) for r in rows} == {
        (name, when) for name in ("y += c*k", "y = theta + c*k", "copy", "norm")
        for when in ("hot", "after_closure")}
    assert len({r["closure_ms"] for r in rows}) == 1
    assert all(r["ms"] > 0 and r["share_of_closure"] == pytest.approx(r["ms"] / r["closure_ms"])
               for r in rows)


def test_an_unknown_mode_is_a_one_line_error():
    with pytest.raises(ValueError, match="rk: unknown mode 'fast'"):
        rk.run(args("fast"))
