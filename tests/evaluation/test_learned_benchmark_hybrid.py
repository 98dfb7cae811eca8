"""`metaopt benchmark learned` with hybrid checkpoints among its ``checkpoints:``: a hybrid with
a GARO GD module and the policy-only hybrid_general run, and their speedup over tuned Adam is
counted in gradient evaluations (an RK4 step costs four)."""
from __future__ import annotations

import torch

from metaopt.checkpoint import save_checkpoint
from metaopt.garo import GAROController
from metaopt.hybrid.garo_module import GARO_FEATURES, HybridControllers
from metaopt.hybrid.policy import SwitchingPolicy


def checkpoint(path, ode: bool):
    policy = SwitchingPolicy(hidden_size=4, extra_features=GARO_FEATURES,
                             init_ode_probability=0.99 if ode else 0.01)
    controller = GAROController(hidden_size=4, init_lr=1.0, features="relative")
    return str(save_checkpoint(path, HybridControllers.of(policy, controller),
                               {"gd": "garo", "ode": "rk4"}, optimizer_class="HybridGDODE"))


def test_hybrid_checkpoints_are_benchmarked_in_gradient_evaluations(tmp_path):
    from scripts.benchmarks import learned

    ode, gd = checkpoint(tmp_path / "ode.safetensors", True), \
        checkpoint(tmp_path / "gd.safetensors", False)
    cfg = learned.LearnedBenchmarkConfig(
        checkpoints=[ode, gd, "hybrid_general"], seeds=1, reference_extension=2,
        horizon_multiple=2, loss_scales=[100.0],
        tuning=learned.TuningSpec(low=0.01, high=1.0, per_decade=1))
    spec = learned.TaskSpec(label="diabetes_linear", family="tabular_regression", steps=10,
                            kwargs={"models": ["linear"]})
    torch.manual_seed(0)
    rows, runs, traces = learned.bench_task(spec, cfg)
    by_name = {r["optimizer"]: r for r in rows}
    assert set(by_name) == {"adam_tuned", ode, gd, "hybrid_general"}
    assert by_name[ode]["grad_evals_per_step"] == 4  # every step an RK4 step: four evaluations
    assert by_name[gd]["grad_evals_per_step"] == 1
    # Adam's reference curve spans reference_extension·T = 20 evaluations; the ODE-only run
    # spent 40, so counted in evaluations its speedup is at most 20/40 (in steps: up to 2).
    assert 0 <= by_name[ode]["speedup_vs_adam"] <= 0.5
    assert by_name[gd]["speedup_vs_adam"] > 0
    ode_runs = [r for r in runs if r["optimizer"] == ode]
    assert ode_runs and all(r["grad_evals"] == 4 * r["steps_completed"] for r in ode_runs)
    traced = {t["optimizer"]: t["trace"] for t in traces}
    assert set(traced[ode]["mode"]) == {"ode"} and "lr_t" in traced[gd]  # GARO's a_t, per step
    assert by_name["hybrid_general"]["diverged_1x"] == 0

