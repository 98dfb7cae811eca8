"""Under torch.distributed (gloo, 2 processes) every rank draws its own tasks, the meta-gradient
is averaged, and all ranks keep identical controllers."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


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
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_sample_different_tasks_and_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["tasks"] != b["tasks"]
    for name, value in a["controller"].items():
        assert torch.equal(value, b["controller"][name]), name
