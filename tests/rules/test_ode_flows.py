"""GradientFlow and NesterovFlow against independent torchdiffeq solves, float64."""
from __future__ import annotations

import pytest
import torch
from einops import pack, unpack
from torchdiffeq import odeint

import metaopt.optim as mo

from .objectives import flat_field, max_error, objectives, optimizer_trajectory

OBJECTIVES = objectives()
STEPS = 6


def run(cls, loss, params, steps, **kwargs):
    return optimizer_trajectory(cls, loss, params, steps, **kwargs)


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
def test_gradient_flow_fixed_grid_matches_odeint_on_parameters(name, loss, params, lr):
    ours, _ = run(mo.GradientFlow, loss, params, STEPS, lr=lr, method="rk4", step_size=0.25)
    field, shapes = flat_field(loss, params)
    y0 = pack([p.clone() for p in params], "*")[0]
    times = torch.arange(STEPS + 1, dtype=torch.float64) * lr
    oracle = odeint(field, y0, times, method="rk4", options={"step_size": lr / 4})
    for k in range(STEPS):
        assert max_error(ours[k], unpack(oracle[k + 1], shapes, "*")) <= 1e-12


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
def test_gradient_flow_adaptive_tracks_the_exact_flow(name, loss, params, lr):
    ours, opt = run(mo.GradientFlow, loss, params, STEPS, lr=lr, rtol=1e-10, atol=1e-12)
    field, shapes = flat_field(loss, params)
    y0 = pack([p.clone() for p in params], "*")[0]
    times = torch.arange(STEPS + 1, dtype=torch.float64) * lr
    exact = odeint(field, y0, times, method="dopri5", rtol=1e-13, atol=1e-14)
    for k in range(STEPS):
        assert max_error(ours[k], unpack(exact[k + 1], shapes, "*")) <= 1e-8
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["accepted"] >= STEPS and 0 < state["first_step"] <= 10.0


def test_gradient_flow_on_quadratic_is_the_matrix_exponential():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([0.1, 0.5, 1.0, 3.0, 8.0], dtype=torch.float64)) @ q.T
    x0 = torch.randn(5, generator=g, dtype=torch.float64)
    ours, _ = run(mo.GradientFlow, lambda ps: 0.5 * ps[0] @ a @ ps[0], [x0], 4, lr=0.3,
                  rtol=1e-11, atol=1e-13)
    for k in range(4):
        exact = torch.linalg.matrix_exp(-0.3 * (k + 1) * a) @ x0
        assert (ours[k][0] - exact).abs().max() <= 1e-9


def nesterov_oracle(loss, params, t0, horizon):
    """Integrate Ẍ + (3/t)Ẋ + ∇f(X) = 0 from (X0, 0) at t0 directly on [X; V] with dopri5."""
    field, shapes = flat_field(loss, params)
    x0 = pack([p.clone() for p in params], "*")[0]
    n = x0.numel()

    def system(t, y):
        x, v = y[:n], y[n:]
        return torch.cat([v, -(3.0 / t) * v + field(t, x)])
    times = torch.tensor([t0, t0 + horizon], dtype=torch.float64)
    y = odeint(system, torch.cat([x0, torch.zeros_like(x0)]), times, method="dopri5",
               rtol=1e-12, atol=1e-13)
    return unpack(y[-1, :n], shapes, "*"), unpack(y[-1, n:], shapes, "*")


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
def test_nesterov_flow_carries_velocity_and_clock_across_steps(name, loss, params, lr):
    t0 = 0.5
    ours, opt = run(mo.NesterovFlow, loss, params, STEPS, lr=lr, t0=t0, rtol=1e-11, atol=1e-13)
    x, v = nesterov_oracle(loss, params, t0, STEPS * lr)
    assert max_error(ours[-1], x) <= 1e-8
    live = opt.param_groups[0]["params"]
    assert max_error([opt.state[p]["velocity"] for p in live], v) <= 1e-8
    assert opt.state[live[0]]["time"] == pytest.approx(t0 + STEPS * lr)


def test_nesterov_flow_convergence_rate_on_a_quadratic():
    """Su–Boyd–Candès Thm 1: f(X(t)) − f* ≤ 2‖x0 − x*‖² / t² for convex f (started at t ≈ 0)."""
    a = torch.diag(torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64))
    x0 = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    def loss(ps):
        return 0.5 * ps[0] @ a @ ps[0]

    ours, _ = run(mo.NesterovFlow, loss, [x0], 20, lr=0.5, t0=1e-3, rtol=1e-9, atol=1e-11)
    for k, (x,) in enumerate(ours):
        t = 1e-3 + 0.5 * (k + 1)
        assert loss([x]).item() <= 2 * x0.pow(2).sum().item() / t ** 2 + 1e-9
