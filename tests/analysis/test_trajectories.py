"""Trajectories and Adam's effective learning rate against hand-written update equations."""
from __future__ import annotations

import pytest
import torch

from metaopt.analysis.trajectories import (
    adam_effective_lr,
    make_optimizer,
    optimizer_factory,
    run_trajectories,
    run_trajectory,
)
from tasks.test_functions import rosenbrock


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_effective_lr_from_the_gradient_history(amsgrad):
    lr, (b1, b2), eps = 0.05, (0.9, 0.999), 1e-8
    traj = run_trajectory("rosenbrock", (-1.5, 2.0),
                          optimizer_factory("Adam", lr=lr, amsgrad=amsgrad), 25)
    m = torch.zeros(2, dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    v_max = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 26):
        g = traj.gradients[t - 1]  # exact ∇f at x_{t-1}, recomputed independently of the optimizer
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = torch.maximum(v_max, v)
        rate = lr / ((v_max if amsgrad else v) / (1 - b2 ** t)).sqrt().add(eps)
        torch.testing.assert_close(traj.effective_lr[t - 1], rate, rtol=1e-12, atol=0)
        step = traj.path[t] - traj.path[t - 1]
        torch.testing.assert_close(step, -rate * m / (1 - b1 ** t), rtol=1e-10, atol=1e-14)
    # the first step moves every coordinate by lr·g/(|g| + ε): the journal's "shot"
    torch.testing.assert_close(traj.step_lengths[0],
                               torch.tensor(lr * 2 ** 0.5, dtype=torch.float64))


def test_sgd_path_is_gradient_descent_and_losses_are_exact():
    traj = run_trajectory(rosenbrock, (0.0, 0.0), optimizer_factory("SGD", lr=1e-3), 10)
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    for t in range(1, 11):
        (g,) = torch.autograd.grad(rosenbrock(x), x)
        x = (x - 1e-3 * g).detach().requires_grad_()
        torch.testing.assert_close(traj.path[t], x.detach(), rtol=1e-14, atol=1e-15)
    assert float(traj.losses[-1]) == pytest.approx(float(rosenbrock(traj.path[-1])), rel=1e-14)
    assert traj.effective_lr is None and traj.diverged_at is None
    assert traj.distance_to([(1.0, 1.0)])[0] == pytest.approx(2 ** 0.5)


def test_journal_entry_4_divergence_and_its_fix():
    fast = run_trajectory("rosenbrock", (-1.5, 2.0),
                          optimizer_factory("SGD", lr=0.01, momentum=0.99), 500)
    slow = run_trajectory("rosenbrock", (-1.5, 2.0),
                          optimizer_factory("SGD", lr=0.001, momentum=0.99), 500)
    assert fast.diverged_at is not None and fast.path.shape[0] == fast.diverged_at
    assert torch.isfinite(fast.path).all()  # recorded up to the last finite point
    assert slow.diverged_at is None and slow.path.shape == (501, 2)


def test_integrators_and_checkpoints_run_through_the_same_interface():
    runs = run_trajectories("himmelblau", {"rk4": optimizer_factory("RK4", lr=0.01),
                                           "garo": optimizer_factory("garo_quadratics")},
                            [(1.0, 1.0), (-1.0, -1.0)], 20)
    assert [len(v) for v in runs.values()] == [2, 2]
    rk = runs["rk4"][0]
    assert rk.optimizer == "rk4" and rk.losses[-1] < 1e-3 * rk.losses[0]  # RK4 reaches (3, 2)
    assert runs["garo"][1].path.shape[1] == 2


def test_bad_names_are_clear_errors():
    param = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="no_such_opt"):
        make_optimizer("no_such_opt", param)
    with pytest.raises(ValueError, match="test function"):
        run_trajectory("quadratic", (0.0, 0.0), optimizer_factory("SGD", lr=0.1), 1)
    with pytest.raises(TypeError, match="Adam"):
        adam_effective_lr(torch.optim.SGD(param, lr=0.1), param[0])
