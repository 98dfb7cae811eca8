"""Optimizers of the ``pytorch_optimizer`` library by name (the ``third_party`` extra).

``pytorch_optimizer`` (Kim, "pytorch_optimizer: optimizer & lr scheduler collections in
PyTorch") registers some 130 optimizers under lower-case names behind one
``load_optimizer(name)``: Lion, LAMB, Adan, Prodigy, schedule-free AdamW (``schedulefreeadamw``)
and more. ``metaopt.create_optimizer`` asks this module only after torch.optim, metaopt's own
optimizers and the shipped checkpoints, so those names always win; names are compared the same
way (case-insensitive, ``_`` and ``-`` ignored: ``"schedule_free_adamw"`` works). Without the
library installed every lookup misses and ``names()`` is empty. The library is imported on the
first miss of the metaopt registry only (importing it takes seconds).
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any

__all__ = ["available", "lookup", "names"]

KIND = "pytorch_optimizer"


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def available() -> bool:
    """Whether ``pytorch_optimizer`` is installed (``pip install "metaopt[third_party]"``)."""
    return importlib.util.find_spec("pytorch_optimizer") is not None


@functools.lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """Every optimizer name ``pytorch_optimizer`` supports (empty without the library)."""
    if not available():
        return ()
    import pytorch_optimizer
    return tuple(sorted(pytorch_optimizer.get_supported_optimizers()))


def lookup(name: str) -> tuple[str, str, Any] | None:
    """``(display name, "pytorch_optimizer", class)`` for a ``pytorch_optimizer`` name, or None."""
    by_key = {_key(n): n for n in names()}
    found = by_key.get(_key(name))
    if found is None:
        return None
    import pytorch_optimizer
    return found, KIND, pytorch_optimizer.load_optimizer(found)
