"""The tuning-free contenders of the learned benchmark: built by name from their packages,
Prodigy + cosine against torch's scheduler, schedule-free losses measured in eval mode, and the
speedup charged per gradient evaluation."""
from __future__ import annotations

import math
import sys

import pytest
import torch

import tasks
from metaopt.evaluation import (
    CONTENDERS,
    RunResult,
    make_optimizer,
    optimizer_names,
    run_task,
    speedup_in_grad_evals,
)
from metaopt.task import generator_from_seed

NAMES = sorted(CONTENDERS)
PACKAGES = {"prodigy": "prodigyopt", "prodigy_cosine": "prodigyopt", "dadapt_adam": "dadaptation",
            "dog": "dog", "schedulefree_adamw": "schedulefree"}


def _loss(model, g):
    x = torch.randn(32, 4, generator=g)
    return (model(x) - x.sum(1, keepdim=True)).pow(2).mean()


@pytest.mark.parametrize("name", NAMES)
def test_each_contender_by_name_steps_a_small_model_downhill(name):
    pytest.importorskip(PACKAGES[name])
    assert name in optimizer_names()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    before = [p.detach().clone() for p in model.parameters()]
    hyper = {"total_steps": 50} if name == "prodigy_cosine" else {}
    optimizer = make_optimizer(name, **hyper)(model.parameters())
    g = generator_from_seed(0)
    with torch.no_grad():
        first = float(_loss(model, generator_from_seed(0)))
    for _ in range(50):
        def closure():
            optimizer.zero_grad()
            loss = _loss(model, g)
            loss.backward()
            return loss
        optimizer.step(closure)
    if hasattr(optimizer, "eval"):
        optimizer.eval()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert float(_loss(model, generator_from_seed(0))) < first
    # the documented defaults (lr 1.0 for the distance-estimating methods)
    defaults = optimizer.param_groups[0]
    expected_lr = {"schedulefree_adamw": 0.0025}.get(name, 1.0)
    if name != "prodigy_cosine":  # its lr is annealed
        assert defaults["lr"] == pytest.approx(expected_lr)


def test_prodigy_cosine_is_prodigy_with_torch_cosine_annealing():
    prodigyopt = pytest.importorskip("prodigyopt")
    target = torch.randn(6, generator=generator_from_seed(1), dtype=torch.float64)
    ours = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    theirs = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer("prodigy_cosine", total_steps=8)([ours])
    ref = prodigyopt.Prodigy([theirs], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=8)
    for _ in range(8):
        for p, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            (p - target).pow(2).sum().backward()
            o.step()
        sched.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
    frozen = ours.detach().clone()
    for _ in range(3):  # past the horizon the factor stays 0 (the annealing would rise again)
        opt.zero_grad()
        (ours - target).pow(2).sum().backward()
        opt.step()
    torch.testing.assert_close(ours.detach(), frozen, rtol=0, atol=0)


def test_schedule_free_losses_are_measured_at_its_eval_point():
    schedulefree = pytest.importorskip("schedulefree")
    task = tasks.get("tabular_regression", models=["linear"], dtype=torch.float64).sample_seed(0)
    result = run_task(task, make_optimizer("schedulefree_adamw"), 20, eval_every=20,
                      track_memory=False)
    # the same run by hand, following the package's documentation
    module = task.module()
    optimizer = schedulefree.AdamWScheduleFree(module.parameters())
    optimizer.train()
    g = generator_from_seed(0)
    for _ in range(20):
        batch = task.train_batch(g)
        optimizer.zero_grad()
        task.module_loss(module, batch).backward()
        optimizer.step()
    with torch.no_grad():
        at_y = float(task.module_loss(module, task.eval_batch("train")))
        optimizer.eval()
        at_x = float(task.module_loss(module, task.eval_batch("train")))
    assert result.final_train_loss == pytest.approx(at_x, rel=1e-12)
    assert abs(at_x - at_y) > 1e-6 * abs(at_x)  # the two points differ: the mode matters


def test_a_missing_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "dog", None)  # import dog now raises ImportError
    with pytest.raises(ValueError, match=r"dog-optimizer.*metaopt\[bench\]"):
        make_optimizer("dog")


class TwoEvaluationSGD(torch.optim.Optimizer):
    """Heun-like: evaluates the gradient twice per step (as Runge-Kutta optimizers do)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    def step(self, closure):
        loss = closure()
        closure()
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.sub_(group["lr"] * p.grad)
        return loss


def _run(eval_steps, losses, steps, grad_evals, diverged=False):
    return RunResult("x", "f", "t", 0, 0, steps, steps_completed=steps, diverged=diverged,
                     final_train_loss=losses[-1], grad_evals=grad_evals,
                     eval_steps=eval_steps, eval_train_losses=losses)


def test_speedup_charges_every_gradient_evaluation():
    reference = _run([0, 10, 20, 30, 40], [1.0, 0.5, 0.2, 0.1, 0.05], 40, 40)
    # 10 steps at 2 evaluations each reach 0.2, which Adam reaches after 20 evaluations: 20 / 20
    two_per_step = _run([0, 10], [1.0, 0.2], 10, 20)
    assert speedup_in_grad_evals(reference, two_per_step).value == pytest.approx(1.0)
    one_per_step = _run([0, 10], [1.0, 0.2], 10, 10)
    assert speedup_in_grad_evals(reference, one_per_step).value == pytest.approx(2.0)
    never = speedup_in_grad_evals(reference, _run([0, 10], [1.0, 0.01], 10, 20))
    assert not never.reached and never.value == pytest.approx(40 / 20)  # capped lower bound
    assert speedup_in_grad_evals(reference, _run([0], [math.nan], 3, 6, diverged=True)).value == 0
    # a reference that itself pays 2 per step: its curve is read at 2x the evaluations
    costly = _run([0, 10, 20], [1.0, 0.5, 0.2], 20, 40)
    assert speedup_in_grad_evals(costly, one_per_step).value == pytest.approx(40 / 10)


def test_the_harness_counts_closure_calls_as_gradient_evaluations():
    task = tasks.get("quadratic", dim=(3, 3), dtype=torch.float64).sample_seed(0)
    result = run_task(task, TwoEvaluationSGD, 7, eval_every=7, track_memory=False)
    assert result.grad_evals == 14
