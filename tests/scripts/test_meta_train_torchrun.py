"""``scripts/meta_train.py`` in 2 gloo processes (what torchrun runs): a stopped and resumed run
ends bit for bit where an uninterrupted one does, under both engines; a resume whose ranks'
saved parts disagree is refused on every rank, in one line, with the run directory untouched.

Each test spawns the two ranks once (``torch.multiprocessing``, a ``file://`` rendezvous) and
calls the script's own functions in them; ``test_meta_train.py`` runs the torchrun command.
"""
from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from metaopt.meta import leave_process_group
from metaopt.meta.training_state import shared_digest
from scripts.meta_train_resume import prepare_run_dir

from .test_meta_train import ROOT, TINY, _load_script
from .test_meta_train_reliability import snapshot

CONFIG = str(ROOT / "configs" / "garo_quadratic.yaml")
SMALL = [*TINY, "unroll.num_tasks=4"]  # one to three runs per rank


def _spawn(worker, tmp_path, *args):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), *args), nprocs=2, join=True)


def _join(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)


# ---------------------------------------------------------------------- bit-exact resume
def _resume_worker(rank, world, init_file, root, engine):
    _join(rank, world, init_file)
    try:
        script = _load_script()

        def run(name, steps):
            script.main(["--config", CONFIG, f"out_dir={root}/{name}", *SMALL,
                         f"unroll.engine={engine}", f"steps={steps}"])
        run("straight", 4)
        run("resumed", 2)  # stopped after 2 meta-steps ...
        run("resumed", 4)  # ... and the same command again resumes both ranks
    finally:
        leave_process_group()


@pytest.fixture(scope="module", params=["loop", "vectorised"])
def resumed_runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"resume-{request.param}")
    _spawn(_resume_worker, root, str(root), request.param)
    return root


def _records(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "meta_loss" in r]


