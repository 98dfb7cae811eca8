"""Resumable training state: versioned, validated on load, never saved non-finite; a non-finite
outer update is undone and counted."""
from __future__ import annotations

import copy

import pytest
import torch

from metaopt.meta.training_state import (
    STATE_FORMAT_VERSION,
    TrainingStateError,
    check_training_state,
    load_training_state,
    save_training_state,
)

from .helpers import quadratic_family
from .test_trainer import _trainer


@pytest.fixture(scope="module")
def trained():
    _, trainer = _trainer(quadratic_family(dtype=torch.float32, dim=(2, 4)))
    trainer.step()
    return trainer


def test_round_trip_carries_the_format_version(trained, tmp_path):
    save_training_state(trained.state_dict(), tmp_path / "state.pt", extra={"world_size": 1})
    state = load_training_state(tmp_path / "state.pt")
    assert state["format_version"] == STATE_FORMAT_VERSION and state["step"] == 1


def test_a_state_without_version_is_read_as_version_1(trained, tmp_path):
    # files written before versioning have version 1's layout
    torch.save(trained.state_dict(), tmp_path / "old.pt")
    assert load_training_state(tmp_path / "old.pt")["step"] == 1


def _corrupt(trained, **changes):
    state = copy.deepcopy(trained.state_dict())
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 2}, "unknown format_version 2"),
    ({"format_version": "1"}, "unknown format_version"),
    ({"pool": KeyError}, "missing keys \\['pool'\\]"),
    ({"controller": KeyError}, "missing keys"),
    ({"step": -3}, "'step' must be an int >= 0"),
    ({"step": 1.5}, "'step' must be an int >= 0"),
    ({"skipped_updates": 5}, "exceeds step"),
    ({"world_size": 0}, "world_size"),
    ({"generator": torch.zeros(3)}, "generator"),
])
def test_bad_states_are_refused_naming_the_file(trained, tmp_path, changes, message):
    path = tmp_path / "state.pt"
    torch.save(_corrupt(trained, **changes), path)
    with pytest.raises(TrainingStateError, match=message) as info:
        load_training_state(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_non_finite_controller_is_refused_on_load_and_never_saved(trained, tmp_path):
    state = _corrupt(trained)
    name = next(iter(state["controller"]))
    state["controller"][name] = state["controller"][name].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(TrainingStateError, match="non-finite"):
        load_training_state(tmp_path / "nan.pt")
    with pytest.raises(TrainingStateError, match="non-finite"):
        save_training_state(state, tmp_path / "fresh.pt")
    assert not (tmp_path / "fresh.pt").exists()


@pytest.mark.parametrize("payload", [b"", b"PK\x03\x04garbage", b"\x80\x04garbage", b"hello"])
def test_unreadable_files_are_one_line_errors_naming_the_file(tmp_path, payload):
    path = tmp_path / "state.pt"
    path.write_bytes(payload)
    with pytest.raises(TrainingStateError, match="unreadable training state") as info:
        load_training_state(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_state_file_is_refused(trained, tmp_path):
    path = tmp_path / "state.pt"
    save_training_state(trained.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingStateError, match=str(path)):
        load_training_state(path)


def test_not_a_dict_is_refused():
    with pytest.raises(TrainingStateError, match="expected a dict"):
        check_training_state([1, 2], "x.pt")


def test_non_finite_outer_update_is_undone_and_counted():
    # Adam with lr = inf turns a finite meta-gradient into ±inf/NaN weights (outer.lr=inf used
    # to train and save such a controller with exit code 0).
    learned, trainer = _trainer(quadratic_family(dtype=torch.float32, dim=(2, 4)))
    trainer.step()
    before = {k: v.detach().clone() for k, v in learned.module.named_parameters()}
    adam = copy.deepcopy(trainer.optimizer.state_dict())
    trainer.optimizer.param_groups[0]["lr"] = float("inf")
    metrics = trainer.step()
    assert metrics["skipped_updates"] == trainer.skipped_updates == 1
    for k, v in learned.module.named_parameters():
        assert torch.equal(v, before[k]), k
    after = trainer.optimizer.state_dict()["state"]
    for index, entry in adam["state"].items():
        for key, value in entry.items():
            assert torch.equal(after[index][key], value), (index, key)


def _two_ranks(state: dict, owners: list[int], tables: list[list[int]] | None = None) -> dict:
    """A 2-process state of a 1-process one: slot ``s``'s run on rank ``owners[s]``; rank r's
    pool saved with the owners ``tables[r]`` (default: ``owners``)."""
    from metaopt.meta.training_state import shared_digest

    runs, seeds = state["pool"]["runs"], [r["task_seed"] for r in state["pool"]["runs"]]
    shards = []
    for rank, table in enumerate(tables or [owners, owners]):
        pool = {"shard": [rank, 2], "num_runs": len(runs),
                "runs": [run for run, o in zip(runs, owners) if o == rank],
                "ownership": {"owners": list(table), "seeds": seeds}}
        shards.append({"pool": pool, "estimator": {},
                       "digest": shared_digest({**state, "pool": pool})})
    return {**state, "world_size": 2, "pool": shards[0]["pool"], "shards": shards}


def test_the_slot_owners_are_part_of_the_shared_digest(trained):
    """A file whose ranks saved different ownership tables is refused like one whose ranks saved
    different weights; a state without a table (saved before it existed) keeps its digest."""
    import hashlib

    from metaopt.meta.training_state import SHARED_KEYS, _digest_update, shared_digest

    state = {**trained.state_dict(), "format_version": STATE_FORMAT_VERSION}
    check_training_state(_two_ranks(state, [1, 0]))
    with pytest.raises(TrainingStateError, match="disagree"):
        check_training_state(_two_ranks(state, [1, 0], tables=[[1, 0], [0, 1]]))
    old = hashlib.sha256()  # the digest as it was computed before the table existed
    for key in SHARED_KEYS:
        old.update(key.encode())
        _digest_update(old, state.get(key))
    assert shared_digest(state) == old.hexdigest()
    assert shared_digest(_two_ranks(state, [1, 0])) != old.hexdigest()
