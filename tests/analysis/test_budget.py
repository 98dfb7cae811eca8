"""Equal-budget training against hand-written SGD and Heun steps on the functional loss."""
from __future__ import annotations

import pytest
import torch

import tasks
from metaopt.analysis.budget import train_for_budget
from metaopt.optim import Heun, Ralston


@pytest.fixture(scope="module")
def task():
    family = tasks.get("logistic_regression", datasets=("digits",), l2=(1e-3, 1e-3),
                       batch_sizes=(32,), train_fraction=(0.3, 0.3), dtype=torch.float64)
    return family.sample(torch.Generator().manual_seed(0))


def _grad(task, params, batch):
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    grads = torch.autograd.grad(task.loss(leaves, batch), list(leaves.values()))
    return dict(zip(leaves, grads))


def test_sgd_spends_one_evaluation_per_step(task):
    lr, budget = 0.2, 7
    run = train_for_budget(task, lambda p: torch.optim.SGD(p, lr=lr), budget,
                           generator=torch.Generator().manual_seed(1), eval_every=3)
    assert (run.steps, run.gradient_evaluations, run.evaluations_per_step) == (7, 7, 1.0)
    assert run.curve_evaluations == [0, 3, 6, 7]
    params, batches = task.init_params(), torch.Generator().manual_seed(1)
    for _ in range(budget):
        grads = _grad(task, params, task.train_batch(batches))
        params = {n: params[n] - lr * grads[n] for n in params}
    for name in params:
        torch.testing.assert_close(run.params[name], params[name], rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        assert run.test_loss[-1] == pytest.approx(float(task.loss(params, task.eval_batch("test"))),
                                                  rel=1e-12)
        assert run.test_accuracy[-1] == pytest.approx(
            float(task.accuracy(params, task.eval_batch("test"))))


def test_heun_is_two_evaluations_on_one_batch(task):
    lr, budget = 0.2, 9  # 4 steps fit (8 evaluations); a 5th would need 10
    run = train_for_budget(task, lambda p: Heun(p, lr=lr), budget,
                           generator=torch.Generator().manual_seed(2))
    assert (run.steps, run.gradient_evaluations, run.evaluations_per_step) == (4, 8, 2.0)
    params, batches = task.init_params(), torch.Generator().manual_seed(2)
    for _ in range(4):
        batch = task.train_batch(batches)
        k1 = _grad(task, params, batch)
        k2 = _grad(task, {n: params[n] - lr * k1[n] for n in params}, batch)
        params = {n: params[n] - lr / 2 * (k1[n] + k2[n]) for n in params}
    for name in params:
        torch.testing.assert_close(run.params[name], params[name], rtol=1e-10, atol=1e-12)


def test_equal_budget_steps_and_divergence_flag(task):
    ralston = train_for_budget(task, lambda p: Ralston(p, lr=0.1), 40,
                               generator=torch.Generator().manual_seed(0), eval_every=10)
    sgd = train_for_budget(task, lambda p: torch.optim.SGD(p, lr=0.1), 40,
                           generator=torch.Generator().manual_seed(0), eval_every=10)
    assert (ralston.steps, sgd.steps) == (20, 40)
    assert ralston.gradient_evaluations == sgd.gradient_evaluations == 40
    assert not ralston.diverged and ralston.train_loss[-1] < ralston.train_loss[0]
    blown = train_for_budget(task, lambda p: torch.optim.SGD(p, lr=1e30), 50,
                             generator=torch.Generator().manual_seed(0), eval_every=1)
    assert blown.diverged and blown.steps < 50
