"""``metaopt train`` misuse and torchrun resumes whose ranks disagree: refused in one line with
exit 2, before anything trains, with the run directory unchanged byte for byte."""
from __future__ import annotations

import fcntl
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaopt import cli

from .test_meta_train import ROOT, TINY, _load_script
from .test_meta_train_reliability import snapshot

CONFIG = str(ROOT / "configs" / "garo_quadratic.yaml")


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def finished(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    script.main(["--config", CONFIG, f"out_dir={out}", *TINY, "steps=2"])
    return out


# ----------------------------------------------------------------------------------- the CLI
def test_train_without_config_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """Used to train a 200-step default run into ./runs/garo and exit 0."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "steps=1"])
    assert exit_.value.code == 2
    assert "--config" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_dir", ['""', "' '"])
def test_an_empty_out_dir_is_refused(tmp_path, monkeypatch, capsys, out_dir):
    """``out_dir=""`` trained into the current directory."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--config", CONFIG, f"out_dir={out_dir}", *TINY, "steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "out_dir" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_dir", ["/", "/.", "//", "/tmp/.."])
def test_the_filesystem_root_as_out_dir_is_refused(tmp_path, monkeypatch, capsys, out_dir):
    """``out_dir=/`` trained into the filesystem root. Checked with ``--check`` (the same
    validation as a run, and it never writes): a regression must not write into /."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "--config", CONFIG, f"out_dir={out_dir}", *TINY, "--check"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "filesystem root" in err and len(err.splitlines()) == 1, err


def test_a_locked_out_dir_is_one_line_and_exit_2(finished, tmp_path, capsys):
    """A second run on a locked out_dir ended in a traceback and exit 1."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another "process" trains into it
    try:
        code = cli.main(["train", "--config", CONFIG, f"out_dir={run}", *TINY, "steps=3"])
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "another process" in err, err
    assert snapshot(run) == before


# ----------------------------------------------------------------------- torchrun resumes
def _stage_ranks(finished, run, rank1_step):
    """A 2-rank run directory: rank 0's state at the finished step, rank 1's at ``rank1_step``
    (None: its file is missing)."""
    shutil.copytree(finished, run)
    state = torch.load(run / "state.pt", weights_only=True)
    state["world_size"] = 2
    torch.save(state, run / "state.pt")
    if rank1_step is not None:
        older = dict(state, step=rank1_step, skipped_updates=0)
        torch.save(older, run / "state.rank1.pt")


def test_check_resume_agreement_names_every_rank(script, tmp_path):
    run_dir = script.run_dir
    run_dir.check_resume_agreement([3, 3], ["state.pt", "state.rank1.pt"], tmp_path)
    run_dir.check_resume_agreement([None, None], ["state.pt", "state.rank1.pt"], tmp_path)
    for steps, words in (([3, None], "missing"), ([3, 1], "at step 1"),
                         ([3, run_dir.UNREADABLE], "unreadable")):
        with pytest.raises(run_dir.RunDirError, match=words) as error:
            run_dir.check_resume_agreement(steps, ["state.pt", "state.rank1.pt"], tmp_path)
        assert "\n" not in str(error.value) and "state.rank1.pt" in str(error.value)


@pytest.mark.parametrize("rank1_step", [1, None], ids=["older", "missing"])
def test_rank0_refuses_a_resume_its_peer_cannot_match(script, finished, tmp_path, monkeypatch,
                                                      rank1_step):
    """Rank 0 alone, with rank 1's answer produced by the same code on the same folder."""
    run = tmp_path / "run"
    _stage_ranks(finished, run, rank1_step)
    cfg = script.load_config(CONFIG, [f"out_dir={run}", *TINY, "steps=2"])

    def gather(out, mine):
        try:
            theirs = script.read_run_dir(cfg, run, 1, 2)
        except Exception:  # noqa: BLE001
            peer = script.run_dir.UNREADABLE
        else:
            peer = None if theirs is None else int(theirs["step"])
        out[:] = [mine, peer]
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    before = snapshot(run)
    try:
        with pytest.raises(script.run_dir.RunDirError, match="disagree") as error:
            script.prepare_run_dir(cfg, run, rank=0, world=2)
    finally:
        script.run_dir.release_all()
    assert "\n" not in str(error.value)
    assert snapshot(run) == before


def _rank_worker(rank, world, init_file, run, overrides, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        script = _load_script()
        cfg = script.load_config(CONFIG, overrides)
        try:
            script.prepare_run_dir(cfg, run, rank=rank, world=world)
            message = "accepted"
        except Exception as error:  # noqa: BLE001
            message = f"{type(error).__name__}: {error}"
        with open(os.path.join(results, f"rank{rank}.txt"), "w") as f:
            f.write(message)
    finally:
        script.run_dir.release_all()
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("rank1_step", [1, None], ids=["older", "missing"])
def test_every_rank_refuses_a_resume_at_different_steps(finished, tmp_path, rank1_step):
    """Two gloo processes: rank 0 used to train on and export while rank 1 died."""
    from pathlib import Path
    run = tmp_path / "run"
    _stage_ranks(finished, run, rank1_step)
    before = snapshot(run)
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), run,
                                 [f"out_dir={run}", *TINY, "steps=2"], str(tmp_path)),
             nprocs=2, join=True)
    for rank in range(2):
        message = Path(tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("RunDirError") and "disagree" in message, message
    assert snapshot(run) == before
