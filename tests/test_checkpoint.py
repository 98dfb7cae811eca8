"""Self-describing checkpoints: round trip, provenance, atomic writes, and safe refusals."""
from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch

import metaopt
from metaopt.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from metaopt.garo import GAROController
from metaopt.optim import GARO
from tests.garo.helpers import awake_controller, regression
from tests.rules.objectives import closure_over


def trained_like_controller():
    c = awake_controller(torch.float32, hidden_size=16)
    with torch.no_grad():
        c.init_feature_mean.copy_(torch.tensor([1.0, 0.0, -2.0, 0.0, -5.0]))
        c.init_feature_var.copy_(torch.tensor([2.0, 0.5, 3.0, 0.1, 1.5]))
    return c


def train(opt, live, loss_fn, steps=5):
    closure = closure_over(opt, loss_fn, live)
    for _ in range(steps):
        opt.step(closure)


def test_round_trip_rebuilds_the_same_optimizer_from_the_file_alone(tmp_path):
    c = trained_like_controller()
    params, loss_fn = regression(torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    original = GARO(live, controller=c, direction="adam", granularity="tensor")
    path = save_checkpoint(tmp_path / "garo.safetensors", c, original.config,
                           training={"meta_steps": 123, "tasks": ["quadratic"]})
    train(original, live, loss_fn)

    twin = [p.clone().requires_grad_() for p in params]
    rebuilt = metaopt.load_optimizer(path, twin)
    assert rebuilt.config == original.config
    train(rebuilt, twin, loss_fn)
    for a, b in zip(live, twin):
        assert torch.equal(a, b)

    ckpt = load_checkpoint(path)
    assert ckpt.training == {"meta_steps": 123, "tasks": ["quadratic"]}
    assert torch.equal(ckpt.controller.init_feature_var, c.init_feature_var)
    meta = ckpt.metadata
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert meta["metaopt_version"] == metaopt.__version__
    assert json.loads(meta["controller_config"])["hidden_size"] == 16
    assert meta["created_at"].endswith("+00:00")
    assert "git_commit" in meta


def test_overrides_replace_stored_options(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", GAROController(), {"direction": "adam"})
    opt = metaopt.load_optimizer(path, [torch.zeros(2, requires_grad=True)], direction="sgd",
                                 lr=0.5)
    assert opt.rule.direction == "sgd" and opt.param_groups[0]["lr"] == 0.5


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, GAROController(init_lr=0.1))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, GAROController(init_lr=0.2))
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_list_pretrained_and_unknown_name():
    assert isinstance(metaopt.list_pretrained(), list)
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        metaopt.load_optimizer("no-such-optimizer", [torch.zeros(1, requires_grad=True)])


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")


class _Exploit:
    def __reduce__(self):
        return (open, (str(_Exploit.marker), "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_executing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"controller": _Exploit()}, protocol=protocol))
    # control: unpickling this file really would run code
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_torch_save_archive_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save(GAROController().state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_truncated_and_garbage_files_are_refused(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", GAROController()).read_bytes()
    cases = {"truncated_body": good[: len(good) - 100], "truncated_header": good[:40],
             "tiny": good[:5], "garbage": bytes(range(256)) * 4, "empty": b""}
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def _rewrite_metadata(src, dst, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), "pt") as f:
        meta = {**f.metadata(), **changes}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_unknown_format_version_and_foreign_files_are_refused(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", GAROController())
    future = _rewrite_metadata(good, tmp_path / "v99.safetensors", format_version="99")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(future)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a metaopt"):
        load_checkpoint(foreign)
    bad_config = _rewrite_metadata(good, tmp_path / "cfg.safetensors",
                                   controller_config=json.dumps({"hidden_size": 7}))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(bad_config)
    header_len = struct.unpack("<Q", good.read_bytes()[:8])[0]
    assert header_len > 0


def test_config_asking_for_a_huge_network_is_refused_before_allocating_it(tmp_path):
    import resource
    import time
    good = save_checkpoint(tmp_path / "good.safetensors", GAROController())
    huge = _rewrite_metadata(good, tmp_path / "huge.safetensors",
                             controller_config=json.dumps({"hidden_size": 20_000}))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_checkpoint(huge)
    assert time.perf_counter() - start < 5.0  # building it for real takes ~40 s and ~5 GB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 500_000  # KiB


def test_non_finite_weights_and_unknown_optimizer_options_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    good = save_checkpoint(tmp_path / "good.safetensors", GAROController())
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["head_lr.bias"] = torch.full_like(tensors["head_lr.bias"], float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(tmp_path / "nan.safetensors")
    foreign_option = _rewrite_metadata(good, tmp_path / "opt.safetensors",
                                       optimizer_config=json.dumps({"foo": 1}))
    with pytest.raises(CheckpointError, match="foo"):
        load_checkpoint(foreign_option)
    bad_value = _rewrite_metadata(good, tmp_path / "beta.safetensors",
                                  optimizer_config=json.dumps({"beta2": None}))
    with pytest.raises(CheckpointError, match="beta2"):
        metaopt.load_optimizer(bad_value, [torch.zeros(2, requires_grad=True)])
