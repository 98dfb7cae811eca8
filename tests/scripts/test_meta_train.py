"""scripts/meta_train.py: run directory, exact resume, config errors before any work."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metaopt

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "meta_train.py"
TINY = ["unroll.num_tasks=2", "unroll.truncation_length=4", "unroll.schedule=log_uniform",
        "unroll.min_horizon=5", "unroll.max_horizon=12", "controller.hidden_size=4",
        "validation.every=2", "validation.num_tasks=2", "validation.horizon=8",
        "evaluation.enabled=false", "wandb.mode=disabled", "progress=false",
        "checkpoint_every=100"]


def _load_script():
    spec = importlib.util.spec_from_file_location("meta_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _run(script, out_dir, *extra):
    return script.main(["--config", str(ROOT / "configs" / "garo_quadratic.yaml"),
                        f"out_dir={out_dir}", *TINY, *extra])


@pytest.mark.parametrize("estimator", ["bptt", "es"])
def test_resume_is_bit_identical(script, tmp_path, estimator):
    extra = [f"estimator.name={estimator}", "estimator.num_pairs=2"]
    _run(script, tmp_path / "straight", "steps=6", *extra)
    _run(script, tmp_path / "resumed", "steps=3", *extra)
    _run(script, tmp_path / "resumed", "steps=6", *extra)  # same command, more steps: resumes
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name, value in a["controller"].items():
        assert torch.equal(value, b["controller"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    for run_a, run_b in zip(a["pool"]["runs"], b["pool"]["runs"]):
        assert all(torch.equal(x, y) for x, y in zip(run_a["params"], run_b["params"]))

    def records(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if "meta_loss" in r]
    assert records(tmp_path / "straight") == records(tmp_path / "resumed")


def test_run_directory_and_exported_optimizer(script, tmp_path):
    result = _run(script, tmp_path, "steps=4", "wandb.mode=offline", "evaluation.enabled=true",
                  "evaluation.steps=10", "evaluation.num_tasks=2", "evaluation.tuning_steps=5",
                  "evaluation.tuning_lrs=[0.01,0.1]")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"optimizer.safetensors", "state.pt", "config.yaml", "metrics.jsonl",
            "wandb"} <= names
    model = torch.nn.Linear(3, 1)
    optimizer = metaopt.load_optimizer(tmp_path / "optimizer.safetensors", model.parameters())
    trained = result["trainer"].learned.module.state_dict()
    for name, value in optimizer.controller.state_dict().items():
        assert torch.equal(value, trained[name]), name
    labels = {row["optimizer"] for row in result["summary"]}
    assert {"garo_learned", "garo_untrained"} <= labels and len(labels) == 4
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("series") == "hyperparameters" and len(r["lr_t"]) == 8 for r in records)
    assert any("meta_grad_norm" in r for r in records)
    table = [r for r in records if r.get("table") == "evaluation"]
    assert len(table) == 1 and {row["optimizer"] for row in table[0]["rows"]} == labels


@pytest.mark.parametrize("override,key", [
    ("unroll.truncaton_length=5", "unroll.truncaton_length"),
    ("bogus=1", "bogus"),
    ("steps=many", "steps"),
    ("outer.lr=fast", "outer.lr"),
    ("meta_loss.kind=median", "meta_loss.kind"),
    ("unroll.num_tasks=0", "unroll.num_tasks"),
    ("controller.hidden_size=0", "controller"),
    ("controller.init_momentum=1.0", "controller"),
    ("meta_loss.divergence_threshold=-1", "meta_loss"),
    ("evaluation.tuning_steps=0", "evaluation.tuning_steps"),
    ("evaluation.baselines=[{name: nosuchopt}]", "evaluation.baselines"),
])
def test_config_errors_name_the_key(script, tmp_path, override, key):
    with pytest.raises(script.ConfigError, match=key.replace(".", r"\.")):
        _run(script, tmp_path / "run", override)
    assert not (tmp_path / "run").exists()  # failed before any work


def test_resuming_with_other_training_settings_is_refused(script, tmp_path):
    _run(script, tmp_path, "steps=1")
    with pytest.raises(script.ConfigError, match="outer.lr"):
        _run(script, tmp_path, "steps=2", "outer.lr=0.1")


def test_cli_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config",
                           str(ROOT / "configs" / "garo_quadratic.yaml"),
                           f"out_dir={tmp_path}", "unroll.nonsense=3"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unroll.nonsense" in proc.stderr


@pytest.mark.slow
def test_torchrun_two_processes_resume_and_agree(tmp_path):
    """The documented command, torchrun --nproc_per_node 2: the ranks share the meta-batch, rank 0
    writes one state.pt with every rank's part, and the same command resumes both ranks."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to the interpreter")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), "--config",
               str(ROOT / "configs" / "garo_quadratic.yaml"), f"out_dir={tmp_path}", *TINY]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's metaopt in the workers
    for steps in (2, 4):  # the second call resumes both ranks
        proc = subprocess.run([*command, f"steps={steps}"], check=False, capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2
    assert not list(tmp_path.glob("state.rank*"))
    seeds = [[r["task_seed"] for r in part["pool"]["runs"]] for part in state["shards"]]
    assert len(seeds[0]) == len(seeds[1]) == 1 and seeds[0] != seeds[1]  # 2 runs, one each
    assert state["shards"][0]["digest"] == state["shards"][1]["digest"]
