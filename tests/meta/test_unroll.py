"""Unrolls call the shared rule code; truncation detaches; schedules; meta-losses."""
from __future__ import annotations

import pytest
import torch

from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import (
    ConstantHorizon,
    GAROLearnedRule,
    LogUniformHorizon,
    MetaLoss,
    TruncatedBPTT,
    segment_length,
    unroll_segment,
)
from metaopt.meta.unroll import initial_run

from .helpers import learned_rule, pool, quadratic_family


def test_untrained_unroll_is_sgd():
    """The untrained controller is SGD(lr=0.01) (its output heads' initial values):
    torch.optim.SGD is the oracle of the meta path's inner trajectory (same minibatches,
    float64)."""
    import tasks
    family = tasks.get("noisy_quadratic", dim=(5, 5), dtype=torch.float64)
    task = family.sample_seed(0)
    assert task.train_batch(torch.Generator().manual_seed(0)) is not None  # minibatches matter
    learned = GAROLearnedRule(GAROController().double(), GARORule())
    weights = learned.meta_parameters()
    names, params, state = initial_run(learned, weights, task)
    result = unroll_segment(learned, weights, task, names, params, state, 6, MetaLoss(),
                            batch_seed=11, differentiable=False)
    # the heads emit constants: lr ≈ 0.01 and wd ≈ 1e-8 up to the float32 rounding of their biases
    lr, wd = float(result.state["lr"][0]), float(result.state["weight_decay"][0])
    assert lr == pytest.approx(0.01, rel=1e-6) and float(result.state["momentum"][0]) == 0.0
    module = task.module()
    sgd = torch.optim.SGD(module.parameters(), lr=lr, weight_decay=wd)
    from metaopt.meta import batch_generator
    generator = batch_generator(11, 0)
    for _ in range(6):
        batch = task.train_batch(generator)
        sgd.zero_grad()
        task.module_loss(module, batch).backward()
        sgd.step()
    for name, p in zip(names, result.params):
        torch.testing.assert_close(p, dict(module.named_parameters())[name].detach(),
                                   rtol=1e-9, atol=1e-9)


def test_truncation_detaches_and_covers_the_horizon():
    family = quadratic_family()
    learned = learned_rule(hidden_size=2)
    runs = pool(learned, family, num_runs=2, truncation_length=7, horizon=17)
    generator = torch.Generator().manual_seed(0)
    lengths = []
    for _ in range(3):
        runs.refresh(learned.meta_parameters(), generator)
        before = runs.runs[0].step
        TruncatedBPTT().estimate(runs, learned.meta_parameters(), generator)
        lengths.append(runs.runs[0].step - before)
        for run in runs.runs:
            assert all(p.grad_fn is None for p in run.params)
            assert all(v.grad_fn is None for v in run.state.values() if torch.is_tensor(v))
    assert lengths == [7, 7, 3]
    assert runs.refresh(learned.meta_parameters(), generator) == 2  # finished runs restart
    assert segment_length(7, 14, 17) == 3 and segment_length(7, 17, 17) == 0


def test_horizon_schedules():
    generator = torch.Generator().manual_seed(0)
    assert ConstantHorizon(30).sample(generator) == 30
    draws = [LogUniformHorizon(10, 1000).sample(generator) for _ in range(2000)]
    assert min(draws) >= 10 and max(draws) <= 1000
    below_100 = sum(d < 100 for d in draws) / len(draws)
    assert 0.45 < below_100 < 0.55  # log-uniform: half the mass below the geometric mean
    with pytest.raises(ValueError, match="min_length"):
        LogUniformHorizon(5, 2)


def test_meta_loss_kinds():
    terms = [torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.25)]
    assert float(MetaLoss("mean").combine(terms)) == pytest.approx(1.75 / 3)
    assert float(MetaLoss("final").combine(terms)) == 0.25
    expected = sum(torch.log(t + 1e-6) for t in terms) / 3
    assert float(MetaLoss("log").combine(terms)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="kind"):
        MetaLoss("median")
    assert bool(MetaLoss(divergence_threshold=10).is_divergent(torch.tensor(11.0)))
    assert bool(MetaLoss().is_divergent(torch.tensor(float("nan"))))
