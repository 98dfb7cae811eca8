"""GARO's step on stacked flat runs (``metaopt.garo.stacked``) against ``vmap`` of the rule's own
step, float64: parameters, every state entry and the meta-gradient, over several steps of runs
at different step counts, horizons and losses, in every direction, scale and feature set.

The oracle is ``torch.func.vmap(GARORule.step)``, the vectorised engine's generic path, which
calls the rule's single copy of the math run by run. Rows carry zero padding, as a flat bucket's
do, so a step that let the padding move (or read it into a run's norms) would differ.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta.batched_unroll import SameShapes, batched_step, stack_tree
from metaopt.meta.learned import GAROLearnedRule

DT = torch.float64
RUNS, WIDTH, PADDING = 5, 9, 3

CONFIGS = [  # direction, scale, features, lr schedule, feature gradients
    ("adam", "prodigy", "relative", "cosine", False),   # the shipped garo_general's
    ("adam", "none", "seed", "constant", False),
    ("adam", "distance", "relative", "constant", False),
    ("sgd", "distance", "seed", "constant", False),
    ("sgd", "none", "relative", "cosine", True),
    ("adam", "prodigy", "relative", "constant", True),
]


def _learned(direction, scale, features, schedule, feature_gradients):
    controller = GAROController(hidden_size=6, features=features, lr_schedule=schedule,
                                init_lr=0.3, init_momentum=0.5,
                                generator=torch.Generator().manual_seed(3))
    rule = GARORule(direction=direction, scale=scale, feature_gradients=feature_gradients)
    return GAROLearnedRule(controller.to(DT), rule)


def _runs(learned, weights, generator):
    """Stacked states of runs with their own lengths, horizons and (already taken) steps."""
    states = []
    for r in range(RUNS):
        length = WIDTH - PADDING + (r % 2)  # rows of two lengths, zero-padded past them
        state = learned.init([torch.zeros(length, dtype=DT)], weights, horizon=20 + 7 * r)
        state = {k: v if not isinstance(v, list) else
                 [torch.nn.functional.pad(v[0], (0, WIDTH - length))] for k, v in state.items()}
        states.append(state)
    params = torch.randn(RUNS, WIDTH, dtype=DT, generator=generator)
    mask = torch.ones(RUNS, WIDTH, dtype=DT)
    for r in range(RUNS):
        mask[r, WIDTH - PADDING + (r % 2):] = 0
    return params * mask, stack_tree(states, SameShapes(), ["flat"],
                                     [[torch.Size([WIDTH])]] * RUNS), mask


def _gradient(params, mask, generator):
    """A quadratic's gradient plus noise: steps that keep their direction, so Prodigy's and
    DoG's estimates grow (random gradients leave them at their floor)."""
    noise = torch.randn(params.shape, dtype=DT, generator=generator)
    return (2 * params + 0.1 * noise) * mask


def _flat_entries(state):
    return {k: v[0] if isinstance(v, list) else v for k, v in state.items()}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_the_stacked_step_equals_vmap_of_the_rule(config):
    learned = _learned(*config)
    weights = {k: v.detach().clone().requires_grad_() for k, v in
               learned.meta_parameters().items()}
    generator = torch.Generator().manual_seed(0)
    params, state, mask = _runs(learned, weights, generator)
    oracle, stacked = batched_step(learned, weights), learned.stacked_step(weights)
    theta = theta_s = params.requires_grad_()
    state_o = state_s = state
    for k in range(5):
        grads = _gradient(theta.detach(), mask, generator) * 10.0 ** (k - 2)
        loss = torch.rand(RUNS, dtype=DT, generator=generator) * 3 - 0.5
        (theta,), state_o = oracle([theta], loss, [grads], state_o)
        (theta_s,), state_s = stacked([theta_s], loss, [grads], state_s)
        torch.testing.assert_close(theta_s, theta, rtol=1e-13, atol=0)
        assert (theta_s * (1 - mask) == 0).all()
        expected, got = _flat_entries(state_o), _flat_entries(state_s)
        assert set(got) == set(expected)
        for key in expected:
            assert got[key].shape == expected[key].shape, key
            assert got[key].dtype == expected[key].dtype, key
            torch.testing.assert_close(got[key], expected[key], rtol=1e-12, atol=1e-300,
                                       msg=lambda m, key=key: f"{key}: {m}")
    objective = lambda t, s: (t * t).sum() + s["lr"].sum() + s["hidden"].square().sum()  # noqa: E731
    inputs = [params, *weights.values()]
    want = torch.autograd.grad(objective(theta, state_o), inputs, allow_unused=True)
    have = torch.autograd.grad(objective(theta_s, state_s), inputs, allow_unused=True)
    for a, b in zip(have, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_the_stacked_step_reads_each_runs_own_values():
    """A run's step count, horizon, loss and reductions are its own: each row stepped alone
    follows the same trajectory as in the bucket, beside runs at other counts."""
    learned = _learned(*CONFIGS[0])
    weights = learned.meta_parameters()
    generator = torch.Generator().manual_seed(1)
    params, state, mask = _runs(learned, weights, generator)
    state = dict(state, step=torch.tensor([0, 3, 7, 1, 12]))
    alone = [(params[r:r + 1], {k: ([v[0][r:r + 1]] if isinstance(v, list) else v[r:r + 1])
                                for k, v in state.items()}) for r in range(RUNS)]
    step = learned.stacked_step(weights)
    with torch.no_grad():
        for _ in range(4):
            grads = _gradient(params, mask, generator)
            loss = torch.rand(RUNS, dtype=DT, generator=generator) + 0.5
            (params,), state = step([params], loss, [grads], state)
            alone = [step([p], loss[r:r + 1], [grads[r:r + 1]], s)
                     for r, (p, s) in enumerate(alone)]
            alone = [(p, s) for (p,), s in alone]
            for r, (p, s) in enumerate(alone):
                torch.testing.assert_close(p[0], params[r], rtol=1e-14, atol=0)
                torch.testing.assert_close(s["prodigy_d"][0], state["prodigy_d"][r],
                                           rtol=1e-14, atol=0)
