"""The hybrid rule: switching criteria and the mode-switch update, against independent oracles
(torch.optim / the GD rules for GD steps, torchdiffeq for ODE steps, dense eigvalsh for the
curvature probe, closed-form secants on quadratics)."""
from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from metaopt.hybrid.rule import (
    ConstantSwitch,
    HeuristicSwitch,
    HybridRule,
    lanczos_curvature,
    relative_progress,
    secant_curvature,
    switch_features,
)
from metaopt.rules.nesterov_flow import NesterovFlowRule
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule

D = torch.float64


def quadratic(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    eig = torch.logspace(0, 1.5, n, dtype=D)
    a = q @ torch.diag(eig) @ q.T
    x0 = torch.randn(n, generator=g, dtype=D)

    def grad_fn(points):
        (x,) = points
        return 0.5 * x @ a @ x, [a @ x]
    return a, x0, grad_fn


def hyper(policy, lr=0.05, ode_lr=0.05):
    return {"gd": {"lr": lr, "momentum": 0.9}, "ode": {"lr": ode_lr}, "policy": policy,
            "stability_lr": lr}


def run(rule, x0, grad_fn, policy, steps, **kw):
    params, state = [x0.clone()], rule.init([x0])
    states = []
    for _ in range(steps):
        params, state = rule.step(params, grad_fn, state, hyper(policy, **kw))
        states.append(state)
    return params, states


def test_gd_only_is_momentum_sgd_exactly():
    a, x0, grad_fn = quadratic()
    params, states = run(HybridRule(SGDRule(), RungeKuttaRule("rk4")), x0, grad_fn,
                         ConstantSwitch(0.0), 12)
    x = x0.clone().requires_grad_()
    opt = torch.optim.SGD([x], lr=0.05, momentum=0.9)
    for _ in range(12):
        opt.zero_grad()
        (0.5 * x @ a @ x).backward()
        opt.step()
    torch.testing.assert_close(params[0], x.detach(), rtol=1e-13, atol=1e-14)
    assert [float(s["evaluations"]) for s in states][-1] == 12


def test_ode_only_follows_torchdiffeq_and_counts_stages():
    # torchdiffeq's fixed-grid "rk4" is the 3/8 rule: the hybrid's ODE module with that tableau
    # must reproduce odeint on dθ/dt = −Aθ step for step.
    a, x0, grad_fn = quadratic(1)
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4_38"))
    params, states = run(rule, x0, grad_fn, ConstantSwitch(1.0), 6, ode_lr=0.08)
    t = torch.linspace(0, 0.48, 7, dtype=D)  # h·λ_max = 2.53: inside the stability guard
    oracle = odeint(lambda s, y: -(a @ y), x0, t, method="rk4")[-1]
    torch.testing.assert_close(params[0], oracle, rtol=1e-12, atol=1e-13)
    assert float(states[-1]["evaluations"]) == 6 * 4  # each step: θ's gradient + 3 more stages
    assert all(float(s["mode"]) == 1.0 for s in states)


def test_secant_curvature_is_the_eigenvalue_along_an_eigenvector():
    a, _, grad_fn = quadratic(2)
    lam, vecs = torch.linalg.eigh(a)
    x_prev, x = vecs[:, 3] * 0.7, vecs[:, 3] * 0.2
    kappa = secant_curvature(grad_fn([x])[1], grad_fn([x_prev])[1],
                             torch.linalg.vector_norm(x - x_prev))
    torch.testing.assert_close(kappa, lam[3], rtol=1e-12, atol=0)
    assert float(secant_curvature([x], [x], torch.zeros((), dtype=D))) == 0.0  # did not move


def test_lanczos_probe_finds_the_top_eigenvalue():
    a, x0, grad_fn = quadratic(3, n=8)
    top = torch.linalg.eigvalsh(a).abs().max()
    kappa = lanczos_curvature(grad_fn, [x0], grad_fn([x0])[1], iters=8,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kappa, top, rtol=1e-5, atol=0)


def test_relative_progress_window():
    losses = torch.tensor([4.0, 3.0, 2.0], dtype=D)
    torch.testing.assert_close(relative_progress(losses, 3), torch.tensor(2.0 / 6.0, dtype=D))
    assert float(relative_progress(losses, 2)) == 1.0  # window not full yet: "progressing"


def features(r, s, progress, mode, dwell=10.0):
    t = [torch.tensor(v, dtype=D) for v in (r, s, progress, mode, dwell)]
    return switch_features(*t)


def test_heuristic_each_criterion_and_hysteresis():
    grad = HeuristicSwitch(criteria=("gradient",), grad_threshold=0.01, hysteresis=2.0)
    assert grad.gate(features(math.log(0.005), 0.0, 1.0, 0.0)) == 1  # small gradient: enter ODE
    assert grad.gate(features(math.log(0.015), 0.0, 1.0, 0.0)) == 0
    assert grad.gate(features(math.log(0.015), 0.0, 1.0, 1.0)) == 1  # inside the band: stay
    assert grad.gate(features(math.log(0.025), 0.0, 1.0, 1.0)) == 0  # cleared 2·τ: leave
    curv = HeuristicSwitch(criteria=("curvature",), curvature_threshold=2.0)
    assert curv.gate(features(0.0, math.log(3.0), 1.0, 0.0)) == 1  # lr·κ > 2: GD unstable
    assert curv.gate(features(0.0, math.log(1.5), 1.0, 1.0)) == 1  # not below 2/h yet
    assert curv.gate(features(0.0, math.log(0.9), 1.0, 1.0)) == 0
    stag = HeuristicSwitch(criteria=("stagnation",), stagnation_threshold=1e-3)
    assert stag.gate(features(0.0, 0.0, 1e-4, 0.0)) == 1  # GD stagnates: try ODE
    assert stag.gate(features(0.0, 0.0, 1e-4, 1.0)) == 0  # ODE stagnates: back to GD
    assert stag.gate(features(0.0, 0.0, 0.5, 1.0)) == 1
    both = HeuristicSwitch(criteria=("gradient", "curvature"))
    assert both.gate(features(math.log(0.5), math.log(3.0), 1.0, 0.0)) == 1  # either enters
    assert both.gate(features(math.log(0.5), math.log(1.5), 1.0, 1.0)) == 1  # both must clear
    with pytest.raises(ValueError, match="criteria"):
        HeuristicSwitch(criteria=("nope",))
    with pytest.raises(ValueError, match="hysteresis"):
        HeuristicSwitch(hysteresis=0.5)


class Alternating:
    """A policy that asks for the other mode every step (worst-case chattering)."""
    hard = True

    def gate(self, feats):
        return 1.0 - feats[..., 3]


def test_min_dwell_stops_chattering():
    a, x0, grad_fn = quadratic(4)
    _, states = run(HybridRule(SGDRule(), RungeKuttaRule("heun"), min_dwell=3), x0, grad_fn,
                    Alternating(), 13, lr=0.01, ode_lr=0.01)
    modes = [int(s["mode"]) for s in states]
    runs, current = [], 1
    for previous, mode in zip(modes, modes[1:]):
        current = current + 1 if mode == previous else (runs.append(current) or 1)
    assert modes[0] == 1 and min(runs) == 3 and len(runs) >= 3, modes


def test_relaxed_step_blends_the_two_updates():
    a, x0, grad_fn = quadratic(5)

    class Half:
        hard = False

        def gate(self, feats):
            return torch.full_like(feats[..., 0], 0.3)
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"))
    state = dict(rule.init([x0]), step=1, dwell=torch.tensor(5.0, dtype=D))
    (x,), new = rule.step([x0], grad_fn, state, hyper(Half()))
    (x_gd,), _ = SGDRule().step([x0], grad_fn, SGDRule().init([x0]), {"lr": 0.05,
                                                                        "momentum": 0.9})
    (x_ode,), _ = RungeKuttaRule("rk4").step([x0], grad_fn, {}, {"lr": 0.05})
    torch.testing.assert_close(x, x_gd + 0.3 * (x_ode - x_gd), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(new["evaluations"], torch.tensor(1 + 0.3 * 3, dtype=D))


def test_gd_step_hands_its_motion_to_the_nesterov_velocity():
    a, x0, grad_fn = quadratic(6)
    rule = HybridRule(SGDRule(), NesterovFlowRule("rk4", t0=1.0))
    (x,), state = rule.step([x0], grad_fn, rule.init([x0]), hyper(ConstantSwitch(0.0),
                                                                     ode_lr=0.2))
    torch.testing.assert_close(state["ode"]["velocity"][0], (x - x0) / 0.2)
    assert state["ode"]["time"] == [pytest.approx(1.2)]


def test_ode_step_is_capped_by_the_curvature():
    # h = 1 on curvature ≈ 31.6 diverges for RK4 (|hλ| > 2.8); with ode_cfl the step is 1/κ.
    a, x0, grad_fn = quadratic(7)
    capped = HybridRule(SGDRule(), RungeKuttaRule("rk4"), ode_cfl=1.0)
    params, _ = run(capped, x0, grad_fn, ConstantSwitch(1.0), 30, lr=0.01, ode_lr=1.0)
    assert float(0.5 * params[0] @ a @ params[0]) < 1e-3 * float(0.5 * x0 @ a @ x0)


def test_batched_runs_equal_separate_runs():
    a, _, grad_fn = quadratic(8, n=2)
    starts = torch.tensor([[1.0, -2.0], [0.1, 0.05], [3.0, 3.0]], dtype=D)

    def batched_grad(points):
        (x,) = points
        return 0.5 * ((x @ a) * x).sum(1), [x @ a]
    policy = HeuristicSwitch(criteria=("gradient",), grad_threshold=0.3)
    rule_b = HybridRule(SGDRule(), RungeKuttaRule("rk4"), min_dwell=2, batched=True)
    (xb,) = run(rule_b, starts, batched_grad, policy, 15)[0]
    modes = []
    for i in range(3):
        (x,), states = run(HybridRule(SGDRule(), RungeKuttaRule("rk4"), min_dwell=2),
                           starts[i], grad_fn, policy, 15)
        torch.testing.assert_close(xb[i], x, rtol=1e-12, atol=1e-14)
        modes.append([int(s["mode"]) for s in states])
    assert any(1 in m for m in modes) and any(0 in m for m in modes)


def test_difference_norm_identity_path_is_exact_enough():
    from metaopt.hybrid.rule import difference_norm, run_norms
    g = torch.Generator().manual_seed(9)
    a = [torch.randn(30, 4, generator=g, dtype=D), torch.randn(7, generator=g, dtype=D)]
    for scale in (1.0, 1e-1, 1e-4):  # the last one takes the exact (cancellation-free) path
        b = [x + scale * torch.randn(x.shape, generator=g, dtype=D) for x in a]
        exact = run_norms([x - y for x, y in zip(a, b)])
        fast = difference_norm(a, b, run_norms(a), run_norms(b))
        torch.testing.assert_close(fast, exact, rtol=1e-9, atol=0)
