"""Averaging a run's snapshots (weight averaging of the controller) and its selection candidate."""
from __future__ import annotations

import csv

import pytest
import torch

from metaopt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metaopt.garo import GAROController
from metaopt.meta.averaging import average_snapshots, snapshot_step
from scripts import select_checkpoint

OPTIONS = {"direction": "adam", "scale": "prodigy"}


def _snapshot(path, seed, **kwargs):
    controller = GAROController(hidden_size=4, features="relative", lr_schedule="cosine",
                                generator=torch.Generator().manual_seed(seed), **kwargs)
    return save_checkpoint(path, controller, OPTIONS, {"seed": seed})


def test_the_average_is_the_mean_of_the_weights(tmp_path):
    paths = [_snapshot(tmp_path / f"step_{100 * k:06d}.safetensors", k) for k in (1, 2, 3)]
    out = average_snapshots(paths, tmp_path / "mean.safetensors")
    mean = load_checkpoint(out)
    states = [load_checkpoint(p).controller.state_dict() for p in paths]
    for name, value in mean.controller.state_dict().items():
        expected = sum(s[name].double() for s in states) / 3  # float64 oracle
        torch.testing.assert_close(value, expected.float(), rtol=0, atol=1e-7)
    assert any(not torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert mean.optimizer_config == OPTIONS
    assert mean.training["averaged_snapshots"] == [p.name for p in paths]
    assert [snapshot_step(p) for p in paths] == [100, 200, 300]
    assert snapshot_step(out) is None


def test_snapshots_of_different_controllers_are_refused(tmp_path):
    a = _snapshot(tmp_path / "a.safetensors", 0)
    b = _snapshot(tmp_path / "b.safetensors", 1, init_lr=0.3)
    with pytest.raises(CheckpointError, match="controller_config"):
        average_snapshots([a, b], tmp_path / "mean.safetensors")
    assert not (tmp_path / "mean.safetensors").exists()
    with pytest.raises(ValueError, match="no snapshots"):
        average_snapshots([], tmp_path / "mean.safetensors")


def test_selection_scores_the_average_beside_the_snapshots(tmp_path):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    for k in (0, 1, 2):
        _snapshot(run / "snapshots" / f"step_{100 * k:06d}.safetensors", k)
    config = tmp_path / "select.yaml"
    config.write_text("seeds: 1\ntasks:\n  - {label: quad, family: quadratic, steps: 15, "
                      "kwargs: {dim: [3, 3]}}\n")
    assert select_checkpoint.main([str(run), "--config", str(config),
                                   "--average-from", "100"]) == 0
    rows = list(csv.DictReader(open(run / "selection.csv")))
    assert [r["snapshot"] for r in rows] == ["step_000000", "step_000100", "step_000200",
                                             "average_from_000100"]
    averaged = load_checkpoint(run / "average_from_000100.safetensors")
    assert averaged.training["averaged_snapshots"] == ["step_000100.safetensors",
                                                       "step_000200.safetensors"]
    assert (run / "selected.safetensors").exists()
