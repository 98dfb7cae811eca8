"""Batched optimizers against their oracle: a loop of single torch.optim / metaopt.optim runs
(float64, every start of a small grid, every rule and option combination)."""
from __future__ import annotations

import pytest
import torch

import metaopt.optim as mo
from metaopt.analysis.batched import BatchedOptimizer, batched_gradient, run_batched
from tasks.test_functions import himmelblau, rastrigin, six_hump_camel

CASES = [
    ("sgd", {"lr": 0.01}, torch.optim.SGD),
    ("sgd", {"lr": 0.005, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
     torch.optim.SGD),
    ("sgd", {"lr": 0.005, "momentum": 0.9, "nesterov": True}, torch.optim.SGD),
    ("adam", {"lr": 0.05}, torch.optim.Adam),
    ("adam", {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True},
     torch.optim.Adam),
    ("adamw", {"lr": 0.05, "weight_decay": 0.1}, torch.optim.AdamW),
    ("rmsprop", {"lr": 0.01}, torch.optim.RMSprop),
    ("rmsprop", {"lr": 0.005, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
     torch.optim.RMSprop),
    ("rk4", {"lr": 0.005}, mo.RK4),
    ("heun", {"lr": 0.005, "weight_decay": 0.01}, mo.Heun),
]


def single_run(function, start, cls, options, steps):
    x = torch.nn.Parameter(start.clone())
    opt = cls([x], **options)

    def closure():
        opt.zero_grad()
        loss = function(x)
        loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    return x.detach()


@pytest.mark.parametrize("name, options, cls", CASES,
                         ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_batched_equals_looped_torch_optim(name, options, cls):
    axis = torch.linspace(-4.5, 4.5, 3, dtype=torch.float64)
    starts = torch.cartesian_prod(axis, axis)
    steps = 10 if name in ("rk4", "heun") else 30  # a loop of single runs is the slow side
    run = run_batched(himmelblau, starts, BatchedOptimizer(name, options), steps)
    looped = torch.stack([single_run(himmelblau, s, cls, options, steps) for s in starts])
    torch.testing.assert_close(run.final, looped, rtol=1e-12, atol=1e-12)
    assert (run.diverged_at == -1).all()


def test_gradient_of_the_sum_is_the_per_row_gradient():
    points = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for function in (rastrigin, six_hump_camel):
        values, grads = batched_gradient(function)(points)
        for p, v, g in zip(points, values, grads):
            leaf = p.clone().requires_grad_()
            value = function(leaf)
            value.backward()
            assert float(v) == pytest.approx(float(value), rel=1e-14)
            torch.testing.assert_close(g, leaf.grad, rtol=1e-13, atol=1e-13)


def test_divergence_events_and_recording():
    starts = torch.tensor([[0.1, 0.1], [4.0, 4.0]], dtype=torch.float64)
    run = run_batched(himmelblau, starts, BatchedOptimizer("sgd", {"lr": 0.1}), 30,
                      events={"far": lambda x: x.norm(dim=1) > 100}, record=True)
    assert run.path.shape == (31, 2, 2)
    torch.testing.assert_close(run.path[0], starts)
    assert int(run.diverged_at[1]) > 0 and int(run.events["far"][1]) > 0
    assert int(run.events["far"][1]) <= int(run.diverged_at[1])
    assert not torch.isfinite(run.final[1]).all()


def test_noise_is_reproducible_and_needs_a_generator():
    start = torch.zeros(3, 2, dtype=torch.float64)
    opt = BatchedOptimizer("sgd", {"lr": 0.1})
    a = run_batched(himmelblau, start, opt, 5, noise_std=1.0,
                    generator=torch.Generator().manual_seed(1))
    b = run_batched(himmelblau, start, opt, 5, noise_std=1.0,
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.final, b.final) and not torch.equal(a.final[0], a.final[1])
    with pytest.raises(ValueError, match="generator"):
        run_batched(himmelblau, start, opt, 5, noise_std=1.0)


@pytest.mark.parametrize("name, options, key", [
    ("lbfgs", {}, "name"), ("sgd", {"betas": (0.9, 0.9)}, "options"),
    ("adam", {"lr": float("nan")}, "options.lr"), ("adam", {"betas": (0.9, float("inf"))}, "betas"),
])
def test_bad_optimizer_is_named(name, options, key):
    with pytest.raises(ValueError, match=key):
        BatchedOptimizer(name, options)


def test_the_stacked_form_is_taken_only_where_it_equals_vmap():
    from metaopt.analysis.batched import _stacked_form
    for function in (himmelblau, six_hump_camel, rastrigin):  # over the last dimension
        assert _stacked_form(function, 2) is function

    def coordinates(v):  # written on coordinates: evaluated on X.T
        return v[0] ** 2 + 3 * v[1]

    def reducing(v):  # sums over v written for one point: only vmap evaluates it per row
        return v.sum() ** 2
    x = torch.tensor([[1.0, 2.0], [-0.5, 0.25], [3.0, -1.0]], dtype=torch.float64)
    for function in (coordinates, reducing):
        form = _stacked_form(function, 2)
        assert form is not function
        torch.testing.assert_close(form(x), torch.func.vmap(function)(x), rtol=0, atol=0)
