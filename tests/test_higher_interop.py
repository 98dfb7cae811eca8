"""higher.innerloop_ctx through GARO gives metaopt's own functional meta-gradient."""
from __future__ import annotations

import higher
import pytest
import torch
from torch import nn

import metaopt  # noqa: F401  (registers GARO with higher)
from metaopt.garo import GAROHyper, GARORule
from metaopt.interop import DifferentiableGARO
from metaopt.optim import GARO
from tests.garo.helpers import awake_controller

STEPS = 3


def problem():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), \
        torch.randn(8, 1, generator=g, dtype=torch.float64)
    xv, yv = torch.randn(8, 3, generator=g, dtype=torch.float64), \
        torch.randn(8, 1, generator=g, dtype=torch.float64)
    return model, (x, y), (xv, yv)


@pytest.mark.parametrize("direction,granularity", [("sgd", "global"), ("adam", "group")])
def test_higher_meta_gradient_equals_functional_meta_gradient(direction, granularity):
    model, (x, y), (xv, yv) = problem()
    controller = awake_controller()
    layers = list(model.parameters())
    # lr is the base rate: the second group's 0.7·init_lr is the rule's multiplier 0.7
    opt = GARO([{"params": layers[:2]}, {"params": layers[2:], "lr": 0.7 * controller.init_lr}],
               controller=controller, direction=direction, granularity=granularity)
    controller = opt.controller  # GARO steps with its own copy: differentiate w.r.t. that one
    targets = list(controller.parameters()) + layers

    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        assert isinstance(diffopt, DifferentiableGARO)
        for _ in range(STEPS):
            diffopt.step((fmodel(x) - y).pow(2).mean())
        meta_loss_higher = (fmodel(xv) - yv).pow(2).mean()
    grads_higher = torch.autograd.grad(meta_loss_higher, targets)

    names = [n for n, _ in model.named_parameters()]

    def loss_at(ps, inputs, outputs):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (inputs,))
        return (out - outputs).pow(2).mean()

    def grad_fn(ps):
        loss = loss_at(ps, x, y)
        return loss, list(torch.autograd.grad(loss, ps, create_graph=True))

    rule = GARORule(direction=direction)
    ps = list(layers)
    state = rule.init(ps, controller, 2 if granularity == "group" else 1)
    hyper = GAROHyper(controller, lr_scale=[1.0, 1.0, 0.7, 0.7],
                      segment_ids=[0, 0, 1, 1] if granularity == "group" else None)
    for _ in range(STEPS):
        ps, state = rule.step(ps, grad_fn, state, hyper)
    meta_loss_functional = loss_at(ps, xv, yv)
    grads_functional = torch.autograd.grad(meta_loss_functional, targets)

    error = max((a - b).abs().max().item() for a, b in zip(grads_higher, grads_functional))
    scale = max(b.abs().max().item() for b in grads_functional)
    print(f"\nhigher vs functional meta-gradient ({direction}, {granularity}), {STEPS} steps "
          f"float64: max abs error {error:.3e} (largest component {scale:.3e})")
    assert meta_loss_higher.item() == meta_loss_functional.item()
    assert error < 1e-12
    assert grads_functional[0].abs().sum() > 0  # the GRU weights do receive a meta-gradient
    # the live optimizer's state is untouched by the differentiable copy
    assert int(opt.garo_state["step"]) == 0
