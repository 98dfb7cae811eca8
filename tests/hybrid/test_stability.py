"""The hybrid's stability guard: the cap against hand computations, its no-op regime, the
undone non-finite step, and the divergent settings it fixes (Rosenbrock from (−1.5, 2))."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import metaopt
from metaopt.hybrid import HybridGDODE
from metaopt.hybrid.rule import ConstantSwitch, HybridRule
from metaopt.hybrid.stability import (
    GD_STABILITY_BOUND,
    SAFETY,
    ode_stability_limit,
    real_stability_bound,
)
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule
from metaopt.rules.tableaus import TABLEAUS
from tasks.test_functions import rosenbrock
from tests.scripts.test_hybrid_scripts import SWITCH_ONLY

D = torch.float64
C_GD = SAFETY * GD_STABILITY_BOUND


def scalar_quadratic(kappa):
    def grad_fn(points):
        (x,) = points
        return 0.5 * kappa * x.square().sum(), [kappa * x]
    return grad_fn


def hyper(policy, lr, ode_lr=None):
    return {"gd": {"lr": lr, "momentum": 0.0}, "ode": {"lr": lr if ode_lr is None else ode_lr},
            "policy": policy, "stability_lr": lr}


def run(rule, x0, grad_fn, policy, steps, lr, ode_lr=None):
    params, state, xs = [x0.clone()], rule.init([x0]), [x0.clone()]
    for _ in range(steps):
        params, state = rule.step(params, grad_fn, state, hyper(policy, lr, ode_lr))
        xs.append(params[0].clone())
    return xs, state


@pytest.mark.parametrize("name, bound", [("euler", 2.0), ("heun", 2.0), ("heun3", 2.5127453266),
                                         ("rk4", 2.7852935634), ("rk4_38", 2.7852935634)])
def test_real_stability_bound_matches_the_literature(name, bound):
    # Hairer & Wanner II, §IV.2: the real stability intervals of explicit RK methods.
    assert real_stability_bound(TABLEAUS[name]) == pytest.approx(bound, abs=1e-9)
    assert ode_stability_limit(RungeKuttaRule(name)) == pytest.approx(SAFETY * bound, abs=1e-9)


def test_gd_past_the_limit_is_capped_at_c_over_kappa():
    # f = ½κx², lr·κ = 8: plain GD multiplies x by 1 − 8 = −7 per step.
    kappa, lr = 4.0, 2.0
    x0 = torch.tensor([1.0], dtype=D)
    xs, _ = run(HybridRule(SGDRule(), RungeKuttaRule("rk4")), x0, scalar_quadratic(kappa),
                ConstantSwitch(0.0), 40, lr)
    # step 0: no curvature known yet (the unguarded step, x → −7x)
    assert float(xs[1]) == pytest.approx(-7.0, rel=1e-14)
    # from step 1 the secant sees κ exactly; lr_eff = c/κ, x → (1 − c)x
    for before, after in zip(xs[1:-1], xs[2:]):
        assert float(after) == pytest.approx((1 - C_GD) * float(before), rel=1e-12)
    # |x_40| = 7·0.9^39 ≈ 0.115 (unguarded GD: 7^40 ≈ 6e33)
    assert abs(float(xs[-1])) == pytest.approx(7 * (C_GD - 1) ** 39, rel=1e-10)


def test_rk4_first_step_past_the_limit_is_re_taken_at_c_over_kappa():
    # Before any secant, the first stage (x − h/2·κx) gives κ exactly on a quadratic.
    kappa, h = 10.0, 1.0
    x0 = torch.tensor([1.0], dtype=D)
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"))
    xs, state = run(rule, x0, scalar_quadratic(kappa), ConstantSwitch(1.0), 1, 0.1, ode_lr=h)
    z = -ode_stability_limit(RungeKuttaRule("rk4"))  # h_eff·κ = c
    assert float(xs[1]) == pytest.approx(1 + z + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24,
                                         rel=1e-12)  # R(z) of RK4
    # θ, the probe at h (refused), the probe at h_eff, whose stage the step reuses, two stages
    assert float(state["evaluations"]) == 1 + 1 + 1 + 2


@pytest.mark.parametrize("slope, x0, h, retakes", [
    (torch.atan, 0.1, 3.4, 2),   # the shorter chord sees more curvature: probed three times
    (torch.sinh, 0.5, 3.0, 8),   # h·κ̂ → c from above: every probe refused, the last h taken
])
def test_a_refused_step_is_probed_at_its_first_stage_and_taken_once(slope, x0, h, retakes):
    """The guard's oracle written out for one coordinate (θ' = −g(θ)): probe the first stage
    y = x − h/2·g(x), κ̂ = |g(y) − g(x)|/|y − x|, h ← c/κ̂ while h·κ̂ > c (at most 8 times), then
    one RK4 step at the last h; each refused probe costs one evaluation, the step two more (it
    reuses its probe's stage) or three after the last refusal."""
    c = ode_stability_limit(RungeKuttaRule("rk4"))
    g = lambda x: float(slope(torch.tensor(x, dtype=D)))  # noqa: E731
    step, refused = h, 0
    for _ in range(8):
        y = x0 - step / 2 * g(x0)
        curvature = abs(g(y) - g(x0)) / abs(y - x0)
        if step * curvature <= c:
            break
        step, refused = c / curvature, refused + 1
    assert refused == retakes
    k1 = g(x0)
    k2 = g(x0 - step / 2 * k1)
    k3 = g(x0 - step / 2 * k2)
    k4 = g(x0 - step * k3)
    want = x0 - step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    calls = []

    def grad_fn(points):
        (x,) = points
        calls.append(1)
        return x.square().sum(), [slope(x)]  # (the loss is not read by a constant switch)
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"))
    x = torch.tensor([x0], dtype=D)
    params, state = rule.step([x], grad_fn, rule.init([x]),
                              hyper(ConstantSwitch(1.0), 0.1, ode_lr=h))
    assert float(params[0]) == pytest.approx(want, rel=1e-13)
    probes = retakes + (retakes < 8)
    assert len(calls) == float(state["evaluations"]) == 1 + probes + (2 if retakes < 8 else 3)


@pytest.mark.parametrize("policy, ode_lr", [(0.0, None), (1.0, 0.05)])
def test_guard_is_a_no_op_within_the_limit(policy, ode_lr):
    # lr·κ = 0.5 (GD), h·κ = 0.25 (RK4): bit-identical to the textbook updates.
    kappa, lr = 5.0, 0.1
    x0 = torch.tensor([1.0, -2.0], dtype=D)
    xs, _ = run(HybridRule(SGDRule(), RungeKuttaRule("rk4")), x0, scalar_quadratic(kappa),
                ConstantSwitch(policy), 10, lr, ode_lr)
    x = x0.clone()
    for got in xs[1:]:
        if policy == 0.0:
            x = x - lr * (kappa * x)
        else:
            z = -ode_lr * kappa
            x = x * (1 + z + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24)
        if policy == 0.0:
            assert torch.equal(got, x)
        else:
            torch.testing.assert_close(got, x, rtol=1e-14, atol=0)


def test_non_finite_step_is_undone_with_the_whole_state():
    def grad_fn(points):
        (x,) = points
        g = torch.where(x.abs() > 5, torch.full_like(x, math.nan), x)
        return 0.5 * x.square().sum(), [g]
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"))
    x0 = torch.tensor([6.0], dtype=D)
    state = rule.init([x0])
    params, new_state = rule.step([x0], grad_fn, state, hyper(ConstantSwitch(0.0), 0.1))
    assert new_state is state and torch.equal(params[0], x0)


def _rosenbrock_final(make, steps=2000, dtype=D):
    x = torch.tensor([-1.5, 2.0], dtype=dtype, requires_grad=True)
    opt = make([x])

    def closure():
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        return loss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            opt.step(closure)
    return float(rosenbrock(x.detach()))


@pytest.mark.parametrize("make", [
    lambda p: HybridGDODE(p),
    lambda p: metaopt.load_optimizer("hybrid_general", p, num_training_steps=2000),
    lambda p: metaopt.load_optimizer(SWITCH_ONLY, p)], ids=["defaults", "hybrid_general",
                                                            "switch_over_sgd"])
def test_shipped_hybrids_do_not_diverge_on_rosenbrock(make):
    final = _rosenbrock_final(make)
    assert math.isfinite(final) and final < 12.5  # f(−1.5, 2) = 12.5


def test_state_dict_resume_is_bit_exact_across_a_guarded_step():
    def make(x):
        return HybridGDODE([x], lr=0.01)

    def closure_for(x, opt):
        def closure():
            opt.zero_grad()
            loss = rosenbrock(x)
            loss.backward()
            return loss
        return closure
    x = torch.tensor([-1.5, 2.0], dtype=D, requires_grad=True)
    opt = make(x)
    for _ in range(5):
        opt.step(closure_for(x, opt))
    saved_x, saved = x.detach().clone(), copy.deepcopy(opt.state_dict())  # torch: references
    for _ in range(40):  # lr·κ ≈ 20 at the start: steps here are guarded
        opt.step(closure_for(x, opt))
    y = saved_x.clone().requires_grad_()
    twin = make(y)
    twin.load_state_dict(saved)
    for _ in range(40):
        twin.step(closure_for(y, twin))
    assert torch.equal(x.detach(), y.detach())
    assert opt.gradient_evaluations == twin.gradient_evaluations


def test_batched_runs_are_guarded_and_undone_independently():
    # run 0: lr·κ = 0.1 (untouched, plain GD); run 1: lr·κ = 8 (capped at c/κ after step 0);
    # run 2 starts where its gradient is NaN: undone, its θ and state stay, the others go on.
    kappa = torch.tensor([[1.0], [80.0], [1.0]], dtype=D)

    def grad_fn(points):
        (x,) = points
        g = torch.where(x.abs() > 50, torch.full_like(x, math.nan), kappa * x)
        return 0.5 * (kappa * x.square()).sum(1), [g]
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"), batched=True)
    x0 = torch.tensor([[1.0], [1.0], [60.0]], dtype=D)
    params, state = [x0.clone()], rule.init([x0])
    xs = [x0.clone()]
    for _ in range(5):
        params, state = rule.step(params, grad_fn, state, hyper(ConstantSwitch(0.0), 0.1))
        xs.append(params[0].clone())
    assert torch.equal(xs[-1][0], x0[0] * 0.9 ** 5)  # untouched GD, bit for bit
    assert float(xs[1][1]) == pytest.approx(-7.0, rel=1e-14)
    for before, after in zip(xs[1:-1], xs[2:]):
        assert float(after[1]) == pytest.approx((1 - C_GD) * float(before[1]), rel=1e-12)
        assert torch.equal(after[2], x0[2])  # the non-finite run never moves
    assert float(state["dwell"][2]) == float(rule.init([x0])["dwell"][2])


def test_a_garo_adam_step_is_not_shortened_by_the_euclidean_guard():
    """On a badly scaled quadratic (curvatures 1 and 1e4) the Euclidean secant says GARO's adam
    steps are past the GD limit — its flat coordinate moves as far as the stiff one — yet they
    are bounded per coordinate by construction: pinned to GD, the hybrid takes exactly GARO's
    steps, through its edge of stability (the Euclidean guard shortened them)."""
    import metaopt.optim as mo
    from metaopt.garo import GAROController
    from tests.optim.test_conformance import run as conformance_run
    curv = torch.tensor([1.0, 1e4], dtype=torch.float64)

    def problem():
        x = torch.nn.Parameter(torch.tensor([3.0, 0.02], dtype=torch.float64))
        return x, lambda: 0.5 * (curv * x * x).sum()

    def run(opt, x, loss, steps):
        conformance_run(opt, loss, steps)
        return x.detach()

    ctrl = GAROController(hidden_size=4, init_lr=0.05, init_momentum=0.5,
                          features="relative").double()
    x, loss = problem()
    hybrid = mo.HybridGDODE([x], gd="garo", controller=ctrl, scale="none", policy="gd",
                            record_trace=True)
    y, loss_y = problem()
    garo = mo.GARO([y], controller=ctrl, direction="adam", scale="none")
    torch.testing.assert_close(run(hybrid, x, loss, 40), run(garo, y, loss_y, 40), rtol=1e-12,
                               atol=0)
    assert max(h["log_stability"] for h in hybrid.history) > math.log(1.9)  # Euclidean: past
