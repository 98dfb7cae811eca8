"""A meta-batch sharded over 2 gloo processes (``InnerRunPool(..., shard=(rank, 2))``) gives the
1-process meta-gradient of the same runs, float64, under both engines.

The oracle is one process unrolling the whole meta-batch (no torch.distributed at all). The batch
has 5 runs (split between the ranks by ``assign_owners``) of a mixture of two shape groups
(quadratics, noisy quadratics; log-uniform horizons) and a controller that makes some runs
diverge, so the ranks' live counts differ: a plain mean of the ranks' gradients would not be the
1-process mean over the live runs.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tasks
from metaopt.meta import leave_process_group
from metaopt.meta.distributed import owner_cap

STEPS, RUNS = 4, 5


def _train(engine: str, shard=(0, 1)) -> dict:
    """``STEPS`` meta-steps; per step the combined meta-gradient and metrics, then the
    controller (``shard``: this process's part; ``(0, 1)``: the whole batch)."""
    import metaopt.meta.trainer as trainer_module
    from metaopt.meta import (
        InnerRunPool,
        MetaLoss,
        MetaTrainer,
        TruncatedBPTT,
        VectorisedPool,
        make_horizon,
    )
    from tests.meta.test_vectorised import rule

    learned = rule(2.5)  # lr ≈ 2.6 on quadratics: some runs diverge and are reset
    family = tasks.get("mixture", dtype=torch.float64, components={
        "quadratic": {"dim": (3, 6), "condition_number": (1.0, 30.0)},
        "noisy_quadratic": {"dim": (3, 6), "condition_number": (1.0, 30.0),
                            "noise_std": (0.01, 0.3)}})
    cls = {"loop": InnerRunPool, "vectorised": VectorisedPool}[engine]
    pool = cls(learned, family, RUNS, 4, make_horizon("log_uniform", min_length=2,
                                                         max_length=10),
               MetaLoss("mean", "train", divergence_threshold=3.0), shard=shard)
    trainer = MetaTrainer(learned, pool, TruncatedBPTT(), outer_lr=1e-2, seed=0)
    captured, local_live, reduce = [], [], trainer_module.reduce_estimate

    def capture(*args):
        local_live.append(args[1])  # this rank's live runs
        captured.append(reduce(*args))
        return captured[-1]
    trainer_module.reduce_estimate = capture
    try:
        metrics = [trainer.step() for _ in range(STEPS)]
    finally:
        trainer_module.reduce_estimate = reduce
    return {"grads": [c["grads"] for c in captured], "metrics": metrics,
            "local_runs": len(pool.runs), "local_live": local_live,
            "controller": {k: v.clone() for k, v in learned.module.state_dict().items()}}


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = {engine: _train(engine, (rank, world)) for engine in ("loop", "vectorised")}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        leave_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _relative(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in b) / max(scale, 1e-300)


@pytest.mark.parametrize("engine", ["loop", "vectorised"])
def test_two_processes_give_the_one_process_meta_gradient(sharded, engine):
    alone = _train(engine)
    ranks = [result[engine] for result in sharded]
    held = [rank["local_runs"] for rank in ranks]  # (the vectorised engine groups by key)
    assert sum(held) == RUNS and min(held) >= 1 and max(held) <= owner_cap(RUNS, 2)
    assert alone["metrics"][-1]["resets"] > 0  # runs diverged and were reset mid-batch
    lives = list(zip(ranks[0]["local_live"], ranks[1]["local_live"]))
    assert any(a != b for a, b in lives)  # so a plain mean of the ranks' means would be wrong
    for step in range(STEPS):
        one, two = alone["metrics"][step], ranks[0]["metrics"][step]
        assert (two["live_runs"], two["resets"], two["new_runs"]) == \
            (one["live_runs"], one["resets"], one["new_runs"])
        assert two["meta_loss"] == pytest.approx(one["meta_loss"], rel=1e-12)
        assert _relative(ranks[0]["grads"][step], alone["grads"][step]) <= 1e-12
        for name in one:
            if name.endswith("_t"):
                assert two[name] == pytest.approx(one[name], rel=1e-12), name
    for name, value in alone["controller"].items():  # the ranks agree bit for bit, and with
        assert torch.equal(ranks[0]["controller"][name], ranks[1]["controller"][name]), name
        torch.testing.assert_close(ranks[0]["controller"][name], value, rtol=1e-12,
                                   atol=1e-14)  # the single process up to summation order
