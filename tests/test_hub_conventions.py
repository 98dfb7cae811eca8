"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` on every learned optimizer and on
checkpoints (the ``PyTorchModelHubMixin`` conventions), never touching the network: uploads go
to a stand-in ``HfApi`` that copies into a local folder, downloads through huggingface_hub's own
cache layout with ``HF_HUB_OFFLINE``."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import metaopt
from metaopt.checkpoint import Checkpoint, load_checkpoint, resolve
from metaopt.hub import CARD_FILE, CONFIG_FILE, MODEL_FILE
from metaopt.optim import GARO, GlobalAdaptiveSGD, HybridGDODE

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants as hf_constants  # noqa: E402

LEARNED = [("garo_quadratics", GARO), ("garo_general", GARO), ("hybrid_general", HybridGDODE)]


def _trajectory(opt, w, steps=5):
    target = torch.linspace(-1, 1, w.numel())

    def closure():
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    return w.detach().clone()


def _fresh():
    return torch.zeros(5, requires_grad=True)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache in tmp_path and HF_HUB_OFFLINE: no network possible."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def _into_cache(cache: Path, repo_id: str, directory: Path) -> None:
    """huggingface_hub's cache layout: models--owner--name/{refs/main, snapshots/<commit>/}."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(directory, repo / "snapshots" / commit)


@pytest.mark.parametrize("name, cls", LEARNED)
def test_save_and_load_pretrained_reproduce_the_optimizer(tmp_path, name, cls):
    w = _fresh()
    opt = metaopt.load_optimizer(name, [w])
    assert isinstance(opt, cls)
    directory = opt.save_pretrained(tmp_path / name)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE,
                                                                  CARD_FILE])
    w2 = _fresh()
    again = cls.from_pretrained(directory, [w2])
    assert type(again) is cls
    assert torch.equal(_trajectory(opt, w), _trajectory(again, w2))  # the same optimizer


def test_alias_class_and_wrong_class_and_no_learned_module(tmp_path):
    opt = metaopt.load_optimizer("garo_quadratics", [_fresh()])
    directory = opt.save_pretrained(tmp_path / "g")
    assert type(GlobalAdaptiveSGD.from_pretrained(directory, [_fresh()])) is GARO
    with pytest.raises(ValueError, match="holds a GARO checkpoint, not HybridGDODE"):
        HybridGDODE.from_pretrained(directory, [_fresh()])
    with pytest.raises(ValueError, match="no learned module"):
        HybridGDODE([_fresh()], policy="heuristic").save_pretrained(tmp_path / "h")


def test_checkpoint_has_the_same_conventions(tmp_path):
    ckpt = load_checkpoint(resolve("garo_quadratics"))
    directory = ckpt.save_pretrained(tmp_path / "ckpt")
    loaded = Checkpoint.from_pretrained(directory)
    for key in ("controller_config", "optimizer_config", "optimizer_class", "training"):
        assert loaded.metadata[key] == ckpt.metadata[key]
    a, b = ckpt.controller.state_dict(), loaded.controller.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _FakeHfApi:
    """Stands in for huggingface_hub.HfApi: a 'remote' folder per repo, calls recorded."""
    remote: Path
    calls: list

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **_):
        type(self).calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, **_):
        type(self).calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, type(self).remote / repo_id, dirs_exist_ok=True)
        return f"commit to {repo_id}"


@pytest.mark.parametrize("name, cls", [LEARNED[0], LEARNED[2]])
def test_push_to_hub_then_load_the_repo_id_from_the_cache(tmp_path, monkeypatch, offline_cache,
                                                          name, cls):
    _FakeHfApi.remote, _FakeHfApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    w = _fresh()
    opt = metaopt.load_optimizer(name, [w])
    assert opt.push_to_hub("someone/my-opt", private=True) == "commit to someone/my-opt"
    assert [c[0] for c in _FakeHfApi.calls] == ["create_repo", "upload_folder"]
    assert _FakeHfApi.calls[0] == ("create_repo", "someone/my-opt", True, True)
    pushed = tmp_path / "remote" / "someone" / "my-opt"
    assert sorted(p.name for p in pushed.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE,
                                                               CARD_FILE])
    _into_cache(offline_cache, "someone/my-opt", pushed)  # as a download would leave it
    w2 = _fresh()
    again = cls.from_pretrained("someone/my-opt", [w2])
    assert torch.equal(_trajectory(opt, w), _trajectory(again, w2))
    assert metaopt.load_optimizer("someone/my-opt", [_fresh()]) is not None  # same path


def test_checkpoint_push_to_hub(tmp_path, monkeypatch):
    _FakeHfApi.remote, _FakeHfApi.calls = tmp_path / "remote", []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    load_checkpoint(resolve("garo_general")).push_to_hub("someone/ckpt")
    assert (tmp_path / "remote" / "someone" / "ckpt" / MODEL_FILE).is_file()


def test_offline_repo_id_not_in_the_cache_is_one_clear_line(offline_cache):
    for load in (lambda: GARO.from_pretrained("someone/missing-opt", [_fresh()]),
                 lambda: metaopt.load_optimizer("someone/missing-opt", [_fresh()]),
                 lambda: metaopt.hub.from_pretrained("someone/missing-opt")):
        with pytest.raises(FileNotFoundError) as error:
            load()
        message = str(error.value)
        assert "\n" not in message and "'someone/missing-opt'" in message
        assert "HF_HUB_OFFLINE" in message
        assert type(error.value).__name__ != "LocalEntryNotFoundError"
