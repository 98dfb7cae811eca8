"""Atomic file writes: readers see the old file or the whole new one, never a part.

The payload goes to a temporary file in the target's folder (same filesystem, so the final
``os.replace`` is atomic), is flushed and fsync'ed, gets the permissions a plain ``open`` would
have given (``mkstemp`` creates 0600), and then replaces the target. The folder is fsync'ed after
the replace, so the new directory entry itself survives a power loss (POSIX makes the rename
durable only then). A process killed mid-write leaves a ``.<name>.<random>.tmp`` file behind;
``scripts/run_dir.py`` removes those when a run starts.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PathLike = str | os.PathLike


def _read_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads; read it once,
    # at import, and prefer the kernel's report where there is one.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_DEFAULT_MODE = 0o666 & ~_read_umask()


def fsync_directory(folder: PathLike) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be
    opened or synced (Windows, some network filesystems)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _DEFAULT_MODE)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
