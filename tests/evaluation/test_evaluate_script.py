"""scripts/evaluate.py: typed config errors before any work, outputs, W&B offline."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "evaluate.py"
BASELINES = REPO / "configs" / "eval_baselines.yaml"


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


evaluate_script = _load_script()

TINY = [
    "steps=6", "eval_every=3", "task_seeds=[0]", "seeds=[0,1]",
    "tasks=[{name: quadratic, kwargs: {dim: [2, 3]}}, "
    "{name: rosenbrock, label: rb, kwargs: {initial_point: [-1.5, 2.0]}}]",
    "optimizers=[{name: sgd, hyperparameters: {lr: 0.01}}, "
    "{name: adam, label: adam_tuned, tune_lr: true}]",
    "tuning.num_lrs=2", "tuning.steps=3", "tuning.task_seeds=[10000]",
]


@pytest.mark.parametrize("override,key", [
    ("nope=1", "nope"),
    ("tuning.lr_mni=0.1", "lr_mni"),
    ("wandb.moed=offline", "moed"),
    ("steps=abc", "steps"),
    ("track_memory=maybe", "track_memory"),
    ("optimizers.0.hyperparams={lr: 1}", "hyperparams"),
])
def test_unknown_or_mistyped_keys_fail_before_any_work(tmp_path, override, key):
    out_dir = tmp_path / "out"
    with pytest.raises(evaluate_script.ConfigError, match=key):
        evaluate_script.main(["--config", str(BASELINES), f"out_dir={out_dir}", override])
    assert not out_dir.exists()


@pytest.mark.parametrize("override,message", [
    ("tasks.0.name=quadratik", "quadratik"),
    ("tasks.0.kwargs.dimm=3", "dimm"),
    ("optimizers.0.name=sgdd", "sgdd"),
    ("optimizers.0.hyperparameters.momentun=0.9", "momentun"),
    ("target_kind=percent", "target_kind"),
    ("tuning.criterion=vibes", "tuning.criterion"),
    ("wandb.mode=sometimes", "wandb.mode"),
    ("not_an_override", "key=value"),
])
def test_semantic_errors_name_the_culprit(tmp_path, override, message):
    out_dir = tmp_path / "out"
    with pytest.raises(evaluate_script.ConfigError, match=message):
        evaluate_script.main(["--config", str(BASELINES), f"out_dir={out_dir}", override])
    assert not out_dir.exists()


def test_unknown_key_in_yaml_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: 3\ntunning: {num_lrs: 2}\n")
    with pytest.raises(evaluate_script.ConfigError, match="tunning"):
        evaluate_script.main(["--config", str(config)])


def test_tiny_run_writes_csv_and_json(tmp_path, capsys):
    out_dir = tmp_path / "out"
    results = evaluate_script.main([f"out_dir={out_dir}", "num_threads=1", *TINY])
    assert len(results) == 2 * 2 * 1 * 2  # families x optimizers x task seeds x seeds
    printed = capsys.readouterr().out
    assert ("adam_tuned" in printed and "tuned adam_tuned on rb" in printed
            and "final_norm_loss_median" in printed)
    with (out_dir / "runs.csv").open() as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 8 and {r["family"] for r in runs} == {"quadratic", "rb"}
    with (out_dir / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    payload = json.loads((out_dir / "results.json").read_text())
    assert len(payload["runs"]) == 8 and len(payload["tuning"]) == 2
    assert payload["config"]["steps"] == 6 and len(payload["runs"][0]["train_losses"]) == 6
    assert (out_dir / "config.yaml").exists()


def test_wandb_offline_writes_inside_out_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out_dir = tmp_path / "out"
    evaluate_script.main([f"out_dir={out_dir}", "wandb.mode=offline", "num_threads=1", *TINY[:3],
                          "tasks=[{name: quadratic}]", "optimizers=[{name: sgd}]"])
    assert (out_dir / "wandb").is_dir() and any((out_dir / "wandb").glob("offline-run-*"))


def test_command_line_exit_code_and_message(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(BASELINES), f"out_dir={tmp_path / 'o'}",
         "stepz=3"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert completed.returncode == 2
    assert "stepz" in completed.stderr
