"""The engine's meta-gradient equals higher's (an independent unrolling library) for GARO.

higher differentiates through ``metaopt.optim.GARO`` via ``metaopt.interop.DifferentiableGARO``
on the task's ``nn.Module``; the engine unrolls the functional loss with the controller evaluated
at its weights. Same tasks, batches and meta-loss (mean of ℓ̂(θ_1..θ_T) on training batches).
"""
from __future__ import annotations

import pytest
import torch

import tasks
from metaopt.garo.optimizer import GARO
from metaopt.garo.rule import GARORule
from metaopt.meta import GAROLearnedRule, MetaLoss, batch_generator, unroll_segment
from metaopt.meta.unroll import initial_run

from .helpers import learned_rule

higher = pytest.importorskip("higher")
pytest.importorskip("metaopt.interop")


def test_meta_gradient_matches_higher():
    task = tasks.get("noisy_quadratic", dim=(4, 4), dtype=torch.float64).sample_seed(1)
    controller = learned_rule(hidden_size=3, feature_gradients=False).module
    steps, seed = 4, 7

    module = task.module()
    generator = batch_generator(seed, 0)
    # GARO steps with its own copy of the controller: the meta-gradient is w.r.t. that copy
    opt = GARO(module.parameters(), controller=controller)
    with higher.innerloop_ctx(module, opt, copy_initial_weights=True) as (fmodel, diffopt):
        terms = []
        for k in range(steps):
            loss = task.module_loss(fmodel, task.train_batch(generator))
            if k > 0:
                terms.append(task.normalized_loss(loss))
            diffopt.step(loss)
        terms.append(task.normalized_loss(task.module_loss(fmodel, task.train_batch(generator))))
        reference = torch.stack(terms).mean()
        expected = torch.autograd.grad(reference, list(opt.controller.parameters()))

    learned = GAROLearnedRule(controller, GARORule())
    weights = learned.meta_parameters()
    names, params, state = initial_run(learned, weights, task)
    result = unroll_segment(learned, weights, task, names, params, state, steps,
                            MetaLoss("mean", "train"), batch_seed=seed)
    torch.testing.assert_close(result.loss, reference, rtol=1e-12, atol=1e-12)
    actual = torch.autograd.grad(result.loss, list(weights.values()))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)
    assert max(float(e.abs().max()) for e in expected) > 1e-6  # not vacuous
