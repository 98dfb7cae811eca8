"""GARO as a general-purpose optimizer: the defects a new user hit, each pinned down.

Oracles: torch.optim.SGD for the meaning of ``lr``; the same run at another loss scale for
scale invariance; the closure path for ``step(loss=...)``.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from metaopt.optim import GARO
from tests.garo.helpers import awake_controller, constant_controller, regression
from tests.rules.objectives import closure_over


def relative_controller(dtype=torch.float64, seed=3):
    """An awake controller on loss-scale invariant features (random heads read the GRU)."""
    return awake_controller(dtype, seed=seed, features="relative")


def run(loss_scale, controller, steps=60, direction="adam", num_training_steps=60):
    params, loss_fn = regression()
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=controller, direction=direction,
               num_training_steps=num_training_steps)
    closure = closure_over(opt, lambda ps: loss_scale * loss_fn(ps), live)
    lrs = []
    for _ in range(steps):
        opt.step(closure)
        lrs.append(opt.hyperparams["lr"])
    return [p.detach().clone() for p in live], lrs


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_relative_features_and_adam_direction_make_the_run_loss_scale_invariant(scale):
    # With "seed" features the controller reads log‖g‖ and symlog L, which move with the scale;
    # relative features + the adam direction give the same trajectory up to the eps guard.
    reference, lrs = run(1.0, relative_controller())
    scaled, scaled_lrs = run(scale, relative_controller())
    error = max((a - b).abs().max().item() for a, b in zip(reference, scaled))
    assert error < 1e-6, error
    assert max(abs(a - b) / a for a, b in zip(lrs, scaled_lrs)) < 1e-6
    _, raw_lrs = run(1.0, awake_controller(seed=3))
    _, raw_scaled_lrs = run(scale, awake_controller(seed=3))
    assert max(abs(a - b) / a for a, b in zip(raw_lrs, raw_scaled_lrs)) > 1e-3  # the oracle bites


def test_progress_input_changes_the_controller_output_and_is_optional():
    _, lrs = run(1.0, relative_controller(), steps=10, num_training_steps=10)
    _, lrs_unknown = run(1.0, relative_controller(), steps=10, num_training_steps=None)
    assert any(abs(a - b) > 1e-9 for a, b in zip(lrs[1:], lrs_unknown[1:]))
    with pytest.raises(ValueError, match="horizon"):
        GARO([torch.zeros(2, requires_grad=True)], num_training_steps=0)


def test_lr_is_the_base_learning_rate_a_pytorch_user_expects():
    # GARO(params, lr=1e-3) with the untrained controller is exactly SGD(lr=1e-3) (it used to
    # multiply lr_t = 0.01 and step 1e-5).
    params, loss_fn = regression()
    ours = [p.clone().requires_grad_() for p in params]
    theirs = [p.clone().requires_grad_() for p in params]
    opt = GARO(ours, lr=1e-3, weight_decay_scale=0.0,
               controller=constant_controller(0.01, 0.0, 1e-8))
    sgd = torch.optim.SGD(theirs, lr=1e-3)
    for _ in range(5):
        opt.step(closure_over(opt, loss_fn, ours))
        sgd.step(closure_over(sgd, loss_fn, theirs))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert GARO(ours).param_groups[0]["lr"] == pytest.approx(0.01)  # default: lr_t as emitted


def test_step_with_loss_feeds_the_controller_like_a_closure():
    params, loss_fn = regression()
    a = [p.clone().requires_grad_() for p in params]
    b = [p.clone().requires_grad_() for p in params]
    opt_a = GARO(a, controller=awake_controller())
    opt_b = GARO(b, controller=awake_controller())
    for _ in range(8):
        opt_a.step(closure_over(opt_a, loss_fn, a))
        opt_b.zero_grad()
        loss = loss_fn(b)
        loss.backward()
        opt_b.step(loss=loss)  # the README's loop
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="not both"):
        opt_b.step(closure_over(opt_b, loss_fn, b), loss=loss)


def test_a_run_that_stays_diverged_raises_instead_of_skipping_forever():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, max_consecutive_skips=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            opt.step(lambda: loss_fn(live) * float("nan"))
        opt.step(closure_over(opt, loss_fn, live))  # a finite step resets the count
        assert opt.consecutive_skips == 0
        for _ in range(2):
            opt.step(lambda: loss_fn(live) * float("inf"))
        with pytest.raises(FloatingPointError, match="3 consecutive"):
            opt.step(lambda: loss_fn(live) * float("nan"))
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        GARO(live, max_consecutive_skips=0)
