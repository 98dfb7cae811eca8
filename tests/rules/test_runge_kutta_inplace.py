"""The runtime's in-place Runge–Kutta schedule against the pure rule, float64.

``explicit_rk_step`` (the pure, differentiable rule) is the oracle; the tableaus below are built
to reach every branch of the schedule: a sum begun in a slope's own tensors or in a buffer
(when a later stage point still reads that slope), one weighted slope alone, b_0 = 0, a stage
point at θ itself, multi-term rows, per-tensor step sizes and weight decay.
"""
from __future__ import annotations

import weakref

import pytest
import torch

import metaopt.optim as mo
from metaopt.rules.runge_kutta import explicit_rk_step, gradient_slope
from metaopt.rules.runge_kutta_inplace import InPlaceSchedule
from metaopt.rules.tableaus import TABLEAUS, ButcherTableau

from .objectives import closure_over, grad_fn_for, make_tanh_mlp, max_error


def tableau(name, a, b):
    return ButcherTableau(name, 1, tuple(sum(row) for row in a), a, b)


SYNTHETIC = [
    # every a_ij ≠ 0: k_1 is read by stage 3, so the sum cannot start in k_1's tensors (and
    # the final pass is taken from θ: b has fewer nonzero weights than b − a_last)
    tableau("dense4", ((), (0.3,), (0.2, 0.4), (0.1, -0.2, 0.6)), (0.2, 0.3, 0.0, 0.5)),
    # the same rows with every weight nonzero: the final pass adds onto the last stage point
    tableau("dense4_point", ((), (0.3,), (0.2, 0.4), (0.1, -0.2, 0.6)), (0.1, 0.2, 0.3, 0.4)),
    # only k_2 weighted (the lone slope), and stage 1's point is θ itself (a_10 = 0)
    tableau("lone", ((), (0.0,), (0.25, 0.5)), (0.0, 0.0, 1.0)),
    # a stage point at θ after the first stage (row 2 all zero), b_0 = 0
    tableau("theta_point", ((), (0.5,), (0.0, 0.0), (0.3, 0.0, 0.7)), (0.0, 0.5, 0.25, 0.25)),
    # k_1 waits until k_3 arrives (the sum starts as k_3 + k_1 in k_3's tensors), then a fold
    tableau("late_folds", ((), (1.0,), (0.0, 0.5), (0.0, 0.0, 1.0), (0.2, 0.2, 0.2, 0.2)),
            (0.0, 0.3, 0.0, 0.3, 0.4)),
]
FIXED = [t for t in TABLEAUS.values() if not t.adaptive]


def run_schedule(tab, loss, params, lrs, wds, steps):
    """``steps`` in-place steps of ``tab``'s schedule on live float64 tensors."""
    schedule = InPlaceSchedule.of(tab)
    grad_fn = grad_fn_for(loss)
    live = [p.clone() for p in params]
    theta, spare, total = [torch.empty_like(p) for p in live], [], []
    for _ in range(steps):
        first = grad_fn(live)[1]
        kept = list(first)
        torch._foreach_copy_(theta, live)
        schedule.run(live, lambda: grad_fn(live), first, [-h for h in lrs], wds, theta, spare,
                     total)
        assert all(f is k for f, k in zip(first, kept))  # the first gradient is only read
    return live


#: per-tensor step sizes and decays (the per-tensor loops), one step size with and without
#: decay (the foreach ops with one alpha; without decay the first gradient is the slope itself)
HYPERS = {"per_tensor": ([0.15, 0.15, 0.04, 0.04], [1e-2, 0.0, 3e-2, 0.0]),
          "one_lr_decay": ([0.15] * 4, [1e-2, 0.0, 3e-2, 0.0]),
          "one_lr": ([0.15] * 4, [0.0] * 4)}


@pytest.mark.parametrize("hyper", sorted(HYPERS))
@pytest.mark.parametrize("tab", SYNTHETIC + FIXED, ids=lambda t: t.name)
def test_schedule_equals_the_pure_rule(tab, hyper):
    loss, params = make_tanh_mlp(seed=3)
    lrs, wds = HYPERS[hyper]
    pure = [p.clone() for p in params]
    slope_fn = gradient_slope(grad_fn_for(loss), wds)
    for _ in range(5):
        pure = explicit_rk_step(pure, slope_fn, tab, lrs).params
    ours = run_schedule(tab, loss, params, lrs, wds, 5)
    assert max_error(ours, pure) <= 1e-14
    assert max_error(ours, params) > 1e-3  # it moved


def test_schedule_shapes_follow_the_tableau():
    """Classic RK4: y_3 = θ − h k_3 is in the live tensors at the end, so θ_next = y_3 − h Σ d_j k_j
    with d = b − a_4 = (1/6, 1/3, −2/3, 1/6), the sum starting as k_2 + ½ k_1 in k_2's tensors."""
    rk4 = InPlaceSchedule.of(TABLEAUS["rk4"])
    assert rk4.from_point and rk4.in_place
    assert rk4.start == (1, 0, 0.5) and rk4.weight == 1 / 3
    assert rk4.folds == ((), (), ((2, -2.0),), ((3, 0.5),))
    heun = InPlaceSchedule.of(TABLEAUS["heun"])  # θ − h/2 (k_1 + k_2) = y_2 + h/2 k_1 − h/2 k_2
    assert heun.from_point and heun.start == (1, 0, -1.0) and heun.weight == 0.5
    midpoint = InPlaceSchedule.of(TABLEAUS["midpoint"])  # one weighted slope: θ − h k_2
    assert not midpoint.from_point and midpoint.lone == 1
    dense = InPlaceSchedule.of(SYNTHETIC[0])
    assert not dense.in_place and not dense.from_point
    # k_1 is read by stage 3's point after the sum starts
    assert dense.start == (1, 0, pytest.approx(2 / 3))
    assert InPlaceSchedule.of(SYNTHETIC[1]).from_point
    lone = InPlaceSchedule.of(SYNTHETIC[2])
    assert lone.start is None and lone.lone == 2


@pytest.mark.parametrize("method", ["rk4", "heun", "ralston", "midpoint", "heun3"])
def test_closures_see_the_same_number_of_gradient_buffers(method):
    """Every closure ends with as many closure-made gradient tensors alive as every other one
    (after the first step): a buffer more in a later closure than in the first made glibc
    return and re-fault heap memory every step."""
    loss, params = make_tanh_mlp(seed=1)
    live = [p.clone().requires_grad_() for p in params]
    opt = mo.RungeKutta(live, lr=0.05, method=method)
    made, alive_after = [], []
    inner = closure_over(opt, loss, live)

    def closure():
        value = inner()
        made.extend(weakref.ref(p.grad) for p in live)
        alive_after.append(sum(r() is not None for r in made))
        return value
    for _ in range(4):
        opt.step(closure)
    stages = TABLEAUS[method].stages
    steady = alive_after[stages:]
    assert len(set(steady)) == 1, steady
