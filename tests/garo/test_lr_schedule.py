"""GARO's lr prior (``lr_schedule="cosine"``): lr_t times ½(1 + cos(π·min(t/T, 1))).

Oracle: ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T)`` on the same GARO without the prior.
The rule's and the runtime's steps with the prior agree in float64 in ``test_runtime.py``.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.checkpoint import load_optimizer, save_checkpoint
from metaopt.garo import GAROController
from metaopt.optim import GARO

from .helpers import regression

STEPS = 25


def _run(schedule: str, scheduled: bool) -> list[torch.Tensor]:
    params, loss_fn = regression()
    params = [p.detach().clone().requires_grad_() for p in params]
    controller = GAROController(hidden_size=8, features="relative", init_lr=0.1,
                                init_momentum=0.9, lr_schedule=schedule).double()
    opt = GARO(params, controller=controller, direction="adam", scale="prodigy",
               num_training_steps=STEPS)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS) if scheduled \
        else None
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        opt.step(loss=loss.detach())
        if scheduler is not None:
            scheduler.step()
    return [p.detach() for p in params]


def test_the_untrained_cosine_prior_is_cosine_annealing_of_the_constant_controller():
    prior, annealed = _run("cosine", False), _run("constant", True)
    plain = _run("constant", False)
    for a, b, c in zip(prior, annealed, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(a, c)  # the prior changed the run


def test_without_a_horizon_the_prior_is_one():
    controller = GAROController(features="relative", lr_schedule="cosine").double()
    state = controller.initial_state()
    signal = torch.zeros(1, 5, dtype=torch.float64)
    valid = torch.ones(1, 5, dtype=torch.float64)
    step = torch.tensor(7)
    out = controller(signal, valid, step, state["hidden"], state["feature_mean"],
                     state["feature_var"], torch.tensor([[0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out.lr, torch.full_like(out.lr, controller.init_lr))
    half = controller(signal, valid, step, state["hidden"], state["feature_mean"],
                      state["feature_var"], torch.tensor([[0.5, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(half.lr, torch.full_like(out.lr, controller.init_lr / 2))


def test_invalid_schedules_are_refused_in_one_line():
    with pytest.raises(ValueError, match="lr_schedule: must be one of"):
        GAROController(features="relative", lr_schedule="linear")
    with pytest.raises(ValueError, match="needs features='relative'"):
        GAROController(lr_schedule="cosine")


def test_a_checkpoint_keeps_its_schedule(tmp_path):
    controller = GAROController(hidden_size=4, features="relative", lr_schedule="cosine")
    path = tmp_path / "cosine.safetensors"
    save_checkpoint(path, controller, optimizer_config={"direction": "adam", "scale": "prodigy"})
    params = [torch.zeros(3, requires_grad=True)]
    assert load_optimizer(path, params).controller.lr_schedule == "cosine"
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, GAROController(hidden_size=4), optimizer_config={})
    assert load_optimizer(plain, params).controller.lr_schedule == "constant"


def test_meta_training_with_the_prior_exports_it(tmp_path):
    """``controller.lr_schedule=cosine`` reaches the trained controller and its checkpoint; a
    bad value is refused naming the key, before any work."""
    from tests.scripts.test_meta_train import ROOT, TINY, _load_script

    script = _load_script()
    config = ["--config", str(ROOT / "configs" / "garo_quadratic.yaml"), *TINY, "steps=2",
              "controller.features=relative", "controller.direction=adam"]
    script.main([*config, f"out_dir={tmp_path / 'run'}", "controller.lr_schedule=cosine"])
    opt = load_optimizer(tmp_path / "run" / "optimizer.safetensors",
                         [torch.zeros(2, requires_grad=True)])
    assert opt.controller.lr_schedule == "cosine"
    with pytest.raises(script.ConfigError, match="controller.lr_schedule"):
        script.main([*config, f"out_dir={tmp_path / 'bad'}", "controller.lr_schedule=linear"])
    assert not (tmp_path / "bad").exists()


def test_a_scheduled_controller_without_a_horizon_warns_once():
    controller = GAROController(hidden_size=4, features="relative", lr_schedule="cosine")
    with pytest.warns(UserWarning, match="num_training_steps"):
        GARO([torch.zeros(2, requires_grad=True)], controller=controller)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GARO([torch.zeros(2, requires_grad=True)], controller=controller, num_training_steps=5)
        GARO([torch.zeros(2, requires_grad=True)],
             controller=GAROController(hidden_size=4, features="relative"))
