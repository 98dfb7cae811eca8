"""Padded and merged batches of every family of the shipped mixtures, through the ``augmented``
wrapper, against the loop engine (the oracle: each run unrolled on its own), float64.

For each family a pool of runs whose tasks differ in sizes, data shapes, activations, penalties and
loss kinds (so they can share a batch only by padding and by carrying constants as data) is
meta-trained for a few meta-steps by both engines; the meta-gradients, meta-losses and the runs'
parameters must agree to rounding, which fails if any padded coordinate leaks into a loss, a
gradient or the rule's step. The rule is scale-free GARO with the adam direction and relative
features (``configs/garo_general.yaml``): with its step size as emitted, and with DoG's and
Prodigy's scales, which read each tensor's element count — from the counts ``GARORule.init``
recorded, so they pad exactly too and groups mix sizes. A rule that reads the padded tensors'
counts instead (a state without them) must be bucketed by exact shape, and forcing it to pad
must show a difference, which proves the comparison can see a leak.
"""
from __future__ import annotations

import pytest
import torch

import tasks
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import (
    GAROLearnedRule,
    InnerRunPool,
    MetaLoss,
    TruncatedBPTT,
    VectorisedPool,
    make_horizon,
)
from metaopt.meta.batch_plan import rule_pads_exactly

DT = torch.float64

FAMILIES = {
    "point": {"quadratic": {"dim": [2, 5]},
              "noisy_quadratic": {"dim": [2, 5], "noise_std": [0.01, 0.3]},
              "rastrigin_nd": {"dim": [2, 4]}, "himmelblau": {}, "beale": {},
              "six_hump_camel": {}, "styblinski_tang": {}, "ackley": {}},
    "mlp": {"mlp": {"datasets": ["synthetic", "wine"], "width": [3, 7], "depth": [1, 1],
                    "batch_sizes": [8, 16], "synthetic_examples": 48, "synthetic_features": 5,
                    "synthetic_classes": 3, "l2": 1e-3}},
    "linear": {"logistic_regression": {"datasets": ["synthetic"], "batch_sizes": [8, 16],
                                       "synthetic_examples": 48, "synthetic_features": [3, 6],
                                       "synthetic_classes": [2, 4]},
               "least_squares": {"num_features": [2, 6], "num_train": [20, 40]},
               "lasso": {"num_features": [2, 6], "num_train": [20, 40]}},
    "sequence": {"sequence": {"vocab": [3, 5], "length": [4, 6], "hidden": [2, 4],
                              "batch_sizes": [4, 8], "num_train": 12, "num_test": 6}},
    "cnn": {"cnn_digits": {"channels": [1, 3], "batch_sizes": [8, 16], "l2": 1e-3,
                           "train_fraction": [0.05, 0.1]}},
    "autoencoder": {"autoencoder_digits": {"hidden": [3, 6], "bottleneck": [2, 3],
                                           "batch_sizes": [8], "train_fraction": [0.05, 0.1]},
                    "mlp": {"datasets": ["synthetic"], "width": [3, 5], "depth": [3, 3],
                            "batch_sizes": [8], "synthetic_examples": 40}},
}


# families batched by exact architecture (``SupervisedBatch``: vmap of one task's loss)
EXACT_FAMILIES = {
    "resnet": {"resnet_digits": {"channels": [2, 2], "depth": [1, 1], "norms": ["batchnorm"],
                                 "activations": ["relu"], "batch_sizes": [8],
                                 "train_fraction": [0.05, 0.1]}},
    "vit": {"vit_digits": {"patches": [4], "heads": [2], "head_dim": 2, "activations": ["gelu"],
                           "batch_sizes": [8], "train_fraction": [0.05, 0.1]}},
}


def family(name):
    components = {**FAMILIES, **EXACT_FAMILIES}[name]
    return tasks.get("augmented", dtype=DT, loss_scale=[0.1, 10.0], param_scale=[0.5, 2.0],
                     family={"name": "mixture", "kwargs": {"components": components}})


class _PaddedCounts(GAROLearnedRule):
    """Scale-free GARO that counts the (padded) tensors' elements at every step: its state
    lacks the counts ``init`` records, as states made before they were recorded do."""

    def init(self, params, weights, horizon=None):
        state = super().init(params, weights, horizon=horizon)
        state.pop("tensor_numel")
        return state


def learned(scale, cls=GAROLearnedRule):
    controller = GAROController(hidden_size=4, features="relative", init_lr=0.05,
                                generator=torch.Generator().manual_seed(0)).to(DT)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random heads: every weight gets a meta-gradient
        for head in (controller.head_lr, controller.head_momentum,
                     controller.head_weight_decay):
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=generator,
                                                dtype=DT))
    return cls(controller, GARORule(direction="adam", scale=scale))


