"""The hybrid scripts end to end at toy size: meta_train with controller.kind=hybrid exports a
loadable HybridGDODE; the study runs, counts and writes its table; bad config keys are named."""
from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest
import torch

import metaopt

ROOT = Path(__file__).resolve().parents[2]
#: a switch-only hybrid (the learned switch over momentum SGD + RK4, the previous hybrid_general)
SWITCH_ONLY = ROOT / "tests" / "hybrid" / "data" / "hybrid_switch_sgd.safetensors"


@pytest.fixture(scope="module")
def scripts():
    return (importlib.import_module("scripts.meta_train"),
            importlib.import_module("scripts.hybrid_study"))


@pytest.mark.slow
def test_meta_train_hybrid_exports_a_hybrid_optimizer(scripts, tmp_path):
    meta_train, _ = scripts
    out = tmp_path / "run"
    meta_train.main(["--config", str(ROOT / "configs" / "hybrid.yaml"), f"out_dir={out}",
                     "steps=2", "validation.every=2", "validation.num_tasks=1",
                     "validation.horizon=5", "evaluation.enabled=false", "unroll.num_tasks=1",
                     "unroll.truncation_length=3", "task.name=quadratic", "progress=false",
                     "wandb.mode=disabled"])
    x = torch.zeros(3, requires_grad=True)
    opt = metaopt.load_optimizer(out / "optimizer.safetensors", [x])
    assert isinstance(opt, metaopt.optim.HybridGDODE) and opt.policy_name == "learned"
    logged = (out / "metrics.jsonl").read_text()
    assert '"mode_t"' in logged and '"evaluations_t"' in logged  # the trace reaches the log
    with pytest.raises(meta_train.ConfigError, match="hybrid.ode"):
        meta_train.main(["--config", str(ROOT / "configs" / "hybrid.yaml"), "hybrid.ode=nope",
                         "--check"])


@pytest.mark.slow
def test_study_runs_and_counts(scripts, tmp_path):
    _, study = scripts
    result = study.main(["--config", str(ROOT / "configs" / "hybrid_study.yaml"),
                         f"out_dir={tmp_path}", "functions=[himmelblau]", "grid=4", "steps=40",
                         f"learned={SWITCH_ONLY}", "mlp_tasks=0", "plots=false",
                         "timing_steps=2", "tuning_per_decade=1"])
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"gd_only", "ode_only", "hybrid_heuristic", "hybrid_learned",
                         "hybrid_heuristic_adam", "adam_tuned", "sgd_momentum_tuned"}
    assert rows["gd_only"]["evals_total_mean"] == 40  # one gradient per GD step
    # RK4: four per step, plus one (a probe of its first stage) for each time the stability
    # guard refused that start's step; a mean over the grid's 16 starts
    ode_evals = rows["ode_only"]["evals_total_mean"]
    refusals = (ode_evals - 160) * 16
    assert ode_evals > 160 and refusals == round(refusals)
    assert all(0.0 <= r["global_basin"] <= 1.0 for r in rows.values())
    with open(tmp_path / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == 7
    with pytest.raises(SystemExit, match="ode_value"):  # GARO-driven: not batched over starts
        study.main([f"out_dir={tmp_path}", "learned=hybrid_general"])
    with pytest.raises(SystemExit, match="functions"):
        study.main([f"out_dir={tmp_path}", "functions=[nope]"])
    with pytest.raises(SystemExit, match="steps"):
        study.main([f"out_dir={tmp_path}", "steps=0"])