def test_a_resumed_two_process_run_ends_bit_for_bit_where_a_straight_one_does(resumed_runs):
    """(Each engine: ``unroll.engine=loop`` and ``vectorised``.)"""
    straight, resumed = (resumed_runs / name for name in ("straight", "resumed"))
    assert not list(straight.glob("state.rank*")) and not list(resumed.glob("state.rank*"))
    a = torch.load(straight / "state.pt", weights_only=True)
    b = torch.load(resumed / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and a["world_size"] == b["world_size"] == 2
    for name, value in a["controller"].items():
        assert torch.equal(value, b["controller"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    for part_a, part_b in zip(a["shards"], b["shards"], strict=True):
        assert part_a["digest"] == part_b["digest"]
        for run_a, run_b in zip(part_a["pool"]["runs"], part_b["pool"]["runs"], strict=True):
            assert run_a["task_seed"] == run_b["task_seed"]
            assert all(torch.equal(x, y) for x, y in zip(run_a["params"], run_b["params"]))
    seeds = [[r["task_seed"] for r in part["pool"]["runs"]] for part in a["shards"]]
    assert len(seeds[0]) + len(seeds[1]) == 4 and not set(seeds[0]) & set(seeds[1])
    assert min(map(len, seeds)) >= 1  # (the vectorised engine keeps same-key runs together)
    owners = a["shards"][0]["pool"]["ownership"]["owners"]
    assert owners == a["shards"][1]["pool"]["ownership"]["owners"]
    assert [owners.count(r) for r in range(2)] == [len(s) for s in seeds]
    assert _records(straight) == _records(resumed)
    assert (straight / "optimizer.safetensors").exists()


# ----------------------------------------------------------- refusals when the ranks disagree
def _two_rank_state(state: dict) -> dict:
    """The 2-process state of a 1-process one: rank r's part holds the runs of slots r, r + 2
    (the same draws: a sharded meta-batch is the 1-process one, split)."""
    runs = state["pool"]["runs"]
    shards = [{"pool": {"shard": [r, 2], "num_runs": len(runs), "runs": runs[r::2]},
               "estimator": {}, "digest": shared_digest(state)} for r in range(2)]
    return {**state, "world_size": 2, "pool": shards[0]["pool"], "shards": shards}


def _other_step(state):
    state["shards"][1]["digest"] = shared_digest({**state, "step": state["step"] - 1})


def _other_weights(state):
    other = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["controller"].items()}
    state["shards"][1]["digest"] = shared_digest({**state, "controller": other})


def _rank1_part_missing(state):
    state["shards"] = state["shards"][:1]


def _rank1_part_unloadable(state):  # only rank 1's trainer can tell (a run too many)
    state["shards"][1]["pool"]["runs"] = state["shards"][1]["pool"]["runs"] * 2


CASES = {"agree": None, "other_step": _other_step, "other_weights": _other_weights,
         "rank1_part_missing": _rank1_part_missing,
         "rank1_part_unloadable": _rank1_part_unloadable, "per_rank_files": "legacy"}
WORDS = {"other_step": "disagree", "other_weights": "disagree",
         "rank1_part_missing": "all 2 ranks", "rank1_part_unloadable": "rank 1 of 2",
         "per_rank_files": "one state file per rank"}


def _refusal_worker(rank, world, init_file, root, cases):
    _join(rank, world, init_file)
    try:
        script = _load_script()
        for case in cases:
            run = os.path.join(root, case)
            cfg = script.load_config(CONFIG, [f"out_dir={run}", *SMALL, "steps=4"])
            try:
                _, _, trainer = script.build(cfg)
                prepare_run_dir(cfg, Path(run), rank, world, trainer)
                message = "accepted"
            except Exception as error:  # noqa: BLE001
                message = f"{type(error).__name__}: {error}"
                if not isinstance(error, (script.run_dir.RunDirError, script.ConfigError)):
                    message += "\n" + traceback.format_exc()
            finally:
                script.run_dir.release_all()
            with open(os.path.join(root, f"{case}.rank{rank}.txt"), "w") as f:
                f.write(message)
    finally:
        leave_process_group()


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    script = _load_script()
    root = tmp_path_factory.mktemp("refusals")
    finished = root / "finished"  # a 1-process run after 2 meta-steps (config and state)
    cfg = script.load_config(CONFIG, [f"out_dir={finished}", *SMALL, "steps=2"])
    _, _, trainer = script.build(cfg)
    for _ in range(2):
        trainer.step()
    finished.mkdir()
    (finished / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (finished / "metrics.jsonl").write_text('{"step": 1, "meta_loss": 0.5}\n')
    state = {**trainer.state_dict(), "world_size": 1, "format_version": 1}
    before = {}
    for case, mutate in CASES.items():
        run = root / case
        shutil.copytree(finished, run)
        staged = _two_rank_state(state)
        if mutate == "legacy":  # the older layout: one file per rank, no parts
            staged = {**state, "world_size": 2}
            torch.save(staged, run / "state.rank1.pt")
        elif mutate is not None:
            mutate(staged)
        torch.save(staged, run / "state.pt")
        before[case] = snapshot(run)
    _spawn(_refusal_worker, root, str(root), list(CASES))
    return root, before


def test_agreeing_ranks_resume(refusals):
    root, _ = refusals
    for rank in range(2):
        assert (root / f"agree.rank{rank}.txt").read_text() == "accepted"


@pytest.mark.parametrize("case", [c for c in CASES if c != "agree"])
def test_every_rank_refuses_in_one_line_and_touches_nothing(refusals, case):
    root, before = refusals
    messages = [(root / f"{case}.rank{rank}.txt").read_text() for rank in range(2)]
    assert messages[0] == messages[1], messages  # the same line on every rank
    assert messages[0].startswith("RunDirError") and "\n" not in messages[0], messages[0]
    assert WORDS[case] in messages[0], messages[0]
    assert snapshot(root / case) == before[case]


def test_check_resume_agreement_names_the_ranks(tmp_path):
    from scripts import run_dir

    ok = {"error": None, "digest": "a" * 64, "step": 3}
    run_dir.check_resume_agreement([ok, ok], "state.pt", tmp_path)
    fresh = {"error": None, "digest": None, "step": None}
    run_dir.check_resume_agreement([fresh, fresh], "state.pt", tmp_path)
    for reports, words in (([ok, fresh], "rank 1 has no state.pt"),
                           ([ok, {**ok, "digest": "b" * 64, "step": 2}], "at step 2"),
                           ([ok, {**ok, "error": "TrainingStateError: x\ny"}], "rank 1 of 2")):
        with pytest.raises(run_dir.RunDirError, match=words) as error:
            run_dir.check_resume_agreement(reports, "state.pt", tmp_path)
        assert "\n" not in str(error.value)
