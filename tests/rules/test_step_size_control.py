"""Adaptive embedded-pair stepping against torchdiffeq's own controller, float64."""
from __future__ import annotations

import pytest
import torch
from einops import pack, unpack
from torchdiffeq import odeint

import metaopt.optim as mo
from metaopt.rules import AdaptiveRungeKuttaRule, StepRejectedError
from metaopt.rules.step_size_control import step_factor

from .objectives import closure_over, flat_field, grad_fn_for, objectives

OBJECTIVES = [o for o in objectives() if o[0] in ("rosenbrock", "tanh_mlp")]
STEPS = 12


class RecordingField:
    """torchdiffeq vector field that logs every attempt and accepted step through callbacks."""

    def __init__(self, field):
        self.field, self.accepted, self.rejected_before = field, [], []
        self._rejected = 0

    def __call__(self, t, y):
        return self.field(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append((float(t0), y0.clone(), float(dt)))
        self.rejected_before.append(self._rejected)

    def callback_reject_step(self, t0, y0, dt):
        self._rejected += 1


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
@pytest.mark.parametrize("method", ["bosh3", "dopri5"])
def test_trajectory_and_counts_match_torchdiffeq(method, name, loss, params, lr):
    first_step, rtol, atol = 20 * lr, 1e-6, 1e-9
    rule, grad_fn = AdaptiveRungeKuttaRule(method, rtol=rtol, atol=atol), grad_fn_for(loss)
    state, ours, points = rule.init(params), [], params
    for _ in range(STEPS):
        points, state = rule.step(points, grad_fn, state, {"lr": first_step})
        ours.append((state["time"], [p.clone() for p in points], state["rejected"]))

    field, shapes = flat_field(loss, params)
    recorder = RecordingField(field)
    y0 = pack([p.clone() for p in params], "*")[0]
    # torchdiffeq never clips a step to an output time (it interpolates), so integrating far
    # enough records the same accepted sequence whatever the end time.
    odeint(recorder, y0, torch.tensor([0.0, 1.5 * ours[-1][0]], dtype=torch.float64),
           method=method, rtol=rtol, atol=atol, options={"first_step": first_step})
    assert len(recorder.accepted) > STEPS
    for k, (time, point, rejected) in enumerate(ours):
        t0_next, y0_next, _ = recorder.accepted[k + 1]
        assert time == pytest.approx(t0_next, rel=1e-10)
        expected = unpack(y0_next, shapes, "*")
        assert max((a - b).abs().max().item() for a, b in zip(point, expected)) <= 1e-10
        assert rejected == recorder.rejected_before[k + 1]
    assert ours[-1][2] > 0, "pick a first step large enough that some attempts are rejected"


def test_runtime_optimizer_follows_the_rule():
    _, loss, params, lr = OBJECTIVES[1]
    rule, grad_fn = AdaptiveRungeKuttaRule("dopri5", rtol=1e-5, atol=1e-8), grad_fn_for(loss)
    state, points = rule.init(params), params
    live = [p.clone().requires_grad_() for p in params]
    opt = mo.AdaptiveRK(live, lr=lr, method="dopri5", rtol=1e-5, atol=1e-8)
    closure = closure_over(opt, loss, live)
    for _ in range(STEPS):
        points, state = rule.step(points, grad_fn, state, {"lr": lr})
        opt.step(closure)
    assert all(torch.equal(a, b.detach()) for a, b in zip(points, live))
    assert opt.state[live[0]]["accepted"] == STEPS
    assert opt.state[live[0]]["rejected"] == state["rejected"]


def test_step_factor_is_torchdiffeqs_controller():
    # safety·ratio^(−1/order), clipped to [dfactor, ifactor]; never shrinks an accepted step
    assert step_factor(0.0, 5, 0.9, 10.0, 0.2) == 10.0
    assert step_factor(0.5, 5, 0.9, 10.0, 0.2) == pytest.approx(0.9 * 0.5 ** -0.2)
    assert step_factor(0.99, 5, 0.9, 10.0, 0.2) == 1.0
    assert step_factor(2.0, 3, 0.9, 10.0, 0.2) == pytest.approx(0.9 * 2.0 ** (-1 / 3))
    assert step_factor(1e9, 3, 0.9, 10.0, 0.2) == 0.2
    assert step_factor(float("nan"), 3, 0.9, 10.0, 0.2) == 0.2


def test_rejections_are_capped_with_a_clear_error_and_lose_nothing():
    weight = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = mo.AdaptiveRK([weight], lr=1.0, method="bosh3", max_rejections=2)

    def closure():  # a gradient that is non-finite away from the current point
        opt.zero_grad()
        value = (weight ** 2).sum() if torch.equal(weight.detach(), torch.tensor([1.0, -2.0])) \
            else weight.sum() * float("nan")
        value.backward()
        return value
    with pytest.raises(StepRejectedError, match="rejected 3 times"):
        opt.step(closure)
    assert torch.equal(weight.detach(), torch.tensor([1.0, -2.0]))
    assert torch.equal(weight.grad, torch.tensor([2.0, -4.0]))
