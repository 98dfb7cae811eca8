"""Adversarial misuse of every metaopt optimizer's step (``specs.SPECS``): non-finite losses and
steps, non-scalar or string losses, empty parameters, GARO's controller shared or on ``meta``.

A refused step leaves the parameters and the optimizer state as they were (bit for bit).
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import metaopt.optim as mo
from metaopt.garo.controller import GAROController
from tasks.test_functions import rosenbrock
from tests.garo.helpers import awake_controller

from .specs import SPECS
from .test_reliability import (
    FOREIGN,
    assert_same,
    closure_for,
    frozen,
    one_line,
    problem,
    spec_params,
    trained,
)


# ------------------------------------------------------------------ the non-finite policy
@spec_params
def test_a_nan_loss_is_refused_warned_and_raises_after_n_in_a_row(spec):
    opt, params, loss_fn = trained(spec, steps=2)
    opt.max_consecutive_skips = 3
    before = frozen(opt, params)
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.step(closure_for(opt, loss_fn, scale=math.nan))
    after = frozen(opt, params)
    assert_same(after[0], before[0])
    assert_same(after[1]["state"], before[1]["state"])
    assert opt.skipped_steps == 2
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        opt.step(closure_for(opt, loss_fn, scale=math.inf))
    assert_same(frozen(opt, params)[0], before[0])
    opt.consecutive_skips = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opt.step(closure_for(opt, loss_fn))  # a finite step trains on
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", ["RK4", "Heun", "GradientFlow", "NesterovFlow"])
def test_a_step_that_turns_non_finite_away_from_theta_is_refused(name):
    """Finite at θ, NaN at every stage point: the new parameters would be NaN."""
    spec = FOREIGN[name]
    opt, params, loss_fn = trained(spec, steps=2)
    start = [p.detach().clone() for p in params]

    def closure():
        opt.zero_grad()
        moved = any(not torch.equal(p, s) for p, s in zip(params, start, strict=True))
        loss = loss_fn() * (math.nan if moved else 1.0)
        loss.backward()
        return loss
    before = frozen(opt, params)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(closure)
    after = frozen(opt, params)
    assert_same(after[0], before[0])
    assert_same(after[1]["state"], before[1]["state"])


def test_hybrid_defaults_on_rosenbrock_keep_the_parameters_finite():
    """HybridGDODE() from (-1.5, 2) went to inf within 12-43 steps, silently."""
    v = torch.tensor([-1.5, 2.0], requires_grad=True)
    opt = mo.HybridGDODE([v])
    last_finite = v.detach().clone()
    refused = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(200):
                def closure():
                    opt.zero_grad()
                    loss = rosenbrock(v)
                    loss.backward()
                    return loss
                opt.step(closure)
                assert torch.isfinite(v).all(), v
                last_finite = v.detach().clone()
        except FloatingPointError as error:
            assert "consecutive" in str(error)
            refused = opt.consecutive_skips
    assert torch.equal(v.detach(), last_finite)
    assert torch.isfinite(v).all()
    if refused:
        assert any("non-finite" in str(w.message) for w in caught)


# ------------------------------------------------------------------ closure-loss misuse
CLOSURE_SPECS = [s for s in SPECS if s.needs_closure]


@pytest.mark.parametrize("spec", CLOSURE_SPECS, ids=str)
@pytest.mark.parametrize("bad, error", [("vector", ValueError), ("string", TypeError)])
def test_a_non_scalar_or_string_loss_is_a_one_line_error(spec, bad, error):
    opt, params, loss_fn = trained(spec, steps=2)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.reshape(1).expand(3) if bad == "vector" else "loss"
    before = frozen(opt, params)
    with pytest.raises(error, match="scalar|not a loss") as raised:
        opt.step(closure)
    one_line(raised)
    assert_same(frozen(opt, params), before)


def test_dcao_over_only_zero_size_parameters_is_a_no_op():
    """Used to raise AttributeError inside Lanczos."""
    empty = torch.zeros(0, 3, requires_grad=True)
    opt = mo.DCAO([empty], probe_every=1)

    def closure():
        opt.zero_grad()
        loss = (empty * 2).sum()
        loss.backward()
        return loss
    for _ in range(3):
        opt.step(closure)
    assert empty.shape == (0, 3) and opt.last_curvature is None


def test_dcao_probe_ignores_zero_size_parameters_beside_real_ones():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    empty = torch.zeros(0, requires_grad=True)
    opt = mo.DCAO([w, empty], probe_every=1, k=1, lanczos_iters=2)

    def closure():
        opt.zero_grad()
        loss = (3 * w.pow(2)).sum() + empty.sum()
        loss.backward()
        return loss
    opt.step(closure)
    assert float(opt.last_curvature.spectral_radius) == pytest.approx(6.0)


# ------------------------------------------------------------------ GARO's controller
def test_garo_over_meta_parameters_leaves_the_callers_controller_alone():
    controller = awake_controller(torch.float32)
    weights = copy.deepcopy(controller.state_dict())
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="meta") as error:
        mo.GARO([meta], controller=controller)
    one_line(error)
    assert all(p.device.type == "cpu" for p in controller.parameters())
    assert_same(controller.state_dict(), weights)


def test_two_garo_built_from_one_controller_share_nothing():
    controller = awake_controller(torch.float32)
    weights = copy.deepcopy(controller.state_dict())
    (a_params, _), (b_params, _) = problem(), problem(seed=1)
    a = mo.GARO(a_params, controller=controller)
    b = mo.GARO(b_params, controller=controller)
    assert a.controller is not controller and a.controller is not b.controller
    other = mo.GARO(problem()[0], controller=awake_controller(torch.float32, seed=5))
    b_before = frozen(b, b_params)
    a.load_state_dict(other.state_dict())
    assert_same(frozen(b, b_params), b_before)
    assert_same(controller.state_dict(), weights)
    assert not torch.equal(a.controller.head_lr.weight, b.controller.head_lr.weight)


def test_garo_does_not_move_the_callers_controller():
    controller = GAROController().to(torch.float64)
    params = [torch.zeros(2, requires_grad=True)]
    opt = mo.GARO(params, controller=controller)
    opt.controller.to(torch.float32)
    assert next(controller.parameters()).dtype == torch.float64
