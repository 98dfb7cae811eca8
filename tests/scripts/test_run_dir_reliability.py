"""``metaopt train`` misuse: refused in one line with exit 2, before anything trains, with the run
directory unchanged byte for byte (torchrun resumes whose ranks disagree:
``test_meta_train_torchrun.py``)."""
from __future__ import annotations

import fcntl
import os
import shutil

import pytest

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
