"""A trained GARO controller reads the loss: a loop that forgets ``step(loss=...)`` is told once."""
from __future__ import annotations

import warnings

import pytest
import torch

import metaopt
from metaopt.garo import GAROController
from metaopt.optim import GARO


def _loop(opt, w, steps=3, how="none"):
    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    for _ in range(steps):
        if how == "closure":
            opt.step(closure)
            continue
        loss = closure()
        opt.step(loss=loss) if how == "loss" else opt.step()


def _caught(opt, w, how):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loop(opt, w, how=how)
    return [c for c in caught if "without the loss" in str(c.message)]


def test_a_trained_controller_warns_once_without_the_loss():
    w = torch.ones(3, requires_grad=True)
    opt = metaopt.load_optimizer("garo_quadratics", [w])
    caught = _caught(opt, w, "none")
    assert len(caught) == 1 and caught[0].category is UserWarning
    assert "step(loss=loss)" in str(caught[0].message) and "closure" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's loop


@pytest.mark.parametrize("how", ["loss", "closure"])
def test_no_warning_when_the_loss_is_passed(how):
    w = torch.ones(3, requires_grad=True)
    assert _caught(GARO([w], controller=GAROController()), w, how) == []


def test_the_default_untrained_controller_needs_no_loss():
    w = torch.ones(3, requires_grad=True)
    assert _caught(GARO([w]), w, "none") == []
