"""Under torch.distributed (gloo, 2 processes) every rank draws its own tasks, the meta-gradient
is averaged, and all ranks keep identical controllers."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaopt.meta import leave_process_group


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        from metaopt.garo.controller import GAROController
        from metaopt.garo.rule import GARORule
        from metaopt.meta import (
            GAROLearnedRule,
            InnerRunPool,
            MetaLoss,
            MetaTrainer,
            TruncatedBPTT,
            make_horizon,
        )
        from tests.meta.helpers import quadratic_family

        learned = GAROLearnedRule(GAROController(hidden_size=4), GARORule())
        pool = InnerRunPool(learned, quadratic_family(dtype=torch.float32), 2, 5,
                            make_horizon("constant", 10), MetaLoss())
        trainer = MetaTrainer(learned, pool, TruncatedBPTT(), outer_lr=1e-2, seed=0)
        for _ in range(3):
            trainer.step()
        torch.save({"controller": learned.module.state_dict(),
                    "tasks": [r.task_seed for r in pool.runs]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        leave_process_group()


@pytest.mark.slow
def test_ranks_sample_different_tasks_and_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["tasks"] != b["tasks"]
    for name, value in a["controller"].items():
        assert torch.equal(value, b["controller"][name]), name


_KEEP = []  # the group outlives destroy_process_group, as it does when a trainer still holds it


def _exit_worker(rank, world, init_file, leave):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    _KEEP.append(dist.group.WORLD)
    sys.setswitchinterval(30.0)  # this thread keeps the GIL from here to the interpreter's exit
    for _ in range(8):
        out = [torch.zeros(1000) for _ in range(world)]
        dist.all_gather(out, torch.ones(1000), async_op=True).wait()
    leave()


@pytest.mark.slow
def test_a_rank_that_exits_straight_after_its_last_collective_exits_cleanly(tmp_path):
    """With a bare ``destroy_process_group`` instead, about one run in four of this test aborts
    (SIGABRT in a gloo worker thread at exit)."""
    mp.spawn(_exit_worker, args=(4, str(tmp_path / "init"), leave_process_group), nprocs=4,
             join=True)
