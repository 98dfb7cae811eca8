"""State handling of the closure-driven adapters when params come and go, and step-size limits."""
from __future__ import annotations

import pytest
import torch

import metaopt.optim as mo

from .test_conformance import closure_for


def test_a_param_joining_late_keeps_the_others_state():
    """W has no grad on step 1; its arrival must not reset b's clock, velocity or counters."""
    weight = torch.tensor([1.0, -1.0], requires_grad=True)
    bias = torch.tensor([0.5], requires_grad=True)
    opt = mo.NesterovFlow([weight, bias], lr=0.1, t0=1.0)
    opt.step(closure_for(opt, lambda: (bias ** 2).sum()))
    velocity = opt.state[bias]["velocity"].clone()
    assert velocity.abs().sum() > 0
    opt.step(closure_for(opt, lambda: (weight ** 2).sum() + (bias ** 2).sum()))
    assert opt.state[bias]["time"] == pytest.approx(1.2)
    assert opt.state[weight]["time"] == pytest.approx(1.1)  # its own clock started late
    assert opt.state[weight]["accepted"] == opt.state[bias]["accepted"]


def test_adaptive_counters_are_shared_by_params_that_sit_steps_out():
    weight = torch.tensor([1.0, -1.0], requires_grad=True)
    bias = torch.tensor([0.5], requires_grad=True)
    opt = mo.AdaptiveRK([weight, bias], lr=0.1)
    opt.step(closure_for(opt, lambda: (bias ** 2).sum()))
    scale_after_one = opt.state[bias]["step_scale"]
    opt.step(closure_for(opt, lambda: (weight ** 2).sum() + (bias ** 2).sum()))
    assert opt.state[weight]["accepted"] == opt.state[bias]["accepted"] == 2
    assert opt.state[weight]["step_scale"] == opt.state[bias]["step_scale"] >= scale_after_one


@pytest.mark.parametrize("case", ["at_minimum", "lr_zero"])
def test_adaptive_step_scale_stays_bounded(case):
    """A zero error estimate grows the step ×10 per call; it must stop at max_step_scale."""
    start = torch.zeros(3) if case == "at_minimum" else torch.ones(3)
    param = start.clone().requires_grad_()
    opt = mo.AdaptiveRK([param], lr=0.1, max_step_scale=50.0)
    if case == "lr_zero":
        torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
    closure = closure_for(opt, lambda: (param ** 2).sum())
    for _ in range(400):
        opt.step(closure)
    assert opt.state[param]["step_scale"] == 50.0
    assert torch.equal(param.detach(), start)


@pytest.mark.parametrize("cls", [mo.RK4, mo.AdaptiveRK, mo.GradientFlow, mo.NesterovFlow])
def test_invalid_group_hyperparameters_are_refused(cls):
    weight = torch.ones(2, requires_grad=True)
    bias = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        cls([{"params": [weight]}, {"params": [bias], "lr": -0.1}], lr=0.1)
    opt = cls([weight], lr=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [bias], "weight_decay": -1.0})


@pytest.mark.parametrize("cls", [mo.RK4, mo.Heun, mo.AdaptiveRK, mo.GradientFlow])
def test_after_a_step_grad_is_the_gradient_at_the_starting_point(cls):
    weight = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    def loss_fn():
        return (weight ** 4).sum() + weight.prod()

    opt = cls([weight], lr=0.05)
    closure = closure_for(opt, loss_fn)
    for _ in range(3):
        start = weight.detach().clone().requires_grad_()
        (expected,) = torch.autograd.grad((start ** 4).sum() + start.prod(), [start])
        opt.step(closure)
        assert not torch.equal(weight.detach(), start.detach())
        assert torch.equal(weight.grad, expected)


def test_a_closure_failing_mid_step_leaves_params_and_grad_at_the_start():
    weight = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = mo.RK4([weight], lr=0.1)
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("data loader died")
        opt.zero_grad()
        loss = (weight ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="data loader"):
        opt.step(closure)
    assert torch.equal(weight.detach(), torch.tensor([1.0, -2.0]))
    assert torch.equal(weight.grad, torch.tensor([2.0, -4.0]))
