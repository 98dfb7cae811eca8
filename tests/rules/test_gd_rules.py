"""The pure GD rules against torch.optim (float64 oracle), several steps, per-group
hyperparameters."""
from __future__ import annotations

import pytest
import torch

from metaopt.rules.adam import AdamRule
from metaopt.rules.rmsprop import RMSpropRule
from metaopt.rules.sgd import SGDRule


def problem():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    params = [torch.randn(4, 3, generator=g, dtype=torch.float64),
              torch.randn(3, generator=g, dtype=torch.float64)]

    def loss_fn(ps):
        return ((a @ ps[0] + ps[1]).tanh() ** 2).sum() + ps[1].pow(4).sum()
    return params, loss_fn


def grad_fn_for(loss_fn):
    def grad_fn(points):
        points = [p.detach().requires_grad_() for p in points]
        with torch.enable_grad():
            loss = loss_fn(points)
            grads = torch.autograd.grad(loss, points)
        return loss.detach(), list(grads)
    return grad_fn


CASES = [
    (SGDRule(), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
     {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    (SGDRule(), lambda ps: torch.optim.SGD(ps, lr=0.1), {"lr": 0.1}),
    (AdamRule(0.8, 0.99, 1e-6), lambda ps: torch.optim.Adam(ps, lr=0.03, betas=(0.8, 0.99),
                                                            eps=1e-6, weight_decay=0.02),
     {"lr": 0.03, "weight_decay": 0.02}),
    (RMSpropRule(0.9, 1e-7), lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-7,
                                                            momentum=0.5, weight_decay=0.01),
     {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01}),
    (RMSpropRule(), lambda ps: torch.optim.RMSprop(ps, lr=0.01), {"lr": 0.01}),
]


@pytest.mark.parametrize("rule, make_torch, hyper", CASES,
                         ids=["sgd_momentum_wd", "sgd", "adam", "rmsprop_momentum", "rmsprop"])
def test_rule_matches_torch_optim_float64(rule, make_torch, hyper):
    params, loss_fn = problem()
    oracle = [p.clone().requires_grad_() for p in params]
    opt = make_torch(oracle)
    state = rule.init(params)
    grad_fn = grad_fn_for(loss_fn)
    before = [p.clone() for p in params]
    for _ in range(8):
        params, state = rule.step(params, grad_fn, state, hyper)
        opt.zero_grad()
        loss_fn(oracle).backward()
        opt.step()
    for p, q, b in zip(params, oracle, before):
        torch.testing.assert_close(p, q.detach(), rtol=1e-12, atol=1e-13)
        assert not torch.equal(p, b)


def test_per_tensor_lr_matches_param_groups():
    params, loss_fn = problem()
    oracle = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.SGD([{"params": [oracle[0]], "lr": 0.1},
                           {"params": [oracle[1]], "lr": 0.01}], momentum=0.5)
    rule, state = SGDRule(), SGDRule().init(params)
    for _ in range(4):
        params, state = rule.step(params, grad_fn_for(loss_fn), state,
                                  {"lr": [0.1, 0.01], "momentum": 0.5})
        opt.zero_grad()
        loss_fn(oracle).backward()
        opt.step()
    for p, q in zip(params, oracle):
        torch.testing.assert_close(p, q.detach(), rtol=1e-12, atol=1e-13)


def test_rules_do_not_mutate_inputs_and_validate():
    params, loss_fn = problem()
    copies = [p.clone() for p in params]
    state = AdamRule().init(params)
    AdamRule().step(params, grad_fn_for(loss_fn), state, {"lr": 0.1})
    assert all(torch.equal(p, c) for p, c in zip(params, copies))
    assert state["step"] == 0 and all(not m.any() for m in state["exp_avg"])
    with pytest.raises(ValueError, match="beta1"):
        AdamRule(beta1=1.0)
    with pytest.raises(ValueError, match="alpha"):
        RMSpropRule(alpha=-0.1)
