"""The batched GDSearch optimizers equal the pure rules of ``metaopt.rules`` on the options both
express (momentum, coupled decay, betas, alpha): one formula per method, checked across copies."""
from __future__ import annotations

import pytest
import torch

from metaopt.analysis.batched import BatchedOptimizer, batched_gradient
from metaopt.rules.adam import AdamRule
from metaopt.rules.rmsprop import RMSpropRule
from metaopt.rules.sgd import SGDRule
from tasks.test_functions import himmelblau

CASES = [
    ("sgd", {"lr": 0.005, "momentum": 0.9, "weight_decay": 0.01}, SGDRule()),
    ("adam", {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 0.1},
     AdamRule(beta1=0.8, beta2=0.99)),
    ("rmsprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01},
     RMSpropRule(alpha=0.9)),
]


@pytest.mark.parametrize("name, options, rule", CASES, ids=[c[0] for c in CASES])
def test_batched_equals_the_pure_rule(name, options, rule):
    axis = torch.linspace(-4.0, 4.0, 4, dtype=torch.float64)
    x = torch.cartesian_prod(axis, axis)
    grad_fn = batched_gradient(himmelblau)
    batched = BatchedOptimizer(name, options)
    state = batched.init(x)
    hyper = {k: v for k, v in options.items() if k in ("lr", "momentum", "weight_decay")}
    params, rule_state = [x.clone()], rule.init([x])
    for _ in range(25):
        x = batched.step(x, grad_fn, state)
        params, rule_state = rule.apply(params, [grad_fn(params[0])[1]], rule_state, hyper)
    torch.testing.assert_close(x, params[0], rtol=1e-12, atol=1e-12)
