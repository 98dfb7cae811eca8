"""What a newcomer meets first on the command line: run directories per experiment, ``--help``
with the config file's values, did-you-mean hints, usage lines and a quiet W&B start."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from metaopt import cli

ROOT = Path(__file__).resolve().parents[1]
GARO = str(ROOT / "configs" / "garo.yaml")
TINY = ["unroll.num_tasks=2", "unroll.truncation_length=3", "unroll.schedule=constant",
        "unroll.horizon=6", "unroll.engine=loop", "controller.hidden_size=4",
        "validation.every=1", "validation.num_tasks=1", "validation.horizon=4",
        "evaluation.enabled=false", "wandb.mode=disabled", "progress=false", "steps=1"]


def _config_module():
    from tests.scripts.test_meta_train import _load_script  # scripts/ on sys.path, by path
    return _load_script()


def test_default_run_directory_is_named_by_the_experiment():
    config = _config_module()
    assert config.load_config(GARO, []).out_dir == str(Path("runs") / "garo")
    # a resumable change (more steps, W&B) keeps the directory: re-running resumes
    assert config.load_config(GARO, ["steps=600", "wandb.mode=disabled"]).out_dir == \
        str(Path("runs") / "garo")
    # another experiment gets another directory
    assert config.load_config(GARO, ["task=mlp", "steps=100"]).out_dir == \
        str(Path("runs") / "garo-task=mlp")
    assert config.load_config(GARO, ["out_dir=elsewhere", "task=mlp"]).out_dir == "elsewhere"
    hybrid = config.load_config(str(ROOT / "configs" / "hybrid.yaml"), [])
    assert hybrid.out_dir == str(Path("runs") / "hybrid")


def test_two_experiments_in_a_row_do_not_collide(tmp_path, monkeypatch, capsys):
    """`make quickstart` then the README's `task=mlp` run: both train, in two directories."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", GARO, *TINY]) == 0
    assert cli.main(["train", "--config", GARO, "task=mlp", "task.kwargs.width=[4,8]",
                     "task.kwargs.depth=[1,1]", *TINY]) == 0, capsys.readouterr().err
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((tmp_path / "runs" / r / "state.pt").is_file() for r in runs)


def _train_help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_train_help_shows_the_config_files_values(capsys):
    out = _train_help(["--config", GARO], capsys)
    assert "  steps: int = 300" in out and "  unroll.engine: str = 'vectorised'" in out
    assert "  unroll.num_tasks: int = 16" in out
    out = _train_help(["--config", GARO, "steps=7"], capsys)  # overrides too
    assert "  steps: int = 7" in out
    out = _train_help([], capsys)  # no file: the schema's defaults
    assert "  steps: int = 200" in out and "  unroll.engine: str = 'loop'" in out


def test_help_comment_runs_over_its_continuation_lines(capsys):
    out = _train_help([], capsys)
    (gate,) = [line for line in out.splitlines() if line.startswith("  hybrid.gate:")]
    for choice in ("relaxed", "straight_through", "hard (ES/PES only)", "auto (bptt"):
        assert choice in gate


def test_tasks_suggests_a_close_family_name(capsys):
    assert cli.main(["tasks", "mlpp"]) == 2
    err = capsys.readouterr().err
    assert "did you mean mlp" in err
    assert cli.main(["tasks", "zzzzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_analyze_usage_names_the_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: metaopt analyze") and "gdsearch" not in out.splitlines()[0]


def test_wandb_start_prints_no_deprecation_warning(tmp_path, capfd, monkeypatch):
    from metaopt.logging import make_logger
    monkeypatch.setenv("WANDB_SILENT", "false")
    for i in range(2):  # a second run in the same process: the old `reinit=True` path
        logger = make_logger(tmp_path / f"run{i}", wandb_mode="offline", run_id=f"quiet{i}")
        logger.log({"x": 1.0}, 0)
        logger.close()
    captured = capfd.readouterr()
    assert "reinit" not in captured.out + captured.err


FAMILY_MODULE = '''
import functools
import tasks
from tasks.quadratic import QuadraticFamily
tasks.register("user_quadratic", functools.partial(QuadraticFamily, dim=(2, 3)))
'''


@pytest.fixture
def user_registry(monkeypatch, tmp_path):
    import tasks
    monkeypatch.chdir(tmp_path)
    saved, modules = dict(tasks._REGISTRY), set(sys.modules)
    yield tmp_path
    tasks._REGISTRY.clear()
    tasks._REGISTRY.update(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("user_families"):
            del sys.modules[name]


@pytest.mark.parametrize("form", ["file", "module"])
def test_train_imports_a_users_task_family(user_registry, monkeypatch, capsys, form):
    (user_registry / "user_families.py").write_text(FAMILY_MODULE)
    spec = str(user_registry / "user_families.py") if form == "file" else "user_families"
    assert cli.main(["tasks", "--import", spec, "user_quadratic"]) == 0
    assert "user_quadratic:" in capsys.readouterr().out
    assert cli.main(["train", "--import", spec, "--config", GARO, "task=user_quadratic",
                     *TINY]) == 0, capsys.readouterr().err
    (run,) = (user_registry / "runs").iterdir()  # named by the config and its overrides
    assert run.name.startswith("garo-task=user_quadratic,")
    assert (run / "optimizer.safetensors").is_file()
    assert "name: user_quadratic" in (run / "config.yaml").read_text()


def test_a_bad_import_is_one_line_and_exit_2(user_registry, capsys):
    (user_registry / "user_families_broken.py").write_text("raise RuntimeError('boom\\nline 2')")
    for spec in ("user_families_broken.py", "no_such_module_xyz", "missing/file.py"):
        assert cli.main(["train", "--import", spec, "--config", GARO, *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and spec in err
    assert cli.main(["tasks", "--import", "no_such_module_xyz"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
