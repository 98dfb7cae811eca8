"""Oracle tests for the explicit Runge–Kutta rule, float64."""
from __future__ import annotations

import math

import pytest
import torch
from einops import pack, unpack
from torchdiffeq import odeint

import metaopt.optim as mo
from metaopt.rules import RungeKuttaRule, get_tableau

from .objectives import (
    closure_over,
    flat_field,
    grad_fn_for,
    max_error,
    objectives,
    optimizer_trajectory,
)

#: our tableau name → torchdiffeq's fixed-grid method with the same tableau
SHARED_WITH_TORCHDIFFEQ = {"euler": "euler", "midpoint": "midpoint", "heun": "heun2",
                           "heun3": "heun3", "rk4_38": "rk4"}
STEPS = 8
OBJECTIVES = objectives()


def run_rule(method, loss, params, lr, steps, weight_decay=0.0):
    rule, grad_fn = RungeKuttaRule(method), grad_fn_for(loss)
    state, trajectory = rule.init(params), []
    for _ in range(steps):
        params, state = rule.step(params, grad_fn, state, {"lr": lr, "weight_decay": weight_decay})
        trajectory.append([p.clone() for p in params])
    return trajectory


def run_optimizer(cls, loss, params, lr, steps, **kwargs):
    return optimizer_trajectory(cls, loss, params, steps, lr=lr, **kwargs)[0]


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
@pytest.mark.parametrize("method", sorted(SHARED_WITH_TORCHDIFFEQ))
def test_matches_torchdiffeq_fixed_grid(method, name, loss, params, lr):
    field, shapes = flat_field(loss, params)
    y0, _ = pack([p.clone() for p in params], "*")
    times = torch.arange(STEPS + 1, dtype=torch.float64) * lr
    oracle = odeint(field, y0, times, method=SHARED_WITH_TORCHDIFFEQ[method],
                    options={"step_size": lr})
    ours = run_rule(method, loss, params, lr, STEPS)
    runtime = run_optimizer(mo.RungeKutta, loss, params, lr, STEPS, method=method)
    for k in range(STEPS):
        expected = unpack(oracle[k + 1], shapes, "*")
        assert max_error(ours[k], expected) <= 1e-12
        assert max_error(runtime[k], expected) <= 1e-12


def seed_rk4(x, grad, a):
    """The seed's RK4, written out: k2 = ∇f(x − a/2 k1), …, x − a/6 (k1 + 2k2 + 2k3 + k4)."""
    k1 = grad(x)
    k2 = grad(x - a / 2 * k1)
    k3 = grad(x - a / 2 * k2)
    k4 = grad(x - a * k3)
    return x - a / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def seed_ralston(x, grad, a):
    k1 = grad(x)
    k2 = grad(x - 2 * a / 3 * k1)
    return x - a / 4 * (k1 + 3 * k2)


def seed_heun(x, grad, a):
    k1 = grad(x)
    k2 = grad(x - a * k1)
    return x - a / 2 * (k1 + k2)


@pytest.mark.parametrize("name,loss,params,lr", OBJECTIVES, ids=[o[0] for o in OBJECTIVES])
@pytest.mark.parametrize("method,seed_step,cls", [("rk4", seed_rk4, mo.RK4),
                                                  ("ralston", seed_ralston, mo.Ralston),
                                                  ("heun", seed_heun, mo.Heun)])
def test_matches_seed_formulas(method, seed_step, cls, name, loss, params, lr):
    flat_grad = grad_fn_for(loss)
    _, shapes = pack(list(params), "*")

    def grad(x):
        return pack(flat_grad(unpack(x, shapes, "*"))[1], "*")[0]
    x = pack([p.clone() for p in params], "*")[0]
    ours = run_rule(method, loss, params, lr, STEPS)
    runtime = run_optimizer(cls, loss, params, lr, STEPS)
    for k in range(STEPS):
        x = seed_step(x, grad, lr)
        expected = unpack(x, shapes, "*")
        assert max_error(ours[k], expected) <= 1e-13
        assert max_error(runtime[k], expected) <= 1e-13


def spd_matrix(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(-1, 1, n, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("method", ["rk4", "rk4_38"])
def test_quadratic_step_is_the_degree4_taylor_polynomial_of_the_exact_flow(method):
    a = spd_matrix()
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    h = 0.02
    ours = run_rule(method, lambda ps: 0.5 * ps[0] @ a @ ps[0], [x0], h, 1)[0][0]
    z = -h * a
    eye = torch.eye(6, dtype=torch.float64)
    taylor = (eye + z + z @ z / 2 + z @ z @ z / 6 + z @ z @ z @ z / 24) @ x0
    assert (ours - taylor).abs().max() <= 1e-14
    exact = torch.linalg.matrix_exp(z) @ x0
    # Taylor remainder: |hλ_max|^5 / 5! · |x0| with λ_max = 10
    assert (ours - exact).abs().max() <= (h * 10) ** 5 / 120 * x0.abs().max()


def one_step_error(method, loss, params, h, exact_flow):
    ours = run_rule(method, loss, params, h, 1)[0]
    return max_error(ours, exact_flow(h))


@pytest.mark.parametrize("method", ["euler", "heun", "ralston", "midpoint", "heun3", "rk4",
                                    "rk4_38"])
def test_order_on_quadratic_against_matrix_exponential(method):
    a = spd_matrix()
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    order = get_tableau(method).order
    def loss(ps):
        return 0.5 * ps[0] @ a @ ps[0]

    def exact(h):
        return [torch.linalg.matrix_exp(-h * a) @ x0]

    e1 = one_step_error(method, loss, [x0], 0.04, exact)
    e2 = one_step_error(method, loss, [x0], 0.02, exact)
    assert math.log2(e1 / e2) == pytest.approx(order + 1, abs=0.25)


@pytest.mark.parametrize("method", ["euler", "heun", "ralston", "heun3", "rk4", "rk4_38"])
def test_order_on_tanh_mlp_against_tight_dopri5(method):
    _, loss, params, _ = OBJECTIVES[2]
    field, shapes = flat_field(loss, params)
    y0, _ = pack([p.clone() for p in params], "*")

    def exact(h):
        y = odeint(field, y0, torch.tensor([0.0, h], dtype=torch.float64), method="dopri5",
                   rtol=1e-13, atol=1e-14)
        return unpack(y[-1], shapes, "*")
    order = get_tableau(method).order
    e1 = one_step_error(method, loss, params, 0.05, exact)
    e2 = one_step_error(method, loss, params, 0.025, exact)
    assert math.log2(e1 / e2) == pytest.approx(order + 1, abs=0.15)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "ralston", "heun3", "rk4",
                                    "rk4_38"])
def test_in_place_runtime_path_equals_pure_rule(method):
    """The benchmark-driven in-place path against the pure rule, with decay and two lrs."""
    _, loss, params, _ = OBJECTIVES[2]
    lrs, wds = [0.2, 0.2, 0.05, 0.05], [1e-2, 1e-2, 0.0, 0.0]
    rule, grad_fn = RungeKuttaRule(method), grad_fn_for(loss)
    pure = [p.clone() for p in params]
    live = [p.clone().requires_grad_() for p in params]
    opt = mo.RungeKutta([{"params": live[:2], "lr": 0.2, "weight_decay": 1e-2},
                         {"params": live[2:], "lr": 0.05}], method=method)
    closure = closure_over(opt, loss, live)
    for _ in range(STEPS):
        pure, _ = rule.step(pure, grad_fn, {}, {"lr": lrs, "weight_decay": wds})
        opt.step(closure)
    assert max_error(pure, [p.detach() for p in live]) <= 1e-14
