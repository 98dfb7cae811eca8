"""HybridGDODE's step memory: the secant's previous gradient is the optimizer's own (a closure
that zeroes ``p.grad`` in place must not reach it), kept without a copy per step: on the runtime
GD path as a copy-on-write share of the gradient (``metaopt.hybrid.gd_passes.keep_gradient``),
on the reference path in one buffer across steps."""
from __future__ import annotations

import torch

import metaopt.optim as mo
from tests.optim.specs import HYBRID_SWITCHING
from tests.optim.test_conformance import make_problem
from tests.rules.objectives import closure_over

D = torch.float64


def trajectory(zero_in_place: bool, steps: int = 12):
    params, loss_fn = make_problem(dtype=D)
    # the curvature criterion reads the previous gradient
    opt = mo.HybridGDODE(params, **{**HYBRID_SWITCHING, "criteria": ("gradient", "curvature")},
                         record_trace=True)

    def closure():
        if zero_in_place:
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()
        else:
            opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss
    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append([p.detach().clone() for p in params])
    return out, opt, params


def test_in_place_zeroing_closure_gives_the_same_trajectory():
    reference, ref_opt, _ = trajectory(zero_in_place=False)
    got, opt, _ = trajectory(zero_in_place=True)
    assert {h["mode"] for h in opt.history} == {0.0, 1.0}  # both modules ran
    assert [h["curvature"] for h in opt.history] == [h["curvature"] for h in ref_opt.history]
    assert max(h["curvature"] for h in opt.history[1:]) > 0
    for a, b in zip(reference, got):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_previous_gradient_is_owned_and_kept_without_a_copy():
    params, loss_fn = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, lr=0.01, policy="gd")
    closure = closure_over(opt, lambda _: loss_fn(), params)
    opt.step(closure)
    for _ in range(3):
        opt.step(closure)
        for p in params:
            prev = opt.state[p]["prev_grads"]
            assert prev is not p.grad and torch._C._is_cow_tensor(prev)  # (no copy made)
            torch.testing.assert_close(prev, p.grad, rtol=0, atol=0)
    kept = [opt.state[p]["prev_grads"].clone() for p in params]
    for p in params:  # a write into p.grad must not reach the optimizer's g_prev
        p.grad.mul_(-3.0)
    for p, value in zip(params, kept):
        torch.testing.assert_close(opt.state[p]["prev_grads"], value, rtol=0, atol=0)


def test_reference_path_reuses_its_previous_gradient_buffer():
    params, loss_fn = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, lr=0.01, policy="gd")
    opt._runtime = None  # every step through HybridRule.step
    closure = closure_over(opt, lambda _: loss_fn(), params)
    opt.step(closure)
    buffers = [opt.state[p]["prev_grads"] for p in params]
    for _ in range(3):
        opt.step(closure)
        for p, buffer in zip(params, buffers):
            prev = opt.state[p]["prev_grads"]
            assert prev is buffer and prev is not p.grad  # written in place: no allocation
            torch.testing.assert_close(prev, p.grad, rtol=0, atol=0)
