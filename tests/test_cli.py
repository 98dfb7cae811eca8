"""The metaopt command: subcommands dispatch to the scripts' main(argv); list / tasks report the
registries (checked against the registries themselves and the factories' signatures)."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import metaopt
import tasks
from metaopt import cli
from metaopt.task_registry import family_factory

ROOT = Path(__file__).resolve().parents[1]
TINY = ["unroll.num_tasks=2", "unroll.truncation_length=3", "unroll.schedule=constant",
        "unroll.horizon=6", "controller.hidden_size=4", "validation.every=1",
        "validation.num_tasks=1", "validation.horizon=4", "evaluation.enabled=false",
        "wandb.mode=disabled", "progress=false", "steps=1"]


def test_python_dash_m_lists_optimizers_pretrained_and_families():
    out = subprocess.run([sys.executable, "-m", "metaopt", "list"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    # the built-in kinds (a name another test registered in this process is not the child's);
    # pytorch_optimizer's names only on request
    shown = [n for kind in ("metaopt", "torch", "preset", "pretrained")
             for n in metaopt.list_optimizers(kind)]
    for name in shown + tasks.names():
        assert f"  {name} " in out
    assert "pretrained checkpoints" in out and "meta-trained on" in out
    assert "metaopt list third_party" in out and "  lion " not in out
    listed = subprocess.run([sys.executable, "-m", "metaopt", "list", "third_party"],
                            capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "  lion" in listed


def test_tasks_prints_every_keyword_default_from_the_signature(capsys):
    assert cli.main(["tasks", "mlp", "quadratic"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "quadratic"):
        factory = family_factory(name)
        for key, p in inspect.signature(factory).parameters.items():
            if key not in ("device", "dtype"):
                assert f"    {key} = {p.default!r}" in out
    assert cli.main(["tasks", "nope"]) == 2


def test_list_sections_and_errors(capsys):
    assert cli.main(["list", "pretrained"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in metaopt.list_pretrained())
    assert "optimizers (" not in out and "task families" not in out  # that section alone
    assert cli.main(["list", "nonsense"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2 and cli.main(["--help"]) == 0
    assert "train" in capsys.readouterr().out


def test_train_help_lists_the_config_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: metaopt train")
    assert "task.kwargs: dict[str, Any] = {}" in out and "controller=adam|sgd" in out


def test_train_switches_family_in_one_override(tmp_path, capsys):
    """a reported failure: `--config configs/garo.yaml task.name=mlp` failed on stale kwargs."""
    code = cli.main(["train", "--config", str(ROOT / "configs" / "garo.yaml"), "task.name=mlp",
                     "task.kwargs.width=[4,8]", "task.kwargs.depth=[1,1]",
                     f"out_dir={tmp_path}", *TINY])
    assert code == 0
    assert (tmp_path / "optimizer.safetensors").is_file()
    assert (tmp_path / "meta_training.png").read_bytes()[:4] == b"\x89PNG"  # the curve
    assert "name: mlp" in (tmp_path / "config.yaml").read_text()
    assert "components" not in (tmp_path / "config.yaml").read_text()


def test_config_errors_exit_2_and_name_the_key(tmp_path, capsys):
    code = cli.main(["train", "--config", str(ROOT / "configs" / "garo.yaml"),
                     "task=no_such", f"out_dir={tmp_path}"])
    assert code == 2 and "invalid config group 'task'" in capsys.readouterr().err


def test_missing_scripts_package_is_explained(monkeypatch, capsys):
    monkeypatch.setitem(cli.SCRIPTS, "analyze", ("scripts.no_such_module", "absent"))
    assert cli.main(["analyze", "--list"]) == 2
    err = capsys.readouterr().err
    assert "scripts.no_such_module not found" in err and "pip install -e ." in err


def test_subcommands_call_main_of_the_scripts_package():
    for module_name, _ in cli.SCRIPTS.values():
        module = importlib.import_module(module_name)
        assert callable(module.main) and module.__name__.startswith("scripts.")
