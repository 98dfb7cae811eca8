"""GARO with ``scale="prodigy"``: lr_t multiplies Prodigy's online distance estimate ``d_t``.

Oracle: the reference package ``prodigyopt``. Its ``d`` update reads only the gradients, the
iterates, the initial point and ``lr·d``; fed GARO's gradients and iterates and told GARO's
multiplier as its lr, its ``d`` must be GARO's at every step (float64). Behaviour: an untrained
controller (a constant multiplier) reaches targets six orders of magnitude apart, and a loss
scaled by any constant leaves the trajectory unchanged.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.garo import GARO, GAROController, GARORule

from .helpers import awake_controller, regression

prodigyopt = pytest.importorskip("prodigyopt")


def test_d_equals_prodigyopt_fed_the_same_trajectory_float64():
    params, loss_fn = regression()
    controller = awake_controller(features="relative")
    rule = GARORule(direction="adam", scale="prodigy")
    state = rule.init(params, controller, 1, horizon=40)
    n = sum(p.numel() for p in params)
    floor = 1e-4 * (1 + float(torch.cat([p.reshape(-1) for p in params]).norm()) / n ** 0.5)
    shadow = [p.clone().requires_grad_(False) for p in params]
    reference = prodigyopt.Prodigy(shadow, lr=1.0, betas=(0.9, rule.beta2), d0=floor,
                                   weight_decay=0.0)
    hyper = {"controller": controller}
    grown = []
    for _ in range(40):
        tracked = [p.detach().clone().requires_grad_() for p in params]
        loss = loss_fn(tracked)
        grads = list(torch.autograd.grad(loss, tracked))
        before = [p.clone() for p in params]
        with torch.no_grad():  # (no meta-gradient here: no graph across steps)
            params, state = rule.apply(params, grads, state, hyper, loss=loss.detach())
        d_t = float(state["prodigy_d"][0])
        # Prodigy's d before its step is the one GARO's step used (d_t): check, then step it
        assert reference.param_groups[0]["d"] == pytest.approx(d_t, rel=1e-10, abs=0)
        multiplier = float(state["lr"][0]) / d_t  # GARO's lr_t; Prodigy's lr·d is its step size
        reference.param_groups[0]["lr"] = multiplier
        for p, b, g in zip(shadow, before, grads):
            p.copy_(b)
            p.grad = g.clone()
        reference.step()
        grown.append(d_t / floor)
    assert max(grown) > 100  # the estimate really grew, so every branch was compared


def _run(distance: float, steps: int = 300, loss_scale: float = 1.0) -> torch.Tensor:
    target = torch.full((10,), distance, dtype=torch.float64)
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    controller = GAROController(hidden_size=4, features="relative", init_lr=0.1,
                                init_momentum=0.9).double()
    opt = GARO([x], controller=controller, direction="adam", scale="prodigy",
               num_training_steps=steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_scale * 0.5 * (x - target).square().sum()
        loss.backward()
        opt.step(loss=loss)
    return x.detach()


@pytest.mark.parametrize("distance", [1e-3, 1.0, 1e3])
def test_prodigy_scale_reaches_targets_at_any_distance(distance):
    x = _run(distance)
    target = torch.full_like(x, distance)
    assert float((x - target).norm() / target.norm()) < 0.05


def test_prodigy_scale_is_invariant_to_the_loss_scale():
    reference = _run(1.0, steps=50)
    for scale in (1e-2, 1e2):
        assert torch.allclose(_run(1.0, steps=50, loss_scale=scale), reference, rtol=1e-9,
                              atol=1e-12)


def test_prodigy_scale_needs_the_adam_direction():
    with pytest.raises(ValueError, match="direction='adam'"):
        GARORule(direction="sgd", scale="prodigy")
