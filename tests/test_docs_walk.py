"""Every shell command of README.md and docs/*.md, in the order written, on a temporary copy of
the configs (tests/docs_walk.py parses them). The fast test checks that each one parses (train
configs validate with ``--check``, the rest answer ``--help`` or run: ``list``, ``tasks``); the
slow one runs them all with tiny work, so the README's sequence (quick start, then other
experiments, resuming with more steps) and the tutorial's (its family from ``--import``) work as
a newcomer types them.

Tiny work without changing what a command means: the ``--config`` file is replaced by a copy
with the same name (so the same default run directory) whose unroll is tiny, and only keys that
a resumed run may change (steps, validation, evaluation, W&B) are appended as overrides."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks
from metaopt import cli

from .docs_walk import ROOT, classify, commands, make_recipe, metaopt_argv


def _script_help(script: str) -> None:
    path = ROOT / "scripts" / Path(script).name
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr[-400:])


def _torchrun(nproc: int, args: list[str], workdir: Path, where: str) -> None:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "scripts.meta_train", *args],
                          capture_output=True, text=True, timeout=600, cwd=workdir,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{where}: torchrun exited {done.returncode}: " \
        f"{done.stderr[-600:]}"


def _walk(workdir: Path, run: bool, capsys) -> dict[str, float]:
    shutil.copytree(ROOT / "configs", workdir / "configs")
    seconds: dict[str, float] = {}
    for doc, line, argv in commands():
        where = f"{doc.name}:{line}"
        if argv[0] == "write":  # a file the docs ask the reader to save
            (workdir / argv[1]).write_text(argv[2])
            continue
        kind, target = classify(argv)
        if kind == "make":
            recipe = make_recipe(target)
            if target != "quickstart":
                continue  # set-up, tests, docs: the Makefile target exists (checked above)
            (quick,) = [r for r in recipe if "-m scripts.meta_train" in r]
            kind, target = "metaopt", ["train", *quick.split("-m scripts.meta_train")[1].split()]
        if kind == "help":
            _script_help(target)
            continue
        if kind == "torchrun" and run:  # the processes, for real (tiny work)
            nproc, target = target
            args, _ = metaopt_argv(list(target), workdir, run)
            _torchrun(nproc, args[1:], workdir, where)
            continue
        if kind == "torchrun":  # its config and run directory, checked by one process
            target = target[1]
        args, is_help = metaopt_argv(list(target), workdir, run)
        started = time.perf_counter()
        if is_help:
            with pytest.raises(SystemExit) as exit_:
                cli.main(args)
            code = exit_.value.code
        else:
            code = cli.main(args)
        seconds[f"{where} {' '.join(argv)}"] = time.perf_counter() - started
        captured = capsys.readouterr()
        assert code in (0, None), \
            f"{where}: `{' '.join(argv)}` exited {code}: {captured.err[-600:]}"
    return seconds


@pytest.fixture
def clean_registry(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    registry = dict(tasks._REGISTRY)
    yield tmp_path
    tasks._REGISTRY.clear()
    tasks._REGISTRY.update(registry)
    sys.modules.pop("sine_task", None)


def test_every_documented_command_parses(clean_registry, capsys):
    seen = list(commands())
    names = {" ".join(a) for _, _, a in seen if a[0] != "write"}
    assert "make quickstart" in names and any(n.startswith("metaopt train --import") for n in names)
    _walk(clean_registry, run=False, capsys=capsys)


@pytest.mark.slow
def test_every_documented_command_runs_in_order(clean_registry, capsys):
    seconds = _walk(clean_registry, run=True, capsys=capsys)
    runs = clean_registry / "runs"
    assert (runs / "garo" / "optimizer.safetensors").is_file()          # the quick start
    assert (runs / "garo-task=mlp" / "optimizer.safetensors").is_file()  # the README's next run
    assert (runs / "sine" / "optimizer.safetensors").is_file()           # the tutorial's
    assert (runs / "garo_general-2proc" / "optimizer.safetensors").is_file()  # torchrun's
    with capsys.disabled():
        print("\n".join(f"{s:7.1f} s  {name}" for name, s in seconds.items()))
