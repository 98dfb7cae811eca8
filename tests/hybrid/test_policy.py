"""The switching policy: untrained behaviour, purity under functional_call, gradients."""
from __future__ import annotations

import pytest
import torch

from metaopt.hybrid.policy import PolicyGate, SwitchingPolicy
from metaopt.hybrid.rule import NUM_FEATURES


def test_untrained_policy_is_the_constant_init_probability():
    policy = SwitchingPolicy(init_ode_probability=0.2)
    features = torch.randn(7, NUM_FEATURES, generator=torch.Generator().manual_seed(0)) * 10
    torch.testing.assert_close(policy(features), torch.full((7,), 0.2))


def test_functional_call_equals_loaded_weights_and_keeps_module():
    policy = SwitchingPolicy(hidden_size=6, generator=torch.Generator().manual_seed(1))
    other = {k: v + 0.3 for k, v in policy.named_parameters()}
    features = torch.randn(4, NUM_FEATURES, generator=torch.Generator().manual_seed(2))
    twin = SwitchingPolicy(hidden_size=6)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(other[name])
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    torch.testing.assert_close(PolicyGate(policy, other).gate(features), twin(features))
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_gradcheck_float64():
    policy = SwitchingPolicy(hidden_size=3, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        policy.head.weight.normal_(generator=torch.Generator().manual_seed(4))
    names = [n for n, _ in policy.named_parameters()]
    features = torch.randn(5, NUM_FEATURES, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))

    def f(*weights):
        return torch.func.functional_call(policy, dict(zip(names, weights)), (features,))
    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_()
                                             for p in policy.parameters()))


@pytest.mark.parametrize("kwargs, name", [({"hidden_size": 0}, "hidden_size"),
                                          ({"init_ode_probability": 1.0}, "init_ode_probability"),
                                          ({"feature_clip": 0.0}, "feature_clip")])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SwitchingPolicy(**kwargs)
