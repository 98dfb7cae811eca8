"""The runtime optimizer's flat buffers (``metaopt.garo.flat``): the same step as the per-tensor
path, bit for bit, and the pure ``GARORule.apply`` in float64.

Oracles: the per-tensor path of the same optimizer (flat buffers switched off: what a step
under ``torch.compile`` runs), which ``tests/garo/test_runtime.py`` ties to ``apply``; and
``apply`` itself. A buffer replaced from outside (``load_state_dict``, a hand edit) must be read,
never a stale flat copy.
"""
from __future__ import annotations

import copy

import pytest
import torch

from metaopt.garo import GAROHyper, GARORule, runtime
from metaopt.garo.flat import FlatBuffers
from metaopt.optim import GARO

from .helpers import awake_controller, regression

SCALES = ["none", "distance", "prodigy"]


def _optimizer(params, scale, dtype=torch.float32, groups=False, **kwargs):
    controller = awake_controller(dtype=dtype, features="relative", lr_schedule="cosine")
    live = [p.clone().requires_grad_() for p in params]
    if groups:  # two update buckets: the per-tensor path on the same (flat) buffers
        live_groups = [{"params": live[:2]}, {"params": live[2:], "lr": 0.02}]
        return live, GARO(live_groups, controller=controller, direction="adam", scale=scale,
                          num_training_steps=40, **kwargs)
    return live, GARO(live, controller=controller, direction="adam", scale=scale,
                      num_training_steps=40, **kwargs)


def _per_tensor(monkeypatch):
    """Optimizers built from now on keep per-tensor buffers."""
    monkeypatch.setattr(GARO, "_flat_buffers", lambda self, params, states: FlatBuffers(
        params, states, (), eligible=False))


