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

**Data-parallel runs** (``world_size`` > 1, a sharded meta-batch: ``metaopt.meta.distributed``)
keep one file, written by rank 0 alone (``gather_training_state``), so the ranks' parts can never
be from different meta-steps. The ranks share the controller, Adam's state, the generator and the
counters (the *shared* part: the file's top level); each owns its runs and its estimator state
(``shards[r] = {"pool", "estimator", "digest"}``, with rank 0's also at the top level, so the file
reads as a complete state). The pool's ownership table (which rank owns which slot of the
meta-batch, and every slot's task seed: ``InnerRunPool.state_dict``) is the same on every rank
and counts as shared. ``digest`` is the SHA-256 of the shared part as rank ``r`` held it
(``shared_digest``): the file is refused unless every shard's digest is that of the top level
(ranks that drifted apart, or a file pieced together from several runs), and saving refuses when
the ranks' digests differ. ``rank_state(state, r)`` is what rank ``r``'s trainer loads.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write

STATE_FORMAT_VERSION = 1
REQUIRED_KEYS = ("step", "resets", "skipped_updates", "controller", "outer_optimizer",
                 "generator", "pool")
_COUNTERS = ("step", "resets", "skipped_updates")

SHARED_KEYS = ("step", "resets", "skipped_updates", "controller", "outer_optimizer", "generator")

__all__ = ["REQUIRED_KEYS", "SHARED_KEYS", "STATE_FORMAT_VERSION", "TrainingStateError",
           "check_training_state", "gather_training_state", "load_training_state", "rank_state",
           "save_training_state", "shared_digest"]


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
    if world > 1:
        _check_shards(state, world, path)
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


def _check_shards(state: Mapping[str, Any], world: int, path: Any) -> None:
    """Every rank's part is present, is that rank's, and was saved at the same shared state."""
    shards = state.get("shards")
    if shards is None:
        raise TrainingStateError(f"{path}: a {world}-process state without 'shards' (written by "
                                 "an older metaopt that kept one state file per rank); resume it "
                                 "with that version or train into a new out_dir")
    if not isinstance(shards, list) or len(shards) != world:
        count = len(shards) if isinstance(shards, list) else type(shards).__name__
        raise TrainingStateError(f"{path}: 'shards' must list the parts of all {world} ranks, "
                                 f"got {count}")
    expected = shared_digest(state)
    for rank, shard in enumerate(shards):
        if not isinstance(shard, Mapping) or not {"pool", "estimator", "digest"} <= set(shard):
            raise TrainingStateError(f"{path}: rank {rank}'s part must hold 'pool', 'estimator' "
                                     "and 'digest'")
        pool = shard["pool"]
        owner = list(pool.get("shard", ())) if isinstance(pool, Mapping) else None
        if owner != [rank, world]:
            whose = f"rank {owner[0]} of {owner[1]}" if owner else "no rank"
            raise TrainingStateError(f"{path}: rank {rank}'s part holds the runs of {whose}")
        if shard["digest"] != expected:
            raise TrainingStateError(
                f"{path}: the ranks' states disagree: rank {rank}'s part was saved with other "
                "controller weights, Adam state, generator, counters or slot owners than rank "
                "0's (a file pieced together from different runs or steps); train into a new "
                "out_dir")


def _digest_update(digest, value: Any) -> None:
    """Feed ``value`` (tensors, numbers, strings, None, lists, tuples, dicts) to ``digest`` in a
    canonical order: dict keys sorted, tensors as dtype, shape and raw bytes."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _digest_update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _digest_update(digest, item)
    else:
        digest.update(repr(value).encode())


def shared_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the part of a training state every rank holds alike (``SHARED_KEYS``,
    and the pool's ownership table where it has one: states saved before it existed keep their
    digest)."""
    digest = hashlib.sha256()
    for key in SHARED_KEYS:
        digest.update(key.encode())
        _digest_update(digest, state.get(key))
    pool = state.get("pool")
    if isinstance(pool, Mapping) and "ownership" in pool:
        digest.update(b"ownership")
        _digest_update(digest, pool["ownership"])
    return digest.hexdigest()


def gather_training_state(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """Under torch.distributed: every rank's trainer ``state`` into one, on rank 0 (None on the
    others; a collective, every rank calls it). ``TrainingStateError`` on every rank, nothing
    gathered, when the ranks' shared parts differ (module docstring)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    part = {"pool": state["pool"], "estimator": state.get("estimator", {}),
            "digest": shared_digest(state)}
    digests: list = [None] * world
    dist.all_gather_object(digests, part["digest"])
    if len(set(digests)) > 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise TrainingStateError(f"the ranks' trainers disagree at meta-step {state['step']} "
                                 f"(ranks {differ} differ from rank 0); the checkpoint was not "
                                 "written")
    parts: list | None = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    if rank != 0:
        return None
    return {**state, "world_size": world, "shards": parts}


def rank_state(state: Mapping[str, Any], rank: int) -> dict[str, Any]:
    """What rank ``rank``'s trainer loads: the shared part with that rank's runs and estimator
    state (the state itself when it is not sharded)."""
    shards = state.get("shards")
    if not shards:
        return dict(state)
    return {**{k: v for k, v in state.items() if k != "shards"},
            "pool": shards[rank]["pool"], "estimator": shards[rank]["estimator"]}


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
