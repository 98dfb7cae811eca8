"""metaopt.hub: Hub-style directories convert the shipped checkpoints losslessly (byte-identical
file, bit-identical tensors and steps); never the network (a fake snapshot_download stands in)."""
from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

import metaopt
from metaopt.checkpoint import CheckpointError, load_checkpoint, resolve
from metaopt.hub import CARD_FILE, CONFIG_FILE, MODEL_FILE, from_pretrained, save_pretrained

SHIPPED = metaopt.list_pretrained()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _steps(opt, params, steps=6):
    g = torch.Generator().manual_seed(0)
    target = torch.randn(params[0].shape, generator=g)
    def closure():  # with a closure: every learned optimizer class takes one
        opt.zero_grad()
        loss = ((params[0] - target) ** 2).sum()
        loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    return params[0].detach().clone()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_round_trip_is_bit_exact(tmp_path, name):
    directory = save_pretrained(name, tmp_path / name)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE,
                                                                  CARD_FILE])
    assert _sha(directory / MODEL_FILE) == _sha(resolve(name))  # the same bytes
    original, loaded = load_checkpoint(resolve(name)), from_pretrained(directory)
    assert loaded.metadata == original.metadata and loaded.training == original.training
    a, b = original.controller.state_dict(), loaded.controller.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and back: the directory's file written as a plain checkpoint is the original file again
    back = save_pretrained(directory, tmp_path / "again")
    assert _sha(back / MODEL_FILE) == _sha(resolve(name))
    p1 = [torch.zeros(7, requires_grad=True)]
    p2 = [torch.zeros(7, requires_grad=True)]
    assert torch.equal(_steps(metaopt.load_optimizer(name, p1), p1),
                       _steps(metaopt.load_optimizer(directory, p2), p2))


def test_config_json_mirrors_metadata_and_card_reports_provenance(tmp_path):
    name = SHIPPED[0]
    directory = save_pretrained(name, tmp_path / "card")
    config = json.loads((directory / CONFIG_FILE).read_text())
    meta = load_checkpoint(resolve(name)).metadata
    assert config["controller_config"] == json.loads(meta["controller_config"])
    assert config["training"] == json.loads(meta["training"])
    assert config["optimizer_class"] == meta.get("optimizer_class", "GARO")
    card = (directory / CARD_FILE).read_text()
    for heading in ("## Training mixture", "## Compute", "## Measured", "## Usage"):
        assert heading in card
    training = json.loads(meta["training"])
    assert str(training["steps"]) in card
    assert f"{training['held_out_meta_loss']['trained']:.4g}" in card
    assert card.startswith("---\nlibrary_name: metaopt")


def test_save_pretrained_from_an_optimizer(tmp_path):
    opt = metaopt.optim.GARO([torch.zeros(3, requires_grad=True)], direction="adam")
    training = {"task": "mixture", "steps": 3, "seconds": 1.5, "hardware": "cpu, 2 threads",
                "task_kwargs": {"components": {"quadratic": {"dim": [2, 3]}, "mlp": None}}}
    directory = save_pretrained(opt, tmp_path / "mine", training=training)
    loaded = from_pretrained(directory)
    a, b = opt.controller.state_dict(), loaded.controller.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.optimizer_config["direction"] == "adam" and loaded.training == training
    card = (directory / CARD_FILE).read_text()
    assert metaopt.checkpoint.describe_checkpoint(directory) in card
    mixture = card.split("## Training mixture")[1].split("## Compute")[0]
    assert '| `quadratic` | `{"dim": [2, 3]}` |' in mixture and "| `mlp` | `{}` |" in mixture
    assert "| wall-clock seconds | 1.5 |" in card and "| hardware | cpu, 2 threads |" in card


def test_tampered_config_and_missing_model_are_refused(tmp_path):
    directory = save_pretrained(SHIPPED[0], tmp_path / "t")
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["controller_config"]["hidden_size"] += 1
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="disagrees.*controller_config"):
        metaopt.load_optimizer(directory, [torch.zeros(2, requires_grad=True)])
    (directory / MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_pretrained(directory)
    with pytest.raises(TypeError, match="source"):
        save_pretrained(3.0, tmp_path / "x")


def test_repo_id_without_huggingface_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails, as if not installed
    with pytest.raises(ImportError, match=r"metaopt\[hub\]"):
        from_pretrained("someone/some-optimizer")
    monkeypatch.setattr("metaopt.checkpoint_names._hub_available", lambda: False)
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        metaopt.load_optimizer("someone/some-optimizer", [torch.zeros(1, requires_grad=True)])


def test_repo_id_is_downloaded_with_snapshot_download(tmp_path, monkeypatch):
    """The Hub path, offline: a stand-in snapshot_download serves a local directory."""
    hub = pytest.importorskip("huggingface_hub")
    local = save_pretrained(SHIPPED[0], tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(local)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    ckpt = from_pretrained("owner/garo-test", revision="v1")
    assert calls[0][:2] == ("owner/garo-test", "v1") and MODEL_FILE in calls[0][2]
    p = [torch.zeros(2, requires_grad=True)]
    assert isinstance(metaopt.load_optimizer("owner/garo-test", p), metaopt.optim.GARO)
    assert torch.equal(ckpt.controller.state_dict()["init_feature_mean"],
                       load_checkpoint(resolve(SHIPPED[0])).controller.state_dict()[
                           "init_feature_mean"])


def test_file_like_names_are_never_repo_ids():
    from metaopt.hub import is_repo_id
    assert is_repo_id("owner/name") and is_repo_id("org/Qwen2.5-x")
    assert not is_repo_id("runs/optimizer.safetensors") and not is_repo_id("a/b/c")
