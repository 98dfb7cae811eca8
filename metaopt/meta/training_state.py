"""The resumable meta-training state file (``state.pt``): versioned, validated, never non-finite.

``MetaTrainer.state_dict()`` is written with ``torch.save`` (atomically) plus
``format_version``; it is read back with ``torch.load(weights_only=True)`` (tensors, numbers,
strings, lists and dicts only: nothing is executed) and checked before anyone acts on it:

* the file must unpickle at all (a truncated or garbage file is an error naming the file);
* ``format_version`` must be one this code reads (files from before versioning, which have no
  such key, have version 1's layout and are read as version 1);
* the trainer's keys must be present, the counters ints ≥ 0 (``skipped_updates ≤ step``),
  the controller's floating tensors finite.

A state whose controller holds a NaN/inf is refused when saving too: a non-finite controller is
never written (the trainer skips such updates, so this only fires on a bug).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write

STATE_FORMAT_VERSION = 1
REQUIRED_KEYS = ("step", "resets", "skipped_updates", "controller", "outer_optimizer",
                 "generator", "pool")
_COUNTERS = ("step", "resets", "skipped_updates")

__all__ = ["REQUIRED_KEYS", "STATE_FORMAT_VERSION", "TrainingStateError", "check_training_state",
           "load_training_state", "save_training_state"]


class TrainingStateError(ValueError):
    """A training-state file that cannot be resumed from (the message names the file)."""


def _non_finite(tensors: Mapping[str, Any]) -> list[str]:
    return sorted(k for k, v in tensors.items() if not isinstance(v, torch.Tensor)
                  or (v.is_floating_point() and not bool(torch.isfinite(v).all())))


def check_training_state(state: Any, path: Any = "<state>") -> dict[str, Any]:
    """Refuse a state that a resume must not act on (see the module doc); returns it."""
    if not isinstance(state, Mapping):
        raise TrainingStateError(f"{path}: not a training state (a {type(state).__name__}, "
                                 "expected a dict)")
    version = state.get("format_version", 1)
    if version != STATE_FORMAT_VERSION:
        raise TrainingStateError(f"{path}: unknown format_version {version!r}; this metaopt reads "
                                 f"training states of version {STATE_FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise TrainingStateError(f"{path}: missing keys {missing} (not a complete training "
                                 "state)")
    for key in _COUNTERS:
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TrainingStateError(f"{path}: {key!r} must be an int >= 0, got {value!r}")
    if state["skipped_updates"] > state["step"]:
        raise TrainingStateError(f"{path}: skipped_updates {state['skipped_updates']} exceeds "
                                 f"step {state['step']}")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise TrainingStateError(f"{path}: 'world_size' must be an int >= 1, got {world!r}")
    controller = state["controller"]
    if not isinstance(controller, Mapping) or not controller:
        raise TrainingStateError(f"{path}: 'controller' must be a non-empty dict of tensors")
    bad = _non_finite(controller)
    if bad:
        raise TrainingStateError(f"{path}: non-finite (or non-tensor) controller entries {bad}")
    if not isinstance(state["generator"], torch.Tensor) or state["generator"].dtype != torch.uint8:
        raise TrainingStateError(f"{path}: 'generator' must be a uint8 tensor (a generator "
                                 "state)")
    return dict(state)


def save_training_state(state: Mapping[str, Any], path, extra: Mapping | None = None) -> None:
    """``torch.save`` to ``path`` atomically: a temp file in the same folder, then ``os.replace``.

    The state is checked first: a non-finite controller is refused, never written."""
    full = {**state, **(extra or {}), "format_version": STATE_FORMAT_VERSION}
    check_training_state(full, path)
    atomic_write(path, lambda f: torch.save(full, f))


def load_training_state(path) -> dict[str, Any]:
    """The saved state, loaded with ``weights_only=True`` and checked (``TrainingStateError``
    naming the file for anything unreadable, of an unknown version, incomplete or non-finite)."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 (zip errors, EOFError, UnpicklingError, OSError…)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TrainingStateError(f"{path}: unreadable training state (truncated or not a "
                                 f"torch.save file: {type(error).__name__}: {first})") from None
    return check_training_state(state, path)
