"""Adversarial misuse of every metaopt optimizer (``specs.SPECS``): foreign or wrong-shape state
dicts, non-finite losses and steps, bad closure losses, shared controllers, empty parameters.

Every refusal must be one line and leave the parameters and the whole optimizer state as they
were, compared bit for bit (``assert_same``); a load that is accepted must leave an optimizer
that steps.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import metaopt
import metaopt.optim as mo
from metaopt.controllers.garo import GAROController
from metaopt.optim._checked_state import StateDictError
from tasks.test_functions import rosenbrock
from tests.rules.garo_helpers import awake_controller

from .specs import SPECS, OptimizerSpec

spec_params = pytest.mark.parametrize("spec", SPECS, ids=str)


def problem(rows: int = 10, seed: int = 0, dtype=torch.float32):
    """(Wx + b)² with W of shape (rows, 5): ``rows`` changes every parameter's shape."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, 5, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(rows, generator=g, dtype=dtype).requires_grad_()
    x = torch.randn(5, generator=g, dtype=dtype)
    return [weight, bias], lambda: (weight @ x + bias).pow(2).sum()


def closure_for(opt, loss_fn, scale: float = 1.0):
    def closure():
        opt.zero_grad()
        loss = loss_fn() * scale
        loss.backward()
        return loss
    return closure


def trained(spec: OptimizerSpec, rows: int = 10, steps: int = 3, seed: int = 0):
    params, loss_fn = problem(rows, seed)
    opt = spec.cls(params, **spec.kwargs)
    for _ in range(steps):
        opt.step(closure_for(opt, loss_fn))
    return opt, params, loss_fn


def frozen(opt, params):
    """Everything a refused action must not change: parameters and the full state dict."""
    return copy.deepcopy(([p.detach() for p in params], opt.state_dict()))


