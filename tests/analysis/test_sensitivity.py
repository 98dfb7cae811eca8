"""lr sensitivity against gradient descent on a quadratic, whose losses are known in closed form:
x_t = (1 − lr·h)^t x_0, so L_t = ½ h x_0² (1 − lr·h)^{2t}."""
from __future__ import annotations

import math

import pytest
import torch

from metaopt.analysis.sensitivity import best_lr, function_run, lr_sensitivity

H, X0, STEPS = 4.0, 1.5, 40


def quadratic(x):
    return 0.5 * H * (x ** 2).sum()


def closed_form_final(lr):
    return 0.5 * H * X0 ** 2 * (1 - lr * H) ** (2 * STEPS)


def closed_form_steps(lr, target):
    # smallest t with ½hx0²(1 − lr·h)^{2t} <= target
    return math.ceil(math.log(target / (0.5 * H * X0 ** 2)) / (2 * math.log(abs(1 - lr * H)))
                     - 1e-9)


def test_function_run_is_gradient_descent():
    run = function_run(quadratic, [X0], torch.optim.SGD, STEPS)
    losses = run(0.1)
    expected = 0.5 * H * X0 ** 2 * (1 - 0.1 * H) ** (2 * torch.arange(STEPS + 1,
                                                                      dtype=torch.float64))
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=0)


def test_sensitivity_matches_the_closed_form():
    run = function_run(quadratic, [X0], torch.optim.SGD, STEPS)
    target = 1e-6
    result = lr_sensitivity(run, 0.1, target=target)
    assert result.lrs == pytest.approx([0.09, 0.095, 0.1, 0.105, 0.11])
    for lr, final, hit in zip(result.lrs, result.final_losses, result.steps_to_target):
        assert final == pytest.approx(closed_form_final(lr), rel=1e-10)
        assert hit == closed_form_steps(lr, target)
    finals = [closed_form_final(lr) for lr in result.lrs]
    assert result.final_loss_spread == pytest.approx(max(finals) - min(finals), rel=1e-9)
    assert result.final_loss_ratio == pytest.approx(max(finals) / min(finals), rel=1e-9)
    steps = [closed_form_steps(lr, target) for lr in result.lrs]
    assert result.steps_spread == max(steps) - min(steps)


def test_best_lr_is_the_contraction_optimum_and_edge_of_stability_spreads():
    run = function_run(quadratic, [X0], torch.optim.SGD, STEPS)
    grid = [0.05, 0.1, 0.2, 0.25, 0.3, 0.4]
    best, finals = best_lr(run, grid)
    assert best == 0.25  # 1 − lr·h = 0: solved in one step
    assert finals[grid.index(0.25)] == 0.0
    # Around 2/h = 0.5 (edge of stability) +10 % diverges: the spread is unbounded.
    edge = lr_sensitivity(run, 0.49, target=1e-3)
    assert edge.final_losses[-1] > 1e3 * edge.final_losses[0]
    assert edge.steps_to_target[-1] is None and edge.steps_spread is None


def test_overflow_is_inf_and_bad_arguments_are_named():
    run = function_run(quadratic, [X0], torch.optim.SGD, 2000)
    assert math.isinf(lr_sensitivity(run, 1.0, [0.0]).final_losses[0])
    with pytest.raises(ValueError, match="best"):
        lr_sensitivity(run, -1.0)
    with pytest.raises(ValueError, match="relative"):
        lr_sensitivity(run, 0.1, [-1.0])