def _run(opt, live, loss_fn, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(live)
        loss.backward()
        opt.step(loss=loss)


def _is_flat(opt, live) -> bool:
    """Whether every buffer of ``live`` is a view of one storage per kind."""
    return all(len({opt.state[p][key].untyped_storage().data_ptr() for p in live}) == 1
               for key in opt.rule.per_tensor_keys)


def _same(a_live, a_opt, b_live, b_opt) -> bool:
    same = all(torch.equal(a, b) for a, b in zip(a_live, b_live))
    for p, q in zip(a_live, b_live):
        same &= all(torch.equal(a_opt.state[p][k], b_opt.state[q][k])
                    for k in a_opt.rule.per_tensor_keys)
    ga, gb = a_opt.garo_state, b_opt.garo_state
    return same and all(torch.equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("weight_decay_scale", [1.0, 0.0])
@pytest.mark.parametrize("scale", SCALES)
def test_flat_step_equals_the_per_tensor_step_bit_for_bit(monkeypatch, scale,
                                                          weight_decay_scale, groups):
    params, loss_fn = regression(dtype=torch.float32)
    flat_live, flat_opt = _optimizer(params, scale, groups=groups,
                                     weight_decay_scale=weight_decay_scale)
    _run(flat_opt, flat_live, loss_fn, 12)
    assert _is_flat(flat_opt, flat_live)
    _per_tensor(monkeypatch)
    live, opt = _optimizer(params, scale, groups=groups, weight_decay_scale=weight_decay_scale)
    _run(opt, live, loss_fn, 12)
    assert not _is_flat(opt, live)
    assert _same(flat_live, flat_opt, live, opt)
    assert not torch.equal(flat_live[0], params[0])  # (the run moved)


def _lockstep_with_the_rule(opt, live, params, loss_fn, scale, steps=20):
    """``steps`` runtime steps of ``opt`` on ``live`` and, beside them, the functional
    ``GARORule`` (the reference) from ``params`` with the same controller: the rule, its
    iterates and its state."""
    rule, controller = GARORule(direction="adam", scale=scale), copy.deepcopy(opt.controller)
    ps = [p.clone() for p in params]
    state = rule.init(ps, controller, 1, horizon=40)
    for _ in range(steps):
        _run(opt, live, loss_fn, 1)
        tracked = [p.clone().requires_grad_() for p in ps]
        loss = loss_fn(tracked)
        grads = torch.autograd.grad(loss, tracked)
        ps, state = rule.apply(ps, list(grads), state, GAROHyper(controller), loss=loss.detach())
    return rule, ps, state

@pytest.mark.parametrize("scale", SCALES)
def test_flat_step_equals_the_functional_step_float64(scale):
    params, loss_fn = regression(dtype=torch.float64)
    live, opt = _optimizer(params, scale, dtype=torch.float64)
    rule, ps, state = _lockstep_with_the_rule(opt, live, params, loss_fn, scale)
    assert _is_flat(opt, live)
    error = max((a - b).abs().max().item() for a, b in zip(live, ps))
    for key, value in opt.garo_state.items():
        error = max(error, (value.double() - state[key].double()).abs().max().item())
    for key in rule.per_tensor_keys:
        error = max([error] + [(opt.state[p][key] - b).abs().max().item()
                               for p, b in zip(live, state[key])])
    assert error < 1e-12


@pytest.mark.parametrize("scale", SCALES)
def test_resume_and_replaced_buffers_continue_bit_exactly(monkeypatch, scale):
    params, loss_fn = regression(dtype=torch.float32)
    live, opt = _optimizer(params, scale)
    _run(opt, live, loss_fn, 5)
    saved = copy.deepcopy(opt.state_dict())
    resumed_live = [p.detach().clone().requires_grad_() for p in live]
    _, resumed = _optimizer(params, scale)
    resumed.param_groups[0]["params"] = resumed_live
    resumed.load_state_dict(saved)
    for o, ps in ((opt, live), (resumed, resumed_live)):  # a hand edit of one buffer
        o.state[ps[1]]["momentum_buffer"] = torch.full_like(ps[1], 0.01)
        _run(o, ps, loss_fn, 5)
    assert _is_flat(resumed, resumed_live)
    assert _same(live, opt, resumed_live, resumed)
    _per_tensor(monkeypatch)  # the same run on the per-tensor path
    ref_live, ref = _optimizer(params, scale)
    _run(ref, ref_live, loss_fn, 5)
    ref.state[ref_live[1]]["momentum_buffer"] = torch.full_like(ref_live[1], 0.01)
    _run(ref, ref_live, loss_fn, 5)
    assert _same(live, opt, ref_live, ref)


def _rosenbrock(ps):
    x, y = ps[0][0], ps[0][1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


@pytest.mark.parametrize("weight_decay_scale", [1.0, 0.0])
@pytest.mark.parametrize("scale", SCALES)
def test_a_one_tensor_model_steps_flat_and_as_the_per_tensor_path(monkeypatch, scale,
                                                                  weight_decay_scale):
    # a test function (one 2-element tensor) takes the flat path: its plain ops cost less
    # than foreach ones over one tensor; same bits as the per-tensor reads and updates
    params = [torch.tensor([-1.5, 2.0])]
    flat_live, flat_opt = _optimizer(params, scale, weight_decay_scale=weight_decay_scale)
    _run(flat_opt, flat_live, _rosenbrock, 12)
    assert flat_opt._flat.flat is not None
    assert flat_opt.state[flat_live[0]]["exp_avg_sq"].data_ptr() == \
        flat_opt._flat.flat["exp_avg_sq"].data_ptr()
    _per_tensor(monkeypatch)
    monkeypatch.setattr(runtime, "one_bucket", lambda *args: False)  # per-tensor reads too
    live, opt = _optimizer(params, scale, weight_decay_scale=weight_decay_scale)
    _run(opt, live, _rosenbrock, 12)
    assert opt._flat is None  # (never built)
    assert _same(flat_live, flat_opt, live, opt)
    assert not torch.equal(flat_live[0], params[0])  # (the run moved)


def test_a_one_tensor_model_steps_as_the_functional_rule_float64():
    params = [torch.tensor([-1.5, 2.0], dtype=torch.float64)]
    live, opt = _optimizer(params, "prodigy", dtype=torch.float64)
    _, ps, state = _lockstep_with_the_rule(opt, live, params, _rosenbrock, "prodigy")
    assert opt._flat.flat is not None
    assert (live[0] - ps[0]).abs().max().item() < 1e-12
    for key, value in opt.garo_state.items():
        assert (value.double() - state[key].double()).abs().max().item() < 1e-12, key


def test_a_step_follows_its_buckets_when_a_group_lr_changes_float64():
    """Whether a step has one update bucket (``one_bucket``, whose answer the optimizer keeps
    while its hyper stays) follows the groups: a group whose lr changes mid-run (two buckets,
    then one again) steps as the functional rule with those multipliers."""
    params, loss_fn = regression(dtype=torch.float64)
    controller = awake_controller(dtype=torch.float64, features="relative", lr_schedule="cosine")
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO([{"params": live[:2]}, {"params": live[2:]}], controller=controller,
               direction="adam", scale="prodigy", num_training_steps=40)
    rule, reference = GARORule(direction="adam", scale="prodigy"), copy.deepcopy(opt.controller)
    ps = [p.clone() for p in params]
    state = rule.init(ps, reference, 1, horizon=40)
    base = opt.param_groups[0]["lr"]
    for factor in (1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 0.5, 1.0):
        opt.param_groups[1]["lr"] = base * factor
        _run(opt, live, loss_fn, 1)
        tracked = [p.clone().requires_grad_() for p in ps]
        loss = loss_fn(tracked)
        grads = torch.autograd.grad(loss, tracked)
        ps, state = rule.apply(ps, list(grads), state,
                               GAROHyper(reference, lr_scale=[1.0, 1.0, factor]),
                               loss=loss.detach())
    assert opt._flat.flat is not None
    error = max((a - b).abs().max().item() for a, b in zip(live, ps))
    for key, value in opt.garo_state.items():
        error = max(error, (value.double() - state[key].double()).abs().max().item())
    assert error < 1e-12