def assert_same(a, b, where="root"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def has_tensor_state(opt) -> bool:
    return any(isinstance(v, torch.Tensor) and v.dim() > 0
               for entry in opt.state.values() for v in entry.values())


# ------------------------------------------------------------- wrong-shape and foreign state
@spec_params
def test_a_state_for_other_shapes_is_refused_and_changes_nothing(spec):
    """GARO over nn.Linear(3, 4) loaded into GARO over nn.Linear(3, 5) used to abort the process
    (free(): invalid next size) at the next step; the others failed a step later."""
    source, _, _ = trained(spec, rows=10)
    target, params, loss_fn = trained(spec, rows=11, seed=1)
    if not has_tensor_state(source):  # nothing has a shape to disagree on: a valid load
        target.load_state_dict(source.state_dict())
        target.step(closure_for(target, loss_fn))
        return
    before = frozen(target, params)
    with pytest.raises(StateDictError, match="shape") as error:
        target.load_state_dict(source.state_dict())
    assert "state_dict['state']" in one_line(error)
    assert_same(frozen(target, params), before)
    target.step(closure_for(target, loss_fn))  # still a working optimizer


@spec_params
def test_a_buffer_of_another_dtype_kind_is_refused(spec):
    opt, params, _ = trained(spec)
    saved = opt.state_dict()
    if not has_tensor_state(opt):  # a scalar slot given a tensor of the parameter's shape
        saved["state"][0] = {key: torch.zeros(10, 5) for key in saved["state"].get(0, {})} \
            or {"bogus": torch.zeros(10, 5)}
        before = frozen(opt, params)
        with pytest.raises(StateDictError):
            opt.load_state_dict(saved)
        assert_same(frozen(opt, params), before)
        return
    entry = saved["state"][0]
    key = next(k for k, v in entry.items() if isinstance(v, torch.Tensor) and v.dim() > 0)
    entry[key] = entry[key].to(torch.int64)
    before = frozen(opt, params)
    with pytest.raises(StateDictError, match="dtype"):
        opt.load_state_dict(saved)
    assert_same(frozen(opt, params), before)


@spec_params
def test_own_state_dict_still_loads_and_resumes_bit_exactly(spec):
    opt, params, loss_fn = trained(spec)
    saved = copy.deepcopy(opt.state_dict())
    twin, twin_params, twin_loss = trained(spec, steps=1)
    with torch.no_grad():
        for p, q in zip(twin_params, params, strict=True):
            p.copy_(q)
    twin.load_state_dict(saved)
    for _ in range(2):
        opt.step(closure_for(opt, loss_fn))
        twin.step(closure_for(twin, twin_loss))
    for p, q in zip(params, twin_params, strict=True):
        assert torch.equal(p, q)


def check_cross_load(source_spec: OptimizerSpec, target_spec: OptimizerSpec) -> None:
    """Either refused with nothing changed, or accepted and the optimizer still steps."""
    source, _, _ = trained(source_spec)
    target, params, loss_fn = trained(target_spec)
    before = frozen(target, params)
    try:
        target.load_state_dict(source.state_dict())
    except StateDictError as error:
        assert "\n" not in str(error)
        assert_same(frozen(target, params), before)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(2):
            target.step(closure_for(target, loss_fn))


FOREIGN = {spec.name: spec for spec in SPECS}


@pytest.mark.parametrize("source, target", [
    ("RK4", "DCAO"), ("DCAO", "RK4"), ("AdaptiveRK-dopri5", "RK4"), ("GARO", "GARO-adam"),
    ("GARO-adam", "GARO"), ("GARO", "GARO-group"), ("HybridGDODE", "HybridGDODE-adam-nesterov"),
    ("HybridGDODE-rmsprop-dopri5", "HybridGDODE"), ("NesterovFlow", "GradientFlow"),
    ("DCAO", "HybridGDODE"), ("GARO", "DCAO"), ("HybridGDODE", "GARO")])
def test_a_foreign_state_dict_is_refused_or_works(source, target):
    """An RK4 state dict used to be accepted by DCAO, which then failed every step."""
    check_cross_load(FOREIGN[source], FOREIGN[target])


def test_rk4_state_in_dcao_is_refused_naming_the_missing_hyperparameter():
    source, _, _ = trained(FOREIGN["RK4"])
    target, params, _ = trained(FOREIGN["DCAO"])
    before = frozen(target, params)
    with pytest.raises(StateDictError, match="momentum") as error:
        target.load_state_dict(source.state_dict())
    one_line(error)
    assert_same(frozen(target, params), before)


@pytest.mark.slow
@pytest.mark.parametrize("target", SPECS, ids=str)
@pytest.mark.parametrize("source", SPECS, ids=str)
def test_every_cross_load_is_refused_or_works(source, target):
    check_cross_load(source, target)


def test_garo_quadratics_state_into_garo_general_changes_nothing():
    """Used to replace lr, buffers and some controller weights, then raise; the next step
    raised KeyError."""
    model_q, model_g = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    opts = []
    for name, model in (("garo_quadratics", model_q), ("garo_general", model_g)):
        opt = metaopt.load_optimizer(name, model.parameters())
        for _ in range(3):
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step(loss=loss)
        opts.append(opt)
    source, target = opts
    if set(source.controller.state_dict()) == set(target.controller.state_dict()) and all(
            v.shape == target.controller.state_dict()[k].shape
            for k, v in source.controller.state_dict().items()):
        pytest.skip("the shipped controllers have the same architecture")
    params = list(model_g.parameters())
    before = frozen(target, params)
    with pytest.raises(StateDictError) as error:
        target.load_state_dict(source.state_dict())
    one_line(error)
    assert_same(frozen(target, params), before)
    target.zero_grad()
    loss = model_g(x).pow(2).mean()
    loss.backward()
    target.step(loss=loss)


def test_garo_corrupt_recurrent_state_is_refused_before_the_buffers_load():
    opt, params, _ = trained(FOREIGN["GARO"])
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 0.5
    saved["garo"]["state"]["hidden"] = saved["garo"]["state"]["hidden"][..., :-1]
    before = frozen(opt, params)
    with pytest.raises(StateDictError, match="hidden"):
        opt.load_state_dict(saved)
    assert_same(frozen(opt, params), before)


def test_garo_controller_of_another_architecture_is_refused_before_anything_loads():
    opt, params, _ = trained(FOREIGN["GARO"])
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 0.5
    saved["state"][0]["momentum_buffer"] = saved["state"][0]["momentum_buffer"] + 1
    saved["garo"]["controller"] = GAROController(hidden_size=7).state_dict()
    before = frozen(opt, params)
    with pytest.raises(StateDictError, match="controller") as error:
        opt.load_state_dict(saved)
    one_line(error)
    assert_same(frozen(opt, params), before)


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
