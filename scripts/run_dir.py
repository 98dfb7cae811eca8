"""Run-directory hygiene for ``scripts/meta_train.py``: lock, stale temp files, metrics cut-back,
saved-config reading and graceful interrupts.

* ``lock(out_dir)``: an exclusive ``fcntl.flock`` on the directory itself (no lock file is
  created, so a refused run leaves the directory untouched). A second process training into the
  same ``out_dir`` fails at once with ``RunDirError`` instead of interleaving writes. The lock is
  released by ``release_all()`` or when the process exits (the kernel drops it with the fd).
* ``remove_stale_temp_files``: ``.<name>.*.tmp`` files are what ``metaopt.atomic.atomic_write``
  leaves when a process is killed mid-write; only the lock holder removes them.
* ``cut_metrics``: a resume drops the records logged after its checkpoint, and the final records
  (evaluation table, held-out summary) of the checkpoint's step, which the run writes again when
  it finishes, so re-running a finished run does not duplicate them.
* ``check_resume_agreement``: under torchrun every rank checks the shared state file and its own
  part of it (``scripts/distributed_run.py``); unless every rank can resume the same file (or
  every rank starts afresh) all of them refuse with the same line before anything trains, or
  rank 0 would train on and export while another rank dies.
* ``GracefulStop``: SIGINT/SIGTERM set a flag; the script finishes the running meta-step, saves a
  checkpoint and exits non-zero with one line. A second signal stops at once (the last
  checkpoint stays valid: every write is atomic).
"""
from __future__ import annotations

import fcntl
import os
import re
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaopt.logging import filter_jsonl

__all__ = ["GracefulStop", "Interrupted", "RunDirError", "check_resume_agreement", "cut_metrics",
           "lock", "read_config", "release_all", "remove_stale_temp_files"]

_TEMP = re.compile(r"^\..+\.[^.]+\.tmp$")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
_LOCKS: dict[Path, int] = {}


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (the message names the file)."""


class Interrupted(RuntimeError):
    """Training stopped by a signal after saving a checkpoint (``signum`` says which)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def lock(out_dir: Path) -> None:
    """Hold an exclusive lock on ``out_dir`` (idempotent within this process)."""
    out_dir = Path(out_dir).resolve()
    if out_dir in _LOCKS:
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{out_dir}: another process is training into this out_dir (it holds "
                          "the directory's lock); wait for it or use another out_dir") from None
    except OSError as error:  # a filesystem without flock (some network mounts): go on unlocked
        os.close(fd)
        warnings.warn(f"{out_dir}: cannot lock ({error}); make sure no other process trains "
                      "into it", RuntimeWarning, stacklevel=2)
        return
    _LOCKS[out_dir] = fd


def release_all() -> None:
    for fd in _LOCKS.values():
        os.close(fd)  # closing the fd releases the flock
    _LOCKS.clear()


def remove_stale_temp_files(out_dir: Path) -> list[str]:
    """Delete leftovers of killed atomic writes; returns their names."""
    removed = []
    for path in Path(out_dir).iterdir():
        if path.is_file() and _TEMP.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def read_config(path: Path) -> dict[str, Any]:
    """A run's saved ``config.yaml`` as a plain dict; ``RunDirError`` naming it otherwise."""
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing; the run directory holds a training state but not "
                          "its config, so the resume cannot be checked") from None
    except (OSError, yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as error:
        message = " ".join(str(error).split())
        raise RunDirError(f"{path}: unreadable saved config ({type(error).__name__}: "
                          f"{message})") from None
    if not isinstance(loaded, DictConfig):
        raise RunDirError(f"{path}: the saved config must be a mapping of keys")
    return OmegaConf.to_container(loaded, resolve=True)


def check_resume_agreement(reports: list[dict], file_name: str, out_dir: Path) -> None:
    """Per rank ``{"error": its one-line refusal or None, "digest": SHA-256 of the state file it
    read or None (none there), "step": its meta-step or None}``: every rank must have resumed
    (or found nothing) without error, from the same bytes; ``RunDirError`` in one line
    naming the ranks otherwise (the same on every rank: all of them hold every report)."""
    world = len(reports)
    failed = [(rank, report["error"]) for rank, report in enumerate(reports) if report["error"]]
    if failed:
        rank, error = failed[0]
        also = f" (ranks {[r for r, _ in failed[1:]]} too)" if len(failed) > 1 else ""
        raise RunDirError(f"{out_dir}: rank {rank} of {world} cannot resume{also}: "
                          f"{' '.join(str(error).split())}; no rank trains")
    if len({report["digest"] for report in reports}) <= 1:
        return

    def describe(rank: int, report: dict) -> str:
        if report["digest"] is None:
            return f"rank {rank} has no {file_name}"
        return (f"rank {rank} read one at step {report['step']} "
                f"(sha256 {report['digest'][:12]})")
    described = ", ".join(describe(rank, report) for rank, report in enumerate(reports))
    raise RunDirError(f"{out_dir}: the ranks' training states disagree ({described}); every rank "
                      f"must read the same {file_name}: copy it to every node, or train into a "
                      "new out_dir")


def cut_metrics(path: Path, step: int, is_final: Callable[[dict], bool]) -> None:
    """Keep records with ``step`` < the checkpoint's, and its own step's non-final ones."""
    def keep(record: dict) -> bool:
        record_step = int(record.get("step", 0))
        return record_step < step or (record_step == step and not is_final(record))
    filter_jsonl(path, keep)


class GracefulStop:
    """Context: SIGINT/SIGTERM set ``signum`` (the first one); a second signal raises
    ``Interrupted`` at once. Installed only in the main thread (Python's rule for handlers)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(f"second {signal.Signals(signum).name}: stopped without saving "
                              "(the last checkpoint is intact)", signum)
        self.signum = signum

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
