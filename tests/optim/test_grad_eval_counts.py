"""``num_grad_evals``: every optimizer that takes a closure counts the gradient evaluations its
steps made. Oracle: a closure that counts its own calls (and the tableau's stage count)."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import tasks
from metaopt.evaluation import make_optimizer, run_task
from metaopt.optim import DCAO, GARO, RK4, AdaptiveRK, GradientFlow, Heun, HybridGDODE, NesterovFlow


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    return w, a.T @ a / 6 + torch.eye(6, dtype=torch.float64)


BUILDERS = {
    "rk4": lambda p: RK4(p, lr=0.05),
    "heun": lambda p: Heun(p, lr=0.05),
    "dopri5": lambda p: AdaptiveRK(p, lr=0.05, method="dopri5"),
    "gradient_flow": lambda p: GradientFlow(p, lr=0.05),
    "nesterov_flow": lambda p: NesterovFlow(p, lr=0.05),
    "dcao": lambda p: DCAO(p, lr=0.05, probe_every=2),
    "hybrid": lambda p: HybridGDODE(p, lr=0.05, gd="sgd", ode="rk4", policy="ode"),
    "garo": lambda p: GARO(p),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_count_equals_the_closure_calls_and_survives_state_dict(name):
    w, h = _problem()
    opt = BUILDERS[name]([w])
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        opt.zero_grad()
        loss = 0.5 * w @ h @ w
        loss.backward()
        return loss

    assert opt.num_grad_evals == 0
    for _ in range(4):
        opt.step(closure)
    assert calls > 0 and opt.num_grad_evals == calls
    if name == "rk4":
        assert calls == 4 * 4  # four stages a step
    saved = opt.state_dict()
    assert saved["num_grad_evals"] == calls
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    fresh = BUILDERS[name]([w])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.num_grad_evals == calls  # a resumed run keeps counting
    assert copy.deepcopy(opt).num_grad_evals == calls
    assert pickle.loads(pickle.dumps(opt)).num_grad_evals == calls


def test_a_step_from_p_grad_counts_the_callers_gradient():
    w, h = _problem()
    opt = GARO([w])
    for _ in range(3):
        opt.zero_grad()
        loss = 0.5 * w @ h @ w
        loss.backward()
        opt.step(loss=loss)
    assert opt.num_grad_evals == 3


def test_the_harness_logs_the_optimizers_count():
    task = tasks.get("quadratic", dim=(4, 4), dtype=torch.float64).sample_seed(0)
    result = run_task(task, make_optimizer("metaopt.optim.RK4", lr=0.01), 5, eval_every=5)
    assert result.optimizer_grad_evals == result.grad_evals == 20
    assert result.to_dict()["optimizer_grad_evals"] == 20
    plain = run_task(task, make_optimizer("sgd", lr=0.01), 5, eval_every=5)
    assert plain.optimizer_grad_evals is None and plain.grad_evals == 5
