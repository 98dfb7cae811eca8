"""Fine-tuning from a trained checkpoint: ``controller.init_from`` / ``load_controller_weights``."""
from __future__ import annotations

import hashlib

import pytest
import torch

from metaopt.checkpoint import load_checkpoint, resolve, save_checkpoint
from metaopt.garo import GAROController
from metaopt.garo.rule import GARORule
from metaopt.hybrid.garo_module import HybridControllers
from metaopt.hybrid.policy import SwitchingPolicy
from metaopt.meta.warm_start import load_controller_weights


def _general_like(**kwargs) -> GAROController:
    """A fresh controller with garo_general's architecture and inputs."""
    return GAROController(**{"hidden_size": 16, "init_lr": 0.1, "init_momentum": 0.9,
                             "features": "relative", "lr_schedule": "cosine", **kwargs})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_shipped_garo_checkpoint_starts_a_matching_controller():
    controller = _general_like()
    record = load_controller_weights(controller, GARORule(direction="adam", scale="prodigy"),
                                     "garo_general")
    assert _same(controller, load_checkpoint(resolve("garo_general")).controller)
    digest = hashlib.sha256(resolve("garo_general").read_bytes()).hexdigest()
    assert record == {"init_from": "garo_general", "init_from_sha256": digest}


def test_the_garo_part_of_a_hybrid_checkpoint_starts_it_too(tmp_path):
    source = _general_like(generator=torch.Generator().manual_seed(3))
    holder = HybridControllers.of(SwitchingPolicy(hidden_size=4), source)
    path = save_checkpoint(tmp_path / "hybrid.safetensors", holder,
                           {"gd": "garo", "direction": "adam", "scale": "prodigy"},
                           optimizer_class="HybridGDODE")
    controller = _general_like()
    assert not _same(controller, source)
    load_controller_weights(controller, GARORule(direction="adam", scale="prodigy"), path)
    assert _same(controller, source)


def test_a_checkpoint_that_does_not_fit_is_refused_naming_what_differs(tmp_path):
    controller = _general_like(generator=torch.Generator().manual_seed(7))
    before = {k: v.clone() for k, v in controller.state_dict().items()}
    with pytest.raises(ValueError, match=r"scale: 'prodigy' there, 'distance' here"):
        load_controller_weights(controller, GARORule(direction="adam", scale="distance"),
                                "garo_general")
    with pytest.raises(ValueError, match=r"hidden_size: 16 there, 8 here"):
        load_controller_weights(_general_like(hidden_size=8),
                                GARORule(direction="adam", scale="prodigy"), "garo_general")
    with pytest.raises(ValueError, match=r"lr_schedule: 'cosine' there, 'constant' here"):
        load_controller_weights(_general_like(lr_schedule="constant"),
                                GARORule(direction="adam", scale="prodigy"), "garo_general")
    policy_only = save_checkpoint(tmp_path / "switch.safetensors", SwitchingPolicy(hidden_size=4),
                                  {"gd": "sgd"}, optimizer_class="HybridGDODE")
    with pytest.raises(ValueError, match="holds a SwitchingPolicy, not a GARO controller"):
        load_controller_weights(controller, GARORule(direction="adam", scale="prodigy"),
                                policy_only)
    assert all(torch.equal(before[k], v) for k, v in controller.state_dict().items())


def test_meta_training_starts_from_init_from_and_its_card_says_so(tmp_path):
    """The run's step-0 controller is the checkpoint's; a checkpoint that does not fit, or does
    not exist, is refused naming the key before the run directory is made."""
    from tests.scripts.test_meta_train import ROOT, TINY, _load_script

    script = _load_script()
    config = ["--config", str(ROOT / "configs" / "garo_quadratic.yaml"), *TINY, "steps=1",
              "controller.features=relative", "controller.direction=adam",
              "controller.scale=prodigy", "controller.lr_schedule=cosine",
              "controller.hidden_size=16", "controller.init_lr=0.1", "controller.init_momentum=0.9",
              "outer.lr=1e-12"]
    script.main([*config, f"out_dir={tmp_path / 'run'}", "controller.init_from=garo_general"])
    trained = load_checkpoint(tmp_path / "run" / "optimizer.safetensors")
    shipped = load_checkpoint(resolve("garo_general")).controller
    weights = dict(trained.controller.named_parameters())
    for k, v in shipped.named_parameters():  # one meta-step of lr 1e-12 away from it
        torch.testing.assert_close(weights[k], v, rtol=0, atol=1e-9, msg=k)
    assert not torch.equal(weights["head_lr.bias"], GAROController(
        hidden_size=16, init_lr=0.1, features="relative").head_lr.bias)
    assert trained.training["init_from"] == "garo_general"
    assert trained.training["init_from_sha256"] == hashlib.sha256(
        resolve("garo_general").read_bytes()).hexdigest()
    start = load_checkpoint(tmp_path / "run" / "snapshots" / "step_000000.safetensors")
    assert _same(start.controller, load_checkpoint(resolve("garo_general")).controller)
    for bad, why in [("no_such_checkpoint", "no checkpoint file"),
                     ("garo_quadratics", "does not fit this run's controller")]:
        with pytest.raises(script.ConfigError, match=f"controller.init_from.*{why}"):
            script.main([*config, f"out_dir={tmp_path / bad}", f"controller.init_from={bad}"])
        assert not (tmp_path / bad).exists()
