"""The ode_value study's accounting: evaluations as a user pays them, basins, pinned switches."""
from __future__ import annotations

import math

import pytest
import torch

import metaopt
from metaopt.checkpoint import save_checkpoint
from metaopt.garo import GAROController
from metaopt.hybrid.garo_module import GARO_FEATURES, HybridControllers
from metaopt.hybrid.policy import SwitchingPolicy
from scripts.studies.ode_value import run_one, summarise


@pytest.fixture
def checkpoint(tmp_path):
    garo = GAROController(hidden_size=4, init_lr=0.1, init_momentum=0.9, features="relative",
                          lr_schedule="cosine", generator=torch.Generator().manual_seed(0))
    policy = SwitchingPolicy(hidden_size=4, extra_features=GARO_FEATURES,
                             init_ode_probability=0.9)  # asks for ODE steps
    return save_checkpoint(tmp_path / "hybrid.safetensors", HybridControllers.of(policy, garo),
                           {"gd": "garo", "direction": "adam", "scale": "prodigy"},
                           optimizer_class="HybridGDODE")


def test_a_pinned_switch_keeps_the_trained_garo_controller(checkpoint):
    x = [torch.zeros(2, requires_grad=True)]
    shipped = metaopt.load_optimizer(checkpoint, x, num_training_steps=10)
    pinned = metaopt.load_optimizer(checkpoint, x, num_training_steps=10, policy="gd")
    assert shipped.policy_name == "learned" and pinned.policy_name == "gd"
    for (k, a), b in zip(shipped.garo_controller.state_dict().items(),
                         pinned.garo_controller.state_dict().values()):
        assert torch.equal(a, b), k


def test_every_method_gets_the_budget_in_closure_calls(checkpoint):
    start = torch.tensor([1.0, 1.0], dtype=torch.float64)
    ode = run_one("himmelblau", start, lambda p: metaopt.load_optimizer(
        checkpoint, p, num_training_steps=20, policy="ode"), budget=21)
    assert ode["evals"] == 24 and ode["ode_share"] == 1.0  # 6 RK4 steps: 21 rounds up to 24
    assert [e for e, _ in ode["curve"]] == [4, 8, 12, 16, 20, 24]
    sgd = run_one("himmelblau", start, lambda p: torch.optim.SGD(p, lr=1e-3), budget=21)
    assert sgd["evals"] == 21 and len(sgd["curve"]) == 21 and sgd["ode_share"] == 0.0


def test_the_summary_counts_basins_and_the_evaluations_to_the_target():
    runs = [{"curve": [(1, 5.0), (2, 1e-4)], "evals": 2, "ode_share": 0.0},
            {"curve": [(4, 3.0), (8, 2.0)], "evals": 8, "ode_share": 1.0},
            {"curve": [(1, math.inf)], "evals": 1, "ode_share": 0.0}]
    row = summarise("rastrigin", runs, target=1e-3)  # basin: final gap below 0.5
    assert row["global_basin"] == pytest.approx(1 / 3)
    assert row["reached_target"] == pytest.approx(1 / 3) and row["evals_to_target"] == 2
    assert row["final_gap_median"] == 2.0 and row["ode_share"] == pytest.approx(1 / 3)
