"""configs/hybrid_general.yaml: the joint training of the switch and scale-free GARO is what its
header says (starting from garo_general's controller), and at toy size it runs end to end, writes
a snapshot per validation for selection and exports one checkpoint carrying both modules."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import yaml

import metaopt

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "hybrid_general.yaml"


def test_the_config_trains_the_switch_with_scale_free_garo_on_the_multimodal_mixture():
    meta_train = importlib.import_module("scripts.meta_train")
    meta_train.main(["--config", str(CONFIG), "--check"])  # valid against the schema
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["controller"]["kind"] == "hybrid_garo"
    assert (cfg["controller"]["scale"], cfg["controller"]["features"]) == ("prodigy", "relative")
    general = yaml.safe_load((ROOT / "configs" / "garo_general.yaml").read_text())
    assert cfg["controller"]["init_from"] == "garo_general"
    assert cfg["hybrid"]["train_garo"] is False  # the switch alone, over the shipped GARO
    shared = ("hidden_size", "direction", "features", "scale", "lr_schedule", "init_lr",
              "init_momentum")
    assert {k: cfg["controller"][k] for k in shared} == \
        {k: general["controller"][k] for k in shared}
    assert cfg["hybrid"]["compute_cost"] > 0  # charged per gradient evaluation
    components = cfg["task"]["kwargs"]["family"]["kwargs"]["components"]
    assert set(general["task"]["kwargs"]["family"]["kwargs"]["components"]) <= set(components)
    assert {"rastrigin", "ackley", "himmelblau", "six_hump_camel", "styblinski_tang"} \
        <= set(components)


@pytest.mark.slow
def test_a_toy_run_exports_a_loadable_hybrid_with_both_trained_modules(tmp_path):
    meta_train = importlib.import_module("scripts.meta_train")
    out = tmp_path / "run"
    meta_train.main(["--config", str(CONFIG), f"out_dir={out}", "steps=2",
                     "validation.every=2", "validation.num_tasks=1", "validation.horizon=5",
                     "unroll.num_tasks=1", "unroll.truncation_length=3", "task.name=quadratic",
                     "task.kwargs={}", "controller.hidden_size=4", "controller.init_from=null",
                     "hybrid.policy_hidden=4",
                     "progress=false", "wandb.mode=disabled"])
    x = torch.randn(3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = metaopt.load_optimizer(out / "optimizer.safetensors", [x])
    assert isinstance(opt, metaopt.optim.HybridGDODE) and opt.policy_name == "learned"
    assert opt.garo_controller is not None and opt.policy_module.extra_features
    assert opt.config["gd"] == "garo" and opt.rule.gd.rule.scale == "prodigy"
    snapshot = metaopt.load_optimizer(out / "snapshots" / "step_000002.safetensors", [x])
    assert isinstance(snapshot, metaopt.optim.HybridGDODE) and snapshot.garo_controller is not None
    state = torch.load(out / "state.pt", weights_only=False)
    trained = state["controller"]  # the exported modules are the trained ones
    for prefix, module in (("garo", opt.garo_controller), ("policy", opt.policy_module)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, trained[f"{prefix}.{k}"].to(v))
    loss = lambda: (x ** 2).sum()  # noqa: E731
    for _ in range(5):
        def closure():
            opt.zero_grad()
            value = loss()
            value.backward()
            return value
        opt.step(closure)
    assert torch.isfinite(x).all()
