"""What the switch reads of GARO: the lr multiplier m = a/d is scale-free for both online scales."""
from __future__ import annotations

import math

import pytest
import torch

import metaopt.optim as mo
from metaopt.garo import GAROController
from metaopt.hybrid.garo_module import GARO_FEATURES, garo_features
from tests.optim.test_conformance import make_problem, run

D = torch.float64


@pytest.mark.parametrize("scale", ["distance", "prodigy"])
def test_the_untrained_controllers_lr_multiplier_reads_as_its_initial_rate(scale):
    """Untrained, GARO emits lr_t = lr₀ every step, so log(m/lr₀) = 0 however far the online
    scale d_t has moved; the raw step size a_t = lr₀·d_t is not lr₀."""
    ctrl = GAROController(hidden_size=8, init_lr=0.1, init_momentum=0.9,
                          features="relative").double()
    params, loss_fn = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, gd="garo", controller=ctrl, scale=scale, policy="gd")
    run(opt, loss_fn, 12)
    state = {k[len("gd."):]: v for k, v in opt.hybrid_state.items() if k.startswith("gd.")}
    x = garo_features(state, opt.rule.gd.rule, ctrl, GARO_FEATURES)
    assert abs(math.log(float(state["lr"][0]) / 0.1)) > 0.5  # d_t moved a long way from 1
    assert float(x[1]) == pytest.approx(0.0, abs=1e-6)  # (lr₀ stored in float32)
    assert float(x[0]) == pytest.approx(0.9, abs=1e-6)  # the untrained momentum
