"""One checkpoint carries both trained modules of a hybrid with a GARO GD module (policy and
controller): load_optimizer / save_pretrained / from_pretrained rebuild it bit-exactly, and the
shipped policy-only hybrid_general still loads as it did."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import metaopt
import metaopt.optim as mo
from metaopt.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from metaopt.hybrid.garo_module import HybridControllers
from metaopt.hybrid.policy import SwitchingPolicy
from tests.hybrid.test_garo_module import D, _switching, alternating_policy, controller
from tests.optim.test_conformance import make_problem, run

ROOT = Path(__file__).resolve().parents[2]


def trajectory(opt, loss_fn, steps=8):
    run(opt, loss_fn, steps)
    return [p.detach().clone() for g in opt.param_groups for p in g["params"]]


def test_save_pretrained_round_trip_rebuilds_both_modules(tmp_path):
    params, loss_fn = make_problem(dtype=D)
    original = _switching(params, ode_scale=0.7)
    original.garo_controller.float()  # checkpoints hold the modules in float32
    original.policy_module.float()
    directory = original.save_pretrained(tmp_path / "hybrid-garo", training={"note": "test"})
    stored = Checkpoint.from_pretrained(directory)
    assert isinstance(stored.controller, HybridControllers)
    assert stored.optimizer_config["gd"] == "garo" and stored.optimizer_config["ode_scale"] == 0.7
    expected = trajectory(original, loss_fn)
    for load in (lambda ps: metaopt.load_optimizer(directory, ps),
                 lambda ps: mo.HybridGDODE.from_pretrained(directory, ps)):
        twin, twin_loss = make_problem(dtype=D)
        opt = load(twin)
        assert opt.policy_module.extra_features and opt.garo_controller is not None
        got = trajectory(opt, twin_loss)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert [h["mode"] for h in original.history][:4] == [1.0, 1.0, 0.0, 0.0]  # it switched


def test_a_checkpoint_file_of_both_modules_loads(tmp_path):
    policy, ctrl = alternating_policy().float(), controller(5).float()
    path = save_checkpoint(tmp_path / "h.safetensors", HybridControllers.of(policy, ctrl),
                           {"gd": "garo", "ode": "rk4", "min_dwell": 2},
                           optimizer_class="HybridGDODE")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["controller_class"] == "HybridControllers"
    assert json.loads(meta["controller_config"])["policy"]["extra_features"]
    assert {k.split(".")[0] for k in keys} == {"policy", "garo"}
    params, loss_fn = make_problem(dtype=D)
    opt = metaopt.load_optimizer(path, params)
    reference, ref_loss = make_problem(dtype=D)
    direct = mo.HybridGDODE(reference, gd="garo", controller=ctrl,
                            policy=alternating_policy().float(), ode="rk4", min_dwell=2)
    assert all(torch.equal(a, b) for a, b in zip(trajectory(opt, loss_fn),
                                                  trajectory(direct, ref_loss)))
    with pytest.raises(CheckpointError, match="cannot build HybridGDODE"):
        metaopt.load_optimizer(path, params, direction="nope")


def test_refusals_are_one_line():
    params, _ = make_problem()
    heuristic = mo.HybridGDODE(params, gd="garo")
    with pytest.raises(ValueError, match="learned switching policy"):
        heuristic.save_pretrained("unused")
    with pytest.raises(ValueError, match="policy and garo must be dicts"):
        HybridControllers(policy=3)
    with pytest.raises(CheckpointError, match="does not take a SwitchingPolicy"):
        save_checkpoint("unused.safetensors", SwitchingPolicy(), optimizer_class="GARO")


def test_a_policy_only_hybrid_loads_as_its_file_says():
    """The switch-only hybrid (the previous hybrid_general: the learned switch over momentum SGD
    + RK4) read straight from its file rebuilds the optimizer load_optimizer builds."""
    path = ROOT / "tests" / "hybrid" / "data" / "hybrid_switch_sgd.safetensors"
    with safe_open(str(path), framework="pt") as f:  # the file read without load_optimizer
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["controller_class"] == "SwitchingPolicy"
    policy = SwitchingPolicy(**json.loads(meta["controller_config"]))
    policy.load_state_dict(tensors)
    assert policy.num_inputs == 5  # the five switching criteria, no GARO inputs
    params, loss_fn = make_problem()
    reference, ref_loss = make_problem()
    loaded = metaopt.load_optimizer(path, params, record_trace=True)
    direct = mo.HybridGDODE(reference, policy=policy, record_trace=True,
                            **json.loads(meta["optimizer_config"]))
    assert loaded.garo_controller is None
    assert all(torch.equal(a, b) for a, b in zip(trajectory(loaded, loss_fn, 30),
                                                  trajectory(direct, ref_loss, 30)))
    modes = [h["mode"] for h in loaded.history]
    assert 0.0 in modes and 1.0 in modes  # the comparison crossed switches


def test_shipped_hybrid_general_carries_garo_general_and_its_switch():
    """The shipped hybrid_general: both modules in one file, GARO's being garo_general's
    controller (it was trained from it), rebuilt by hand to the optimizer load_optimizer builds."""
    from metaopt.checkpoint import load_checkpoint, resolve
    path = resolve("hybrid_general")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["controller_class"] == "HybridControllers"
    modules = HybridControllers(**json.loads(meta["controller_config"]))
    modules.load_state_dict(tensors)
    general = load_checkpoint(resolve("garo_general")).controller
    assert modules.garo.config == general.config
    assert modules.policy.extra_features  # the switch reads GARO's state
    options = json.loads(meta["optimizer_config"])
    assert (options["gd"], options["scale"], options["ode"]) == ("garo", "prodigy", "rk4")
    params, loss_fn = make_problem()
    reference, ref_loss = make_problem()
    loaded = metaopt.load_optimizer("hybrid_general", params, num_training_steps=30)
    direct = mo.HybridGDODE(reference, policy=modules.policy, controller=modules.garo,
                            num_training_steps=30, **options)
    assert all(torch.equal(a, b) for a, b in zip(trajectory(loaded, loss_fn, 30),
                                                  trajectory(direct, ref_loss, 30)))


def test_hub_round_trip_of_both_modules(tmp_path, monkeypatch):
    """The Hub path, offline: a stand-in snapshot_download serves a save_pretrained directory."""
    hub = pytest.importorskip("huggingface_hub")
    params, loss_fn = make_problem(dtype=D)
    original = _switching(params)
    original.garo_controller.float()
    original.policy_module.float()
    local = original.save_pretrained(tmp_path / "snapshot")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, revision=None,
                        allow_patterns=None: str(local))
    twin, twin_loss = make_problem(dtype=D)
    opt = mo.HybridGDODE.from_pretrained("owner/hybrid-garo", twin)
    assert all(torch.equal(a, b) for a, b in zip(trajectory(original, loss_fn),
                                                  trajectory(opt, twin_loss)))
    assert "HybridGDODE" in (local / "README.md").read_text()
