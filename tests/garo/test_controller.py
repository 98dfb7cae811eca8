"""GAROController: SGD-like initialisation, pure forward, functional_call, feature statistics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metaopt.garo import NUM_SIGNAL_FEATURES, BoundController, GAROController, inverse_softplus


def random_inputs(controller, segments=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = controller.initial_state(segments)
    signal = torch.randn(segments, NUM_SIGNAL_FEATURES, generator=g) * 4
    valid = torch.ones(segments, NUM_SIGNAL_FEATURES)
    return signal, valid, torch.tensor(7), state


def test_untrained_controller_emits_sgd_constants_whatever_it_reads():
    c = GAROController()
    for seed in range(3):
        signal, valid, step, state = random_inputs(c, seed=seed)
        out = c(signal, valid, step, state["hidden"], state["feature_mean"], state["feature_var"])
        torch.testing.assert_close(out.lr, torch.full((3,), 0.01))
        torch.testing.assert_close(out.momentum, torch.zeros(3))
        torch.testing.assert_close(out.weight_decay, torch.full((3,), 1e-8))
        assert out.hidden.abs().sum() > 0  # the GRU itself is awake; only the heads are zero


def test_inverse_softplus_round_trips():
    for y in (1e-8, 0.01, 1.0, 30.0):
        x = inverse_softplus(y)
        assert F.softplus(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(y,
                                                                                      rel=1e-12)


def test_forward_is_pure_and_functional_call_swaps_weights():
    c = GAROController(generator=torch.Generator().manual_seed(4))
    signal, valid, step, state = random_inputs(c)
    args = (signal, valid, step, state["hidden"], state["feature_mean"], state["feature_var"])
    a, b = c(*args), c(*args)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    weights = {k: v.clone() for k, v in c.named_parameters()}
    weights["head_lr.weight"] = torch.ones_like(weights["head_lr.weight"])
    swapped = BoundController(c, weights)(*args)
    expected = F.softplus(a.hidden @ weights["head_lr.weight"].T + weights["head_lr.bias"])
    torch.testing.assert_close(swapped.lr, expected.squeeze(1))
    assert torch.equal(c.head_lr.weight, torch.zeros_like(c.head_lr.weight))  # module untouched


def test_feature_statistics_are_an_ema_and_skip_invalid_features():
    c = GAROController(feature_decay=0.9)
    state = c.initial_state(1)
    mean, var = state["feature_mean"], state["feature_var"]
    x = torch.tensor([[2.0, -1.0, 3.0, 0.5, -4.0]])
    valid = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    out = c(x, valid, torch.tensor(0), state["hidden"], mean, var)
    delta = x - mean
    exp_mean = mean + 0.1 * delta
    exp_var = 0.9 * (var + 0.1 * delta ** 2)
    keep = valid.bool()
    torch.testing.assert_close(out.feature_mean, torch.where(keep, exp_mean, mean))
    torch.testing.assert_close(out.feature_var, torch.where(keep, exp_var, var))


def test_initial_statistics_come_from_the_buffers():
    c = GAROController()
    c.init_feature_mean.copy_(torch.arange(5.0))
    c.init_feature_var.fill_(4.0)
    state = c.initial_state(2)
    assert torch.equal(state["feature_mean"], torch.arange(5.0).expand(2, 5))
    bound = BoundController(c, {"init_feature_mean": torch.ones(5)})
    assert torch.equal(bound.initial_state(2)["feature_mean"], torch.ones(2, 5))
    assert "init_feature_mean" in c.state_dict() and "init_feature_var" in c.state_dict()


def test_config_rebuilds_the_architecture():
    c = GAROController(hidden_size=8, num_step_frequencies=2, init_lr=0.1)
    twin = GAROController(**c.config)
    twin.load_state_dict(c.state_dict())
    signal, valid, step, state = random_inputs(c)
    args = (signal, valid, step, state["hidden"], state["feature_mean"], state["feature_var"])
    assert all(torch.equal(x, y) for x, y in zip(c(*args), twin(*args)))
    assert twin.input_size == 2 * NUM_SIGNAL_FEATURES + 4


def test_initial_gru_weights_come_from_the_generator():
    a = GAROController(generator=torch.Generator().manual_seed(1))
    b = GAROController(generator=torch.Generator().manual_seed(1))
    c = GAROController(generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.cell.weight_ih, b.cell.weight_ih)
    assert not torch.equal(a.cell.weight_ih, c.cell.weight_ih)
    bound = 1 / math.sqrt(a.hidden_size)
    assert a.cell.weight_hh.abs().max() <= bound


@pytest.mark.parametrize("bad,name", [({"hidden_size": 0}, "hidden_size"),
                                      ({"init_lr": 0.0}, "init_lr"),
                                      ({"init_momentum": 1.0}, "init_momentum"),
                                      ({"init_weight_decay": 0.0}, "init_weight_decay"),
                                      ({"feature_decay": 1.0}, "feature_decay"),
                                      ({"feature_clip": 0.0}, "feature_clip"),
                                      ({"num_step_frequencies": -1}, "num_step_frequencies")])
def test_invalid_controller_arguments(bad, name):
    with pytest.raises(ValueError, match=name):
        GAROController(**bad)
