"""Generic torch.optim properties, run over every optimizer in ``specs.SPECS``.

Mirrors the properties PyTorch's own ``test/test_optim.py`` checks for every optimizer.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch

from .specs import SPECS, OptimizerSpec

spec_params = pytest.mark.parametrize("spec", SPECS, ids=str)


def make_problem(contiguous: bool = True, dtype=torch.float32):
    """(Wx + b)², the PyTorch basic-case objective; W optionally a non-contiguous view."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 5, generator=g, dtype=dtype)
    if not contiguous:
        weight = torch.empty(5, 10, dtype=dtype).t().copy_(weight)
        assert not weight.is_contiguous()
    bias = torch.randn(10, generator=g, dtype=dtype)
    x = torch.randn(5, generator=g, dtype=dtype)
    weight.requires_grad_()
    bias.requires_grad_()
    return [weight, bias], lambda: (weight @ x + bias).pow(2).sum()


def weights_only_round_trip(obj):
    """``obj`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def closure_for(opt, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    return closure


def run(opt, loss_fn, steps):
    closure = closure_for(opt, loss_fn)
    for _ in range(steps):
        opt.step(closure)


def without_weight_decay(spec: OptimizerSpec) -> dict:
    return {k: v for k, v in spec.kwargs.items() if k != "weight_decay"}


@spec_params
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "non_contiguous"])
def test_goes_right_direction(spec, contiguous):
    params, loss_fn = make_problem(contiguous)
    opt = spec.cls(params, **spec.kwargs)
    initial = loss_fn().item()
    run(opt, loss_fn, spec.steps)
    final = loss_fn().item()
    assert final < 0.5 * initial, (initial, final)
    # the memory layout of a parameter must not change the trajectory
    reference, ref_loss = make_problem(True)
    run(spec.cls(reference, **spec.kwargs), ref_loss, spec.steps)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p, r)


@spec_params
def test_float64_goes_right_direction(spec):
    params, loss_fn = make_problem(dtype=torch.float64)
    opt = spec.cls(params, **spec.kwargs)
    initial = loss_fn().item()
    run(opt, loss_fn, spec.steps)
    assert loss_fn().item() < 0.5 * initial
    assert all(p.dtype == torch.float64 for p in params)


@spec_params
def test_tiny_lr_group_does_not_move(spec):
    (weight, bias), loss_fn = make_problem()
    bias_before = bias.detach().clone()
    weight_before = weight.detach().clone()
    opt = spec.cls([{"params": [weight]}, {"params": [bias], "lr": 1e-28}], **spec.kwargs)
    run(opt, loss_fn, 5)
    assert torch.equal(bias, bias_before)
    assert not torch.equal(weight, weight_before)


@spec_params
def test_zero_grad_step_is_noop(spec):
    params, _ = make_problem()
    before = [p.detach().clone() for p in params]
    opt = spec.cls(params, **without_weight_decay(spec))
    run(opt, lambda: sum((p * 0).sum() for p in params), 3)
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@spec_params
def test_none_grad_step_is_noop(spec):
    (weight, bias), _ = make_problem()
    bias_before = bias.detach().clone()
    weight_before = weight.detach().clone()
    outsider = torch.ones(3, requires_grad=True)
    opt = spec.cls([weight, bias], **spec.kwargs)
    run(opt, lambda: outsider.pow(2).sum(), 2)  # no param gets a grad
    assert torch.equal(weight, weight_before) and torch.equal(bias, bias_before)
    run(opt, lambda: weight.pow(2).sum(), 2)  # bias has grad None, weight decay included
    assert torch.equal(bias, bias_before)
    assert not torch.equal(weight, weight_before)


@spec_params
def test_state_dict_round_trip_resumes_bit_exactly(spec):
    straight, straight_loss = make_problem()
    run(spec.cls(straight, **spec.kwargs), straight_loss, 20)

    first, first_loss = make_problem()
    opt = spec.cls(first, **spec.kwargs)
    run(opt, first_loss, 10)
    saved = weights_only_round_trip({"optimizer": opt.state_dict(),
                                     "params": [p.detach() for p in first]})

    resumed, resumed_loss = make_problem()
    with torch.no_grad():
        for p, q in zip(resumed, saved["params"]):
            p.copy_(q)
    opt2 = spec.cls(resumed, **spec.kwargs)
    opt2.load_state_dict(saved["optimizer"])
    run(opt2, resumed_loss, 10)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b), (a - b).abs().max()


@spec_params
def test_deepcopy_steps_identically(spec):
    params, _ = make_problem()
    opt = spec.cls(params, **spec.kwargs)
    x = torch.linspace(-1, 1, 5)
    run(opt, lambda: (params[0] @ x + params[1]).pow(2).sum(), 3)
    twin = copy.deepcopy({"params": params, "opt": opt})
    twin_params, twin_opt = twin["params"], twin["opt"]
    assert all(a is not b for a, b in zip(params, twin_params))
    run(opt, lambda: (params[0] @ x + params[1]).pow(2).sum(), 4)
    run(twin_opt, lambda: (twin_params[0] @ x + twin_params[1]).pow(2).sum(), 4)
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)


@spec_params
def test_step_lr_scheduler(spec):
    """StepLR equals the same schedule written into param_groups by hand, step for step
    (``test_lambda_lr_scheduler_zero_freezes_params`` shows group["lr"] is really read: an
    edge-of-stability DCAO may legitimately ignore a larger lr when its 2/ρ cap binds)."""
    def run_with(schedule):
        params, loss_fn = make_problem()
        opt = spec.cls(params, **spec.kwargs)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) \
            if schedule == "step_lr" else None
        closure = closure_for(opt, loss_fn)
        for k in range(6):
            if schedule == "by_hand":
                for group in opt.param_groups:
                    group["lr"] = spec.kwargs["lr"] * 0.5 ** (k // 2)
            opt.step(closure)
            if scheduler is not None:
                scheduler.step()
        return params, opt

    scheduled, opt = run_with("step_lr")
    assert opt.param_groups[0]["lr"] == pytest.approx(spec.kwargs["lr"] * 0.125)
    by_hand, _ = run_with("by_hand")
    assert all(torch.equal(a, b) for a, b in zip(scheduled, by_hand))


@spec_params
def test_lambda_lr_scheduler_zero_freezes_params(spec):
    params, loss_fn = make_problem()
    opt = spec.cls(params, **spec.kwargs)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
    before = [p.detach().clone() for p in params]
    run(opt, loss_fn, 3)
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@spec_params
def test_invalid_arguments_name_the_argument(spec):
    assert spec.invalid, "every optimizer must declare invalid hyperparameters to test"
    for bad, argument in spec.invalid:
        params, _ = make_problem()
        with pytest.raises(ValueError, match=argument):
            spec.cls(params, **{**spec.kwargs, **bad})


@pytest.mark.parametrize("spec", [s for s in SPECS if s.needs_closure], ids=str)
def test_step_without_closure_is_a_clear_error(spec):
    params, loss_fn = make_problem()
    opt = spec.cls(params, **spec.kwargs)
    loss_fn().backward()
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
