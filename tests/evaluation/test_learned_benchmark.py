"""`metaopt benchmark learned` end to end on a tiny config (every contender, the shipped
checkpoint, the closing medians, a loss-curve PNG per task logged to W&B offline), and the
default config's promise: its held-out families are in no meta-training mixture."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TINY = """
checkpoints: [garo_general]
contenders:
  - {name: prodigy}
  - {name: prodigy_cosine}
  - {name: dog}
  - {name: schedulefree_adamw}
seeds: 2
reference_extension: 2
horizon_multiple: 2
loss_scales: [0.01, 100.0]
tuning: {low: 0.01, high: 1.0, per_decade: 1}
tasks:
  - {label: diabetes_linear, family: tabular_regression, steps: 10, held_out: true,
     kwargs: {models: [linear]}}
  - {label: "diabetes(loss x100)", family: augmented, steps: 10, held_out: false,
     kwargs: {family: {name: tabular_regression, kwargs: {models: [linear]}},
              loss_scale: [100.0, 100.0]}}
"""


def test_the_benchmark_runs_every_contender_and_draws_a_png_per_task(tmp_path):
    for package in ("prodigyopt", "dog", "schedulefree", "matplotlib"):
        pytest.importorskip(package)
    from scripts.benchmarks import learned

    config = tmp_path / "bench.yaml"
    config.write_text(TINY)
    rows = learned.run(Namespace(config=config, out=tmp_path, seed=0))
    names = ["adam_tuned", "prodigy", "prodigy_cosine", "dog", "schedulefree_adamw",
             "garo_general"]
    for task in ("diabetes_linear", "diabetes(loss x100)"):
        mine = [r for r in rows if r["task"] == task]
        assert [r["optimizer"] for r in mine] == names
        for r in mine:
            assert r["speedup_vs_adam"] >= 0 and r["grad_evals_per_step"] == 1
            assert r["ms_per_step"] > 0 and r["final_ratio_vs_adam"] > 0
        assert all(r["diverged_10x"] is not None for r in mine[1:])
        assert mine[0]["tuned_lr"] is not None and mine[0]["final_ratio_vs_adam"] == 1
    medians = [r for r in rows if r["task"] == "MEDIAN"]
    assert [r["optimizer"] for r in medians] == names
    # the closing median is over held-out tasks only (one here)
    held = {r["optimizer"]: r["speedup_vs_adam"] for r in rows if r["task"] == "diabetes_linear"}
    assert {r["optimizer"]: r["speedup_vs_adam"] for r in medians} == pytest.approx(held)
    out = tmp_path / "learned"
    for png in ("loss_diabetes_linear.png", "loss_diabetes_loss_x100_.png"):
        assert (out / png).stat().st_size > 1000
    assert list(out.glob("wandb/offline-run-*"))  # logged to W&B, offline


def _families(node, found: set[str]) -> set[str]:
    """Every family name mentioned in a task spec: ``name`` values and mixture component keys."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str):
            found.add(node["name"])
        for key, value in node.items():
            if key == "components" and isinstance(value, dict):
                found.update(value)
            _families(value, found)
    elif isinstance(node, list):
        for value in node:
            _families(value, found)
    return found


@pytest.mark.parametrize("config", ["garo_general.yaml", "garo_general_nets.yaml",
                                    "garo_general_finetune.yaml", "hybrid_general.yaml"])
def test_held_out_benchmark_families_are_in_no_training_or_validation_mixture(config):
    bench = yaml.safe_load((REPO / "configs" / "benchmark_learned.yaml").read_text())
    held_out = set()
    for spec in bench["tasks"]:
        if spec["held_out"]:
            held_out |= _families(spec, {spec["family"]}) - {"augmented"}
    assert {"residual_mlp", "attention", "tabular_regression", "rosenbrock"} <= held_out
    assert len(bench["tasks"]) == 10
    general = yaml.safe_load((REPO / "configs" / config).read_text())
    trained = _families(general["task"], set())
    assert "mlp" in trained  # the walk sees the mixture
    assert not held_out & trained, held_out & trained
    validation = general["validation"]
    validated = _families(validation, {validation["task"]})
    selection = yaml.safe_load((REPO / "configs" / "select_garo_general.yaml").read_text())
    validated |= {spec["family"] for spec in selection["tasks"]}
    assert "char_mlp" in validated
    assert not held_out & validated, held_out & validated


def test_loss_curves_mark_diverged_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from metaopt.evaluation import plot_loss_curves

    labels, crosses = [], []
    plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        if len(args) > 2 and args[2] == "x":
            crosses.append((args[0][0], args[1][0]))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    run = {"optimizer": "ok", "diverged": False, "grad_evals": 20, "steps_completed": 10,
           "eval_steps": [0, 5, 10], "eval_train_losses": [1.0, 0.5, 0.25]}
    blown = {**run, "optimizer": "blown", "diverged": True, "steps_completed": 6,
             "grad_evals": 12, "eval_steps": [0, 5], "eval_train_losses": [1.0, 30.0]}
    path = plot_loss_curves([run, blown], tmp_path / "curves.png")
    assert path.stat().st_size > 1000
    assert "blown (diverged 1/1)" in labels and "ok" in labels
    assert crosses == [(10.0, 30.0)]  # at its last finite loss, x in gradient evaluations
