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
from metaopt.adapters.state_loading import StateDictError
from metaopt.garo.controller import GAROController

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
