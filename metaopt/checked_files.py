"""Checked reading of small files that arrive from elsewhere (Hub directories' ``config.json``).

``read_json_object(path)`` is the one reader: the path must be a *regular* file (a FIFO would
block the reader, a directory or a device is no config: each is an error, never skipped), at
most ``max_bytes`` long (read in full only after the size is known, so a 200 MB file costs
nothing), UTF-8 JSON whose top level is an object. Deep nesting (``RecursionError`` in the
parser), integers beyond Python's digit limit and malformed text are one-line errors naming the
file, raised as the caller's error class.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["MAX_JSON_BYTES", "read_json_object", "require_regular_file"]

#: config.json of a metaopt checkpoint is a few kB; provenance tables stay far below this
MAX_JSON_BYTES = 1 << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(path: Path, error: type[Exception] = ValueError) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed) of a regular file; ``error`` naming it otherwise."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: is {_kind(info.st_mode)}, expected a regular file")
    return info


def read_json_object(path: Path, max_bytes: int = MAX_JSON_BYTES,
                     error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path`` (see the module doc for what is refused)."""
    path = Path(path)
    info = require_regular_file(path, error)
    if info.st_size > max_bytes:
        raise error(f"{path}: {info.st_size} bytes, more than the {max_bytes} a config may have")
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, open cannot block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{path}: changed into a non-regular file while being read")
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: more than the {max_bytes} bytes a config may have")
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers over the digit limit
        first = " ".join(str(exc).split())[:200]
        raise error(f"{path}: not valid JSON ({first})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: the top level must be a JSON object, got {type(value).__name__}")
    return value
