"""Atomic writes keep the old file on failure and give new files ordinary permissions."""
from __future__ import annotations

import stat

import pytest

from metaopt.atomic import atomic_write


def test_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def half_then_crash(f):
        f.write(b"new, but only ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_new_file_gets_the_permissions_of_a_plain_open_not_mkstemps_0600(tmp_path):
    path = atomic_write(tmp_path / "sub" / "ckpt.safetensors", lambda f: f.write(b"x"))
    with open(tmp_path / "plain", "wb") as f:
        f.write(b"x")
    assert path.read_bytes() == b"x"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) != 0o600


def test_folder_is_fsynced_after_the_replace(tmp_path, monkeypatch):
    # POSIX makes a rename durable only once its directory is synced.
    import os

    import metaopt.atomic as atomic
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[-1][1] == os.path.realpath(tmp_path)
