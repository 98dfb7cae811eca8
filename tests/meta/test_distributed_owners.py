"""Group-aware ownership of a sharded meta-batch, in 2 gloo processes, float64.

The oracle is one process unrolling the whole meta-batch (no torch.distributed). A mixture of
three ``batch_key`` groups (quadratics; MLPs of one and of two hidden layers), 8 runs of short
log-uniform horizons, so runs end every meta-step and new ones are given owners while others go
on. Checked, per engine where it matters:

* the ranks keep the same ownership table, hold exactly the slots it gives them, and hold fewer
  groups than position sharding (slot ``s`` on rank ``s mod 2``) would give the same runs;
* the 2-process meta-gradient (BPTT; PES, whose per-run particles must follow the runs when a
  rank's list of runs is re-ordered) is the 1-process one up to summation order;
* a save after 2 meta-steps and a resume on fresh trainers ends bit for bit where the straight
  run does;
* a state saved by position sharding (before ownership was in the state) still resumes, and the
  meta-gradients that follow are the 1-process ones.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tasks
from metaopt.meta import leave_process_group

STEPS, RUNS, DT = 4, 8, torch.float64


def _family():
    quadratics = tasks.get("quadratic", dim=(3, 6), condition_number=(1.0, 30.0), dtype=DT)

    def mlp(depth):
        return tasks.get("mlp", datasets=("synthetic",), width=(3, 7), depth=(depth, depth),
                         activations=("tanh",), batch_sizes=(6, 8), synthetic_examples=64,
                         synthetic_features=4, synthetic_classes=3, padding=True, dtype=DT)
    return tasks.MixtureFamily([quadratics, mlp(1), mlp(2)])


def _trainer(estimator: str, shard=(0, 1)):
    from metaopt.meta import MetaLoss, MetaTrainer, VectorisedPool, make_estimator, make_horizon
    from tests.meta.test_vectorised import rule

    learned = rule(0.0)  # lr ≈ 0.7: no run diverges (PES is then exact across ranks)
    pool = VectorisedPool(learned, _family(), RUNS, 3,
                          make_horizon("log_uniform", min_length=3, max_length=9),
                          MetaLoss("mean", "train", divergence_threshold=1e6), shard=shard)
    return MetaTrainer(learned, pool, make_estimator(estimator, num_pairs=2, sigma=1e-3),
                       outer_lr=1e-2, seed=0)


def _steps(trainer, count: int) -> list[dict]:
    """``count`` meta-steps; per step the combined meta-gradient and what the pool holds."""
    import metaopt.meta.trainer as trainer_module

    out, reduce = [], trainer_module.reduce_estimate

    def capture(*args):
        total = reduce(*args)
        out.append({"grads": total["grads"]})
        return total
    trainer_module.reduce_estimate = capture
    try:
        for _ in range(count):
            trainer.step()
            pool = trainer.pool
            out[-1].update(owners=list(pool.owners), slots=list(pool.slots),
                           seeds=[r.task_seed for r in pool.runs],
                           keys=[repr(r.task.batch_key()) for r in pool.runs])
    finally:
        trainer_module.reduce_estimate = reduce
    return out


def _final(trainer) -> dict:
    state = trainer.state_dict()
    return {"controller": state["controller"], "generator": state["generator"],
            "runs": state["pool"]["runs"], "ownership": state["pool"].get("ownership")}


def _old_layout(state: dict, rank: int) -> dict:
    """What position sharding saved for ``rank``: the 1-process runs of slots rank, rank + 2."""
    runs = state["pool"]["runs"]
    return {**state, "pool": {"shard": [rank, 2], "num_runs": len(runs), "runs": runs[rank::2]}}


def _worker(rank, world, init_file, out_dir):
    from metaopt.meta.training_state import gather_training_state, rank_state

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        result = {}
        for estimator in ("bptt", "pes"):
            trainer = _trainer(estimator, (rank, world))
            first = _steps(trainer, 2)
            saved = gather_training_state(trainer.state_dict())
            path = os.path.join(out_dir, f"{estimator}.pt")
            if rank == 0:
                torch.save(saved, path)
            dist.barrier()
            straight = first + _steps(trainer, STEPS - 2)
            resumed = _trainer(estimator, (rank, world))
            resumed.load_state_dict(rank_state(torch.load(path, weights_only=True), rank))
            _steps(resumed, STEPS - 2)
            result[estimator] = {"steps": straight, "final": _final(trainer),
                                 "resumed": _final(resumed)}
        old = torch.load(os.path.join(out_dir, "one_process.pt"), weights_only=True)
        trainer = _trainer("bptt", (rank, world))
        trainer.load_state_dict(_old_layout(old, rank))
        result["old"] = _steps(trainer, 2)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        leave_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("owners")
    trainer = _trainer("bptt")  # a 1-process state after 2 meta-steps: the old layout's source
    _steps(trainer, 2)
    torch.save(trainer.state_dict(), folder / "one_process.pt")
    mp.spawn(_worker, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _relative(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in b) / max(scale, 1e-300)


def test_ranks_hold_what_the_shared_table_says_and_fewer_groups_than_positions(ranks):
    steps = [result["bptt"]["steps"] for result in ranks]
    alone = _steps(_trainer("bptt"), STEPS)  # every slot's task, in slot order
    fewer = 0
    for step in range(STEPS):
        owners = steps[0][step]["owners"]
        assert steps[1][step]["owners"] == owners
        for rank in range(2):
            mine = [s for s, o in enumerate(owners) if o == rank]
            assert steps[rank][step]["slots"] == mine
            assert steps[rank][step]["seeds"] == [alone[step]["seeds"][s] for s in mine]
        keys = alone[step]["keys"]
        now = sum(len(set(steps[r][step]["keys"])) for r in range(2))
        position = sum(len(set(keys[r::2])) for r in range(2))
        assert now <= position
        fewer += now < position
    assert fewer > 0  # position sharding splits groups that the table keeps together


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_two_processes_give_the_one_process_meta_gradient(ranks, estimator):
    alone = _steps(_trainer(estimator), STEPS)
    two = ranks[0][estimator]["steps"]
    moved = False  # a run that went on while its rank's list of runs was re-ordered
    for step in range(STEPS):
        assert _relative(two[step]["grads"], alone[step]["grads"]) <= 1e-12, step
        if step:
            for result in ranks:
                before, after = result[estimator]["steps"][step - 1:step + 1]
                moved |= any(seed in after["seeds"] and after["seeds"].index(seed) != i
                             for i, seed in enumerate(before["seeds"]))
    assert moved


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_a_resume_across_save_and_load_is_bit_exact(ranks, estimator):
    for result in ranks:
        straight, resumed = result[estimator]["final"], result[estimator]["resumed"]
        assert straight["ownership"] == resumed["ownership"] is not None
        assert torch.equal(straight["generator"], resumed["generator"])
        for name, value in straight["controller"].items():
            assert torch.equal(value, resumed["controller"][name]), name
        for a, b in zip(straight["runs"], resumed["runs"], strict=True):
            assert (a["task_seed"], a["step"]) == (b["task_seed"], b["step"])
            assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))


def test_a_state_saved_by_position_sharding_still_resumes(ranks):
    alone = _trainer("bptt")
    _steps(alone, 2)  # where the fixture's 1-process state was saved
    after = _steps(alone, 2)
    for step in range(2):
        assert _relative(ranks[0]["old"][step]["grads"], after[step]["grads"]) <= 1e-12
        assert ranks[0]["old"][step]["owners"] == ranks[1]["old"][step]["owners"]

