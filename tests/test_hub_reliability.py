"""Hostile Hub directories and ambiguous names: every case ends in one line naming the file or
the argument, nothing is skipped, nothing reaches the network, nothing is written."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import metaopt
from metaopt import cli
from metaopt.checkpoint import CheckpointError, _pretrained_dir, load_checkpoint, resolve
from metaopt.hub import CONFIG_FILE, MODEL_FILE, checkpoint_file, from_pretrained, save_pretrained

SHIPPED = metaopt.list_pretrained()


def tree(folder):
    """Every file's bytes (refused reads must write nothing either)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture
def hub_dir(tmp_path):
    return save_pretrained(SHIPPED[0], tmp_path / "hub")


HOSTILE = {
    "list": b"[1, 2]",
    "number": b"3",
    "string": b'"garo"',
    "deep": b"[" * 200_000 + b"]" * 200_000,
    "huge_int": b'{"format_version": ' + b"9" * 5000 + b"}",
    "not_json": b"{nope",
    "not_utf8": b'{"a": "\xff\xfe"}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_config_json_is_one_line_naming_the_file(hub_dir, kind):
    (hub_dir / CONFIG_FILE).write_bytes(HOSTILE[kind])
    before = tree(hub_dir)
    with pytest.raises(CheckpointError) as error:
        from_pretrained(hub_dir)
    message = str(error.value)
    assert "\n" not in message and str(hub_dir / CONFIG_FILE) in message
    assert tree(hub_dir) == before


def test_an_oversized_config_json_is_refused_before_it_is_read(hub_dir):
    with open(hub_dir / CONFIG_FILE, "wb") as f:  # sparse: 200 MB that cost no disk
        f.truncate(200 * 1024 * 1024)
    with pytest.raises(CheckpointError, match="bytes") as error:
        checkpoint_file(hub_dir)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_config_json_that_is_not_a_regular_file_is_an_error_not_skipped(hub_dir, kind):
    config = hub_dir / CONFIG_FILE
    config.unlink()
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "directory":
        config.mkdir()
    else:
        config.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="regular file") as error:
        metaopt.load_optimizer(hub_dir, [torch.zeros(2, requires_grad=True)])
    assert "\n" not in str(error.value) and str(config) in str(error.value)


def test_a_model_file_that_is_a_fifo_is_an_error(hub_dir):
    (hub_dir / MODEL_FILE).unlink()
    os.mkfifo(hub_dir / MODEL_FILE)
    with pytest.raises(CheckpointError, match="FIFO"):
        checkpoint_file(hub_dir)
    with pytest.raises(CheckpointError, match="FIFO"):
        load_checkpoint(hub_dir / MODEL_FILE)


def test_metaopt_evaluate_reports_a_hostile_directory_in_one_line(hub_dir, tmp_path, capsys):
    (hub_dir / CONFIG_FILE).write_bytes(HOSTILE["deep"])
    out_dir = tmp_path / "out"
    repo = Path(__file__).resolve().parents[1]
    code = cli.main(["evaluate", "--config", str(repo / "configs" / "eval_baselines.yaml"),
                     f"out_dir={out_dir}", f"optimizers=[{{name: '{hub_dir}'}}]",
                     "tasks=[{name: quadratic, kwargs: {dim: [2, 3]}}]", "steps=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(hub_dir / CONFIG_FILE) in err, err
    assert not out_dir.exists()


# --------------------------------------------------------------------------- name resolution
def test_a_local_folder_named_like_a_shipped_checkpoint_does_not_replace_it(tmp_path,
                                                                             monkeypatch):
    name, other = SHIPPED[0], SHIPPED[1]
    monkeypatch.chdir(tmp_path)
    save_pretrained(other, tmp_path / name)  # a different checkpoint under the shipped name
    shipped = _pretrained_dir() / f"{name}.safetensors"
    assert resolve(name) == shipped
    opt = metaopt.load_optimizer(name, [torch.zeros(2, requires_grad=True)])
    expected = load_checkpoint(shipped).controller.state_dict()
    for key, value in opt.controller.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # written as a path, the local folder is what is loaded
    assert resolve(f"./{name}") == tmp_path / name / MODEL_FILE or \
        resolve(f"./{name}").resolve() == (tmp_path / name / MODEL_FILE).resolve()


def test_a_local_file_named_like_a_shipped_checkpoint_does_not_replace_it(tmp_path, monkeypatch):
    name = SHIPPED[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"not a checkpoint")
    assert resolve(name) == _pretrained_dir() / f"{name}.safetensors"
    with pytest.raises(CheckpointError):
        load_checkpoint(resolve(f"./{name}"))


@pytest.mark.parametrize("typo", ["runs/garo_typo", "./garo_typo", "runs/sub/garo_typo",
                                  "garo_typo.safetensors"])
def test_a_mistyped_local_path_is_one_line_naming_it_and_never_goes_to_the_hub(
        tmp_path, monkeypatch, typo):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_network(*args, **kwargs):
        raise AssertionError("sent to the Hub")
    monkeypatch.setattr("metaopt.hub.download", no_network)
    monkeypatch.setattr("metaopt.checkpoint_names._hub_available", lambda: True)
    for attempt in (lambda: resolve(typo),
                    lambda: metaopt.load_optimizer(typo, [torch.zeros(2, requires_grad=True)])):
        with pytest.raises(FileNotFoundError) as error:
            attempt()
        assert typo in str(error.value) and "\n" not in str(error.value)


def test_a_failed_hub_download_is_one_line_naming_the_repo(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise RuntimeError("no connection\nsecond line\nthird line")
    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as error:
        resolve("someone/some-optimizer")
    assert "'someone/some-optimizer'" in str(error.value) and "\n" not in str(error.value)


def test_a_save_pretrained_directory_still_round_trips(hub_dir):
    config = json.loads((hub_dir / CONFIG_FILE).read_text())
    assert isinstance(config, dict)
    assert checkpoint_file(hub_dir) == hub_dir / MODEL_FILE
    assert sys.getrecursionlimit() > 0  # the deep-nesting case leaves the interpreter usable
