"""scripts/meta_train.py under attack: bad values, bad files, failed resumes, interrupts,
hygiene. Every refusal is one line naming its key or file and leaves the run directory as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from .test_meta_train import ROOT, TINY, _load_script, _run

CONFIG = str(ROOT / "configs" / "garo_quadratic.yaml")


@pytest.fixture(scope="module")
def script():
    return _load_script()


def snapshot(folder):
    """Every file under ``folder`` with its bytes and mtime (equal snapshots: untouched)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def finished(script, tmp_path_factory):
    """A finished 2-step run to attack (copied per test)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _run(script, out, "steps=2")
    return out


def _copy(finished, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


# ------------------------------------------------------------------------------ item 1, 3, 4
@pytest.mark.parametrize("override, key", [
    ("outer.lr=inf", "outer.lr"),
    ("controller.init_lr=inf", "controller.init_lr"),
    ("estimator.sigma=inf", "estimator.sigma"),
    ("meta_loss.divergence_threshold=inf", "meta_loss.divergence_threshold"),
    ("outer.clip_norm=nan", "outer.clip_norm"),
    ("evaluation.target=-1", "evaluation.target"),
    ("evaluation.target=1.5", "evaluation.target"),
    ("evaluation.tuning_lrs=[]", "evaluation.tuning_lrs"),
    ("evaluation.tuning_lrs=[-1.0]", "evaluation.tuning_lrs[0]"),
    ("evaluation.tuning_lrs=[0.1,nan]", "evaluation.tuning_lrs[1]"),
    ("device=banana", "device"),
    ("controller.hidden_size=1e7", "controller.hidden_size"),
    ("controller.hidden_size=100000", "controller.hidden_size"),
    ("seed=1e20", "seed"),
    ("seed=-5", "seed"),
    ("task.kwargs.dim=.inf", "task.kwargs.dim"),
])
def test_bad_values_are_refused_before_any_work(script, tmp_path, override, key):
    with pytest.raises(script.ConfigError) as info:
        _run(script, tmp_path / "run", override)
    message = str(info.value)
    assert f"'{key}'" in message and "\n" not in message, message
    assert not (tmp_path / "run").exists()


def test_out_dir_pointing_at_a_file(script, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(script.ConfigError, match="'out_dir'"):
        _run(script, target)
    assert target.read_text() == "keep"


@pytest.mark.parametrize("text, message", [
    ("- 1\n- 2\n", "top level must be a mapping"),
    ("steps: 3\nsteps: 4\n", "duplicate key steps"),
    ("steps: !!python/object/apply:os.system ['echo pwned']\n", "python/object/apply"),
    ("steps: [1, 2\n", "not valid YAML"),
])
def test_bad_yaml_files_are_one_line_errors_naming_the_file(script, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(script.ConfigError, match=message) as info:
        script.main(["--config", str(path), f"out_dir={tmp_path / 'run'}"])
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_world_size_must_be_an_integer(script, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(script.ConfigError, match="WORLD_SIZE='abc'"):
        _run(script, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- item 2
def _state(run):
    return torch.load(run / "state.pt", weights_only=True)


def _nan_controller(state):
    name = next(iter(state["controller"]))
    state["controller"][name] = torch.full_like(state["controller"][name], float("nan"))
    return state


STATE_ATTACKS = {
    "missing_keys": (lambda s: {k: v for k, v in s.items() if k != "pool"}, "missing keys"),
    "nan_controller": (_nan_controller, "non-finite"),
    "negative_step": (lambda s: {**s, "step": -1}, "'step' must be an int >= 0"),
    "future_version": (lambda s: {**s, "format_version": 99}, "unknown format_version 99"),
}


@pytest.mark.parametrize("attack", sorted(STATE_ATTACKS))
def test_a_bad_state_is_refused_and_the_run_directory_untouched(script, finished, tmp_path,
                                                                 attack):
    run = _copy(finished, tmp_path)
    change, message = STATE_ATTACKS[attack]
    torch.save(change(_state(run)), run / "state.pt")
    before = snapshot(run)
    with pytest.raises(script.TrainingStateError, match=message) as info:
        _run(script, run, "steps=4")
    assert str(run / "state.pt") in str(info.value) and "\n" not in str(info.value)
    assert snapshot(run) == before  # metrics.jsonl not truncated, config.yaml not rewritten


@pytest.mark.parametrize("payload", ["truncated", "garbage", "empty"])
def test_unreadable_state_file(script, finished, tmp_path, payload):
    run = _copy(finished, tmp_path)
    data = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x00" * 64,
                                    "empty": b""}[payload])
    before = snapshot(run)
    with pytest.raises(script.TrainingStateError, match="unreadable training state") as info:
        _run(script, run, "steps=4")
    assert "\n" not in str(info.value)
    assert snapshot(run) == before


@pytest.mark.parametrize("config, message", [
    (None, "missing"),
    ("{{{: ]\n", "unreadable saved config"),
    ("steps: !!python/object/apply:os.system ['echo pwned']\n", "unreadable saved config"),
    ("- 1\n", "must be a mapping"),
])
def test_bad_saved_config_on_resume(script, finished, tmp_path, config, message):
    run = _copy(finished, tmp_path)
    if config is None:
        (run / "config.yaml").unlink()
    else:
        (run / "config.yaml").write_text(config)
    before = snapshot(run)
    with pytest.raises(script.run_dir.RunDirError, match=message) as info:
        _run(script, run, "steps=4")
    assert str(run / "config.yaml") in str(info.value) and "\n" not in str(info.value)
    assert snapshot(run) == before


def test_check_flag_validates_a_resume_and_writes_nothing(script, finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = snapshot(run)
    result = script.main(["--config", CONFIG, f"out_dir={run}", *TINY, "steps=4", "--check"])
    assert result["state"]["step"] == 2
    assert snapshot(run) == before


# ----------------------------------------------------------------------------------- item 6
def _records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_rerun_of_a_finished_run_keeps_one_set_of_final_records_and_drops_temp_files(
        script, finished, tmp_path):
    run = _copy(finished, tmp_path)
    stale = run / ".state.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a state")
    steps_before = [r for r in _records(run) if "meta_loss" in r]
    _run(script, run, "steps=2")
    records = _records(run)
    assert sum("held_out_meta_loss_trained" in r for r in records) == 1
    assert len([r for r in records if "image" in r]) == \
        len([r for r in _records(finished) if "image" in r])
    assert [r for r in records if "meta_loss" in r] == steps_before
    assert not stale.exists()


def test_second_process_on_the_same_out_dir_fails_clearly(script, finished, tmp_path):
    run = _copy(finished, tmp_path)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        with pytest.raises(script.run_dir.RunDirError, match="another process"):
            _run(script, run, "steps=4")
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------------- item 5
def test_run_whose_updates_are_all_skipped_does_not_export(script, tmp_path):
    # every inner run "diverges" at once (normalised loss > 1e-9), so no meta-update is applied
    with pytest.raises(script.TrainingFailed, match="all 2 meta-updates were skipped"):
        _run(script, tmp_path, "steps=2", "meta_loss.divergence_threshold=1e-9")
    assert (tmp_path / "state.pt").exists() and not (tmp_path / "optimizer.safetensors").exists()


def _fork(target, log):
    """Run ``target()`` in a forked child (no interpreter start-up: the script is loaded);
    its stderr goes to ``log``; returns the pid. ``os._exit`` keeps pytest out of the child."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 99
        try:
            sys.stderr = open(log, "w")  # noqa: SIM115
            code = target()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def _exit_code(pid, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child did not finish")


def _argv(out_dir, *extra):
    return ["--config", CONFIG, f"out_dir={out_dir}", *TINY, *extra]


def _wait_for_steps(out_dir, count, pid, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out_dir / "metrics.jsonl"
        if path.exists() and sum('"meta_loss"' in x for x in path.read_text().splitlines()) \
                >= count:
            return
        assert os.waitpid(pid, os.WNOHANG)[0] == 0, "training ended early"
        time.sleep(0.05)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_non_zero_with_one_line(script, tmp_path, sig):
    log = tmp_path / "stderr.txt"
    run = tmp_path / "run"
    pid = _fork(lambda: script.cli(_argv(run, "steps=100000", "checkpoint_every=100000")), log)
    _wait_for_steps(run, 2, pid)
    os.kill(pid, sig)
    assert _exit_code(pid) == 128 + sig
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {sig.name}"), lines
    state = torch.load(run / "state.pt", weights_only=True)
    logged = [r["step"] for r in _records(run) if "meta_loss" in r]
    assert state["step"] == logged[-1] >= 2  # nothing trained is lost
    assert not (run / "optimizer.safetensors").exists()


def test_cli_exit_codes(script, finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "state.pt").write_bytes(b"garbage")
    cases = [(_argv(run, "steps=2"), 2, "state.pt"),
             (_argv(tmp_path / "skip", "steps=2", "meta_loss.divergence_threshold=1e-9"), 3,
              "meta-updates were skipped"),
             (_argv(tmp_path / "x", "outer.lr=inf"), 2, "outer.lr")]
    for argv, code, text in cases:
        log = tmp_path / "stderr.txt"
        assert _exit_code(_fork(lambda argv=argv: script.cli(argv), log)) == code
        lines = [x for x in log.read_text().splitlines() if x.strip()]
        assert len(lines) == 1 and text in lines[0], lines


# ------------------------------------------------------------------------- crash consistency
def _kill_at_state_write(script, argv, mode, nth):
    """Child: SIGKILL itself during the ``nth`` write of state.pt (``mode`` says where)."""
    from metaopt import atomic
    real_fsync, real_replace = os.fsync, os.replace
    writes = {"count": 0}

    def is_state(path):
        return os.path.basename(str(path)).startswith((".state.pt.", "state.pt"))

    def fsync(fd):
        name = os.path.realpath(f"/proc/self/fd/{fd}")
        if is_state(name) and name.endswith(".tmp"):
            writes["count"] += 1
            if writes["count"] == nth and mode == "torn":  # half the bytes on disk
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(fd)

    def replace(src, dst):
        if is_state(dst) and writes["count"] == nth and mode == "before_replace":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if is_state(dst) and writes["count"] == nth and mode == "after_replace":
            os.kill(os.getpid(), signal.SIGKILL)
    atomic.os.fsync, atomic.os.replace = fsync, replace  # (the child's own os module)
    return script.cli(argv)


@pytest.fixture(scope="module")
def uninterrupted(script, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    _run(script, out, "steps=5", "checkpoint_every=1")
    return out


@pytest.mark.parametrize("mode", ["torn", pytest.param("before_replace", marks=pytest.mark.slow),
                                  pytest.param("after_replace", marks=pytest.mark.slow)])
def test_killed_at_a_checkpoint_write_then_resumed_is_bit_identical(script, uninterrupted,
                                                                     tmp_path, mode):
    run = tmp_path / "run"
    argv = _argv(run, "steps=5", "checkpoint_every=1")
    pid = _fork(lambda: _kill_at_state_write(script, argv, mode, nth=3), tmp_path / "err.txt")
    assert _exit_code(pid) == -signal.SIGKILL
    temps = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert bool(temps) == (mode != "after_replace")  # a killed write leaves its temp file
    assert _state(run)["step"] == (3 if mode == "after_replace" else 2)
    _run(script, run, "steps=5", "checkpoint_every=1")  # the same command resumes
    a, b = _state(uninterrupted), _state(run)
    assert a["step"] == b["step"] == 5 and a["skipped_updates"] == b["skipped_updates"]
    for name, value in a["controller"].items():
        assert torch.equal(value, b["controller"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    for key, value in a["outer_optimizer"]["state"].items():
        for field, tensor in value.items():
            assert torch.equal(tensor, b["outer_optimizer"]["state"][key][field]), (key, field)
    for run_a, run_b in zip(a["pool"]["runs"], b["pool"]["runs"]):
        assert all(torch.equal(x, y) for x, y in zip(run_a["params"], run_b["params"]))
    def portable(records):  # file paths name each run's own folder
        return [{k: v for k, v in r.items() if k != "path"} for r in records]
    assert portable(_records(uninterrupted)) == portable(_records(run))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
