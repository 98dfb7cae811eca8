"""GARO's inputs and state layout are defined once (metaopt.garo.features): both paths agree."""
from __future__ import annotations

import math

import pytest
import torch

from metaopt.garo import GAROController, GARORule
from metaopt.garo.features import (
    GLOBAL_STATE,
    HOST_OPS,
    NUM_PROGRESS_INPUTS,
    NUM_SIGNAL_FEATURES,
    RUN_CONSTANTS,
    SIGNAL_FEATURES,
    TENSOR_OPS,
    ema_normalise,
    progress,
    signal_row,
    state_keys,
    validity,
)
from metaopt.garo.host_state import HostState


@pytest.mark.parametrize("features", ["seed", "relative"])
@pytest.mark.parametrize("scale", ["none", "distance", "prodigy"])
def test_rule_state_follows_the_one_layout(features, scale):
    rule = GARORule(direction="adam", scale=scale)
    controller = GAROController(hidden_size=4, features=features)
    state = rule.init([torch.zeros(3), torch.zeros(2, 2)], controller, horizon=10)
    global_keys = set(state) - set(rule.per_tensor_keys) - set(RUN_CONSTANTS)
    assert global_keys == set(state_keys(features == "relative", scale))
    assert global_keys <= set(GLOBAL_STATE)
    # the host copy round-trips every entry of the layout, bit for bit
    host = HostState.from_tensors(state).to_tensors()
    assert set(host) == global_keys
    for key in global_keys:
        assert torch.equal(host[key], state[key]), key


def test_controller_input_size_follows_the_feature_definitions():
    for features, extra in (("seed", 0), ("relative", NUM_PROGRESS_INPUTS)):
        controller = GAROController(hidden_size=4, num_step_frequencies=3, features=features)
        assert controller.input_size == 2 * NUM_SIGNAL_FEATURES + 2 * 3 + extra
    assert len(signal_row(*[0.5] * 6, HOST_OPS)) == NUM_SIGNAL_FEATURES == len(SIGNAL_FEATURES)
    assert len(validity(1.0, 1.0, 1.0, 1.0)) == NUM_SIGNAL_FEATURES


@pytest.mark.parametrize("prev_ratio", [0.0, 1e-3, 2.5])
def test_host_and_tensor_operations_give_the_same_features_float64(prev_ratio):
    values = (0.3, -1.2, 0.1, 2.0, -0.5, prev_ratio)
    host = signal_row(*values, HOST_OPS)
    tensor = signal_row(*[torch.tensor(v, dtype=torch.float64) for v in values], TENSOR_OPS)
    assert [float(t) for t in tensor] == pytest.approx(host, rel=1e-15, abs=1e-15)
    for step, horizon in ((0, 0.0), (3, 10.0), (40, 10.0)):
        known = float(horizon > 0)
        h = progress(float(step), horizon, known, HOST_OPS)
        t = progress(torch.tensor(float(step), dtype=torch.float64),
                     torch.tensor(horizon, dtype=torch.float64),
                     torch.tensor(known, dtype=torch.float64), TENSOR_OPS)
        assert [float(v) for v in t] == h
    z, m, v = ema_normalise(1.5, 0.2, 0.9, 0.99, 5.0, HOST_OPS)
    zt, mt, vt = ema_normalise(*[torch.tensor(x, dtype=torch.float64) for x in (1.5, 0.2, 0.9)],
                               0.99, 5.0, TENSOR_OPS)
    assert (float(zt), float(mt), float(vt)) == pytest.approx((z, m, v), rel=1e-15)
    assert math.isinf(HOST_OPS.log(0.0)) and math.isnan(HOST_OPS.log(float("nan")))
