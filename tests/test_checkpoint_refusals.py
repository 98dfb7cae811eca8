"""Checkpoints with out-of-range GARO options or buffers are refused naming the file; a
non-finite controller is never written."""
from __future__ import annotations

import json
import math

import pytest
import torch

import metaopt
from metaopt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metaopt.garo import GAROController

from .test_checkpoint import _rewrite_metadata


@pytest.fixture
def good(tmp_path):
    return save_checkpoint(tmp_path / "good.safetensors", GAROController(),
                           optimizer_config={"direction": "sgd", "granularity": "global"})


@pytest.mark.parametrize("options, key", [
    ({"eps": math.inf}, "eps"), ({"eps": 0.0}, "eps"), ({"eps": math.nan}, "eps"),
    ({"lr": 1e308}, "lr"), ({"lr": -1.0}, "lr"), ({"lr": "fast"}, "lr"),
    ({"weight_decay": math.inf}, "weight_decay"), ({"beta2": 1.0}, "beta2"),
    ({"beta2": True}, "beta2"),
])
def test_out_of_range_options_are_refused_naming_file_and_key(good, tmp_path, options, key):
    bad = _rewrite_metadata(good, tmp_path / "bad.safetensors",
                            optimizer_config=json.dumps(options))
    for load in (load_checkpoint,
                 lambda p: metaopt.load_optimizer(p, [torch.zeros(2, requires_grad=True)])):
        with pytest.raises(CheckpointError, match=key) as info:
            load(bad)
        assert str(bad) in str(info.value)


def test_lr_1e308_no_longer_reaches_a_step(good, tmp_path):
    # it was accepted and produced inf parameters (or a crash) at the first step
    bad = _rewrite_metadata(good, tmp_path / "big.safetensors",
                            optimizer_config=json.dumps({"lr": 1e308}))
    with pytest.raises(CheckpointError, match="big.safetensors"):
        metaopt.load_optimizer(bad, [torch.zeros(2, requires_grad=True)])


def test_negative_feature_variance_is_refused(good, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["init_feature_var"] = -tensors["init_feature_var"]
    path = tmp_path / "negvar.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="negative variances.*init_feature_var") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_non_finite_controller_is_never_written(tmp_path):
    controller = GAROController()
    with torch.no_grad():
        next(controller.parameters()).fill_(math.inf)
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "x.safetensors", controller)
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_options_are_never_written(tmp_path):
    with pytest.raises(CheckpointError, match="eps"):
        save_checkpoint(tmp_path / "x.safetensors", GAROController(),
                        optimizer_config={"eps": math.inf})
    assert list(tmp_path.iterdir()) == []