def run_both(name, scale, *, force_padding=False, steps=2, num_runs=8, cls=GAROLearnedRule):
    rule = learned(scale, cls)
    weights = rule.meta_parameters()
    pools = [cls(rule, family(name), num_runs, 3, make_horizon("log_uniform", min_length=2,
                                                                 max_length=8),
                 MetaLoss("mean", "train", divergence_threshold=100.0))
             for cls in (InnerRunPool, VectorisedPool)]
    if force_padding:
        pools[1]._pads_exactly = True
    generators = [torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)]
    mixed, results = False, []
    for _ in range(steps):
        step = []
        for pool, generator in zip(pools, generators):
            pool.refresh(weights, generator)
            if isinstance(pool, VectorisedPool):
                groups, _ = pool._groups(range(num_runs))
                shapes = [{tuple(p.shape for p in pool.runs[i].params) for i in g}
                          for g in groups]
                mixed |= any(len(s) > 1 for s in shapes)
                assert groups, "nothing batched"
            step.append(TruncatedBPTT().estimate(pool, weights, generator))
        results.append((step, [[list(r.params) if r else None for r in p.runs] for p in pools]))
    return results, mixed


def relative_error(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / max(scale, 1e-300)


def assert_engines_agree(results):
    """Meta-losses, meta-gradients and the runs' parameters (or their resets) of the loop and
    the vectorised engine, per meta-step, agree to rounding."""
    for (loop, vectorised), (loop_params, vec_params) in results:
        assert abs(loop.loss - vectorised.loss) <= 1e-11 * abs(loop.loss)
        assert relative_error(loop.grads, vectorised.grads) <= 1e-10
        for a, b in zip(loop_params, vec_params):
            assert (a is None) == (b is None)
            for p, q in zip(a or [], b or []):
                torch.testing.assert_close(q, p, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("scale", ["none", "distance", "prodigy"])
def test_padded_batches_equal_the_loop(name, scale):
    results, mixed = run_both(name, scale)
    assert mixed  # every scale pads exactly, so sizes share a batch
    assert_engines_agree(results)


@pytest.mark.parametrize("name", sorted(EXACT_FAMILIES))
def test_batches_of_one_architecture_equal_the_loop(name):
    results, _ = run_both(name, "prodigy", num_runs=4)
    assert_engines_agree(results)


def test_the_comparison_sees_a_rule_that_pads_inexactly():
    assert rule_pads_exactly(learned("none"), learned("none").meta_parameters())
    assert rule_pads_exactly(learned("prodigy"), learned("prodigy").meta_parameters())
    inexact = learned("distance", _PaddedCounts)
    assert not rule_pads_exactly(inexact, inexact.meta_parameters())
    results, mixed = run_both("point", "distance", force_padding=True, cls=_PaddedCounts)
    assert mixed
    assert max(relative_error(loop.grads, vec.grads) for (loop, vec), _ in results) > 1e-6


class _KeylessFamily(tasks.TaskFamily):
    """Rosenbrock tasks that opt out of batching."""

    def __init__(self):
        super().__init__(dtype=DT)
        self.inner = tasks.get("rosenbrock", dtype=DT)

    def sample(self, generator):
        task = self.inner.sample(generator)
        task.batch_key = lambda: None
        return task


class _OffPointRule:
    """GARO that also evaluates the gradient away from the current point (as a Runge-Kutta
    stage would): the vectorised engine cannot run it."""

    def __init__(self, inner):
        self.inner, self.module = inner, inner.module

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, params, grad_fn, state, weights):
        grad_fn([p + 1.0 for p in params])
        return self.inner.step(params, grad_fn, state, weights)


def _pool(rule, components):
    return VectorisedPool(rule, tasks.MixtureFamily(components), 8, 3,
                          make_horizon("constant", 4), MetaLoss("mean", "train"))


def test_the_start_up_report_says_what_takes_the_loop_and_why():
    quadratics = tasks.get("quadratic", dim=(2, 5), dtype=DT)
    rule = learned("none")
    text = _pool(rule, [quadratics, _KeylessFamily()]).describe(rule.meta_parameters(), probe=16)
    assert "one flat vector" in text and "no batched form" in text and "TestFunctionTask" in text
    rule = learned("distance", _PaddedCounts)
    text = _pool(rule, [quadratics]).describe(rule.meta_parameters(), probe=16)
    assert "identical parameter shapes" in text and "QuadraticTask" in text  # alone: dims differ
    rule = _OffPointRule(learned("none"))
    text = _pool(rule, [quadratics]).describe(rule.meta_parameters(), probe=16)
    assert "cannot advance stacked runs" in text and "away from the current" in text, text
