"""GradientFlow / NesterovFlow under unusual input: half precision and non-finite gradients."""
from __future__ import annotations

import math

import pytest
import torch

import metaopt.optim as mo

START = [1.0, -2.0, 3.0]


def _closure(opt, w, scale=1.0):
    def closure():
        opt.zero_grad()
        loss = (w.float() ** 2).sum() * scale
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gradient_flow_in_half_precision_follows_the_exact_flow(dtype):
    # dθ/dt = −2θ on ‖θ‖²: θ(t) = θ₀·e^{−2t}. torchdiffeq alone failed every float16 step
    # ("underflow in dt 0.0"); the solve now runs in float32 and casts back.
    w = torch.tensor(START, dtype=dtype, requires_grad=True)
    opt = mo.GradientFlow([w], lr=0.1)
    for _ in range(5):
        opt.step(_closure(opt, w))
    exact = torch.tensor(START, dtype=torch.float64) * math.exp(-2 * 0.5)
    assert w.dtype == dtype
    torch.testing.assert_close(w.detach().double(), exact, rtol=2e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nesterov_flow_in_half_precision_matches_float64(dtype):
    runs = {}
    for d in (dtype, torch.float64):
        w = torch.tensor(START, dtype=d, requires_grad=True)
        opt = mo.NesterovFlow([w], lr=0.1)
        for _ in range(5):
            opt.step(_closure(opt, w))
        runs[d] = w.detach().double()
    torch.testing.assert_close(runs[dtype], runs[torch.float64], rtol=2e-2, atol=0)


@pytest.mark.parametrize("cls", [mo.GradientFlow, mo.NesterovFlow])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_gradient_is_refused_and_leaves_parameters(cls, bad):
    """The shared non-finite policy: refused with a warning, then an error once it persists."""
    w = torch.tensor(START, requires_grad=True)
    opt = cls([w], lr=0.1)
    opt.max_consecutive_skips = 2
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(_closure(opt, w, scale=bad))
    assert torch.equal(w.detach(), torch.tensor(START))
    with pytest.raises(FloatingPointError, match="2 consecutive"):
        opt.step(_closure(opt, w, scale=bad))
    assert torch.equal(w.detach(), torch.tensor(START))
