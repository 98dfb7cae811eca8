"""The controller step on the host (metaopt.garo.controller_host) against ``forward``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaopt.garo import NUM_SIGNAL_FEATURES, GAROController, inverse_softplus
from metaopt.garo.controller_host import host_step


def _host(c, signal, mask, step, progress, state):
    return host_step(c, signal.tolist(), mask, step, progress, state["hidden"].numpy(),
                     state["feature_mean"].tolist(), state["feature_var"].tolist())


@pytest.mark.parametrize("features,steady", [("seed", True), ("seed", False),
                                             ("relative", True), ("relative", False)])
def test_host_step_equals_forward_float64(features, steady):
    c = GAROController(features=features, generator=torch.Generator().manual_seed(2)).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in (c.head_lr, c.head_momentum, c.head_weight_decay):
            head.weight.copy_(torch.randn(head.weight.shape, generator=g, dtype=torch.float64))
        c.head_lr.bias.fill_(25.0)  # above softplus's threshold: the linear branch too
    state = {k: v + torch.rand(v.shape, generator=g, dtype=torch.float64)
             for k, v in c.initial_state(3).items()}
    signal = torch.randn(3, NUM_SIGNAL_FEATURES, generator=g, dtype=torch.float64) * 4
    mask = [1.0] * 5 if steady else [1.0, 0.0, 1.0, 0.0, 0.0]
    progress = [0.3, 1.0] if features == "relative" else None
    args = [signal, torch.tensor(mask, dtype=torch.float64).expand(3, -1), torch.tensor(12),
            state["hidden"], state["feature_mean"], state["feature_var"]]
    if progress:
        args.append(torch.tensor(progress, dtype=torch.float64).expand(3, -1))
    expected = c(*args)
    got = _host(c, signal, mask, 12, progress, state)
    assert got.hidden.dtype == np.float64
    for name, a, b in zip(expected._fields, got, expected):
        torch.testing.assert_close(torch.as_tensor(np.asarray(a)), b.detach(), rtol=1e-13,
                                   atol=1e-14, msg=name)
    assert expected.lr.min() > 20  # the comparison covered softplus's linear branch


def test_host_step_float32_matches_forward_to_rounding():
    c = GAROController(features="relative", generator=torch.Generator().manual_seed(4))
    state = c.initial_state(1)
    signal = torch.randn(1, NUM_SIGNAL_FEATURES, generator=torch.Generator().manual_seed(5))
    args = [signal, torch.ones(1, NUM_SIGNAL_FEATURES), torch.tensor(3), state["hidden"],
            state["feature_mean"], state["feature_var"], torch.tensor([[0.5, 1.0]])]
    expected = c(*args)
    got = _host(c, signal, [1.0] * 5, 3, [0.5, 1.0], state)
    assert got.hidden.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(got.hidden), expected.hidden.detach(),
                               rtol=1e-5, atol=1e-6)


def test_host_step_sees_weight_changes():
    # the fused host weights are cached: an in-place update, a load or a dtype move must show
    c = GAROController(generator=torch.Generator().manual_seed(5))
    signal = torch.randn(1, NUM_SIGNAL_FEATURES, generator=torch.Generator().manual_seed(6))

    def lr():
        return _host(c, signal, [1.0] * 5, 3, None, c.initial_state(1)).lr[0]
    first = lr()
    with torch.no_grad():
        c.head_lr.bias.add_(1.0)
    assert lr() == pytest.approx(F.softplus(torch.tensor(inverse_softplus(0.01) + 1.0)).item())
    c.load_state_dict(GAROController(generator=torch.Generator().manual_seed(5)).state_dict())
    assert lr() == pytest.approx(first)
    other = GAROController(init_lr=0.2).state_dict()
    c.load_state_dict(other, assign=True)  # new parameter objects
    assert lr() == pytest.approx(0.2)
    c.double()
    assert _host(c, signal.double(), [1.0] * 5, 3, None, c.initial_state(1)).hidden.dtype \
        == np.float64
