"""The outer loop's Adam (``metaopt.meta.outer_adam``) against ``torch.optim.Adam`` (the oracle):
bit for bit over steps with gradients that skip parameters, in float32 and float64; state dicts
exchanged both ways; bad states refused before anything changes; a meta-training run that
never imports ``torch._dynamo``."""
from __future__ import annotations

import copy

import pytest
import torch

from metaopt.meta.outer_adam import OuterAdam

from ..fresh_python import NO_DYNAMO, run_fresh


def params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
            for shape in ((3, 4), (4,), (2, 2, 3))]


def feed(opt_params, k, seed=1):
    """Gradients of step ``k``; the second parameter has none on every third step."""
    g = torch.Generator().manual_seed(seed + k)
    for i, p in enumerate(opt_params):
        p.grad = None if (i == 1 and k % 3 == 2) else \
            torch.randn(p.shape, generator=g, dtype=p.dtype) * 10.0 ** (i - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_steps_equal_torch_adam_bit_for_bit(dtype):
    ours, theirs = params(dtype), params(dtype)
    mine = OuterAdam(ours, lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    oracle = torch.optim.Adam(theirs, lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    for k in range(12):
        feed(ours, k), feed(theirs, k)
        mine.step(), oracle.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), k
    saved = oracle.state_dict()
    for i, p in enumerate(ours):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(mine.state[p][key], saved["state"][i][key]), (i, key)


def test_state_dicts_cross_both_ways_and_the_runs_stay_equal():
    ours, theirs = params(torch.float32), params(torch.float32)
    mine, oracle = OuterAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2)
    for k in range(4):
        feed(ours, k), feed(theirs, k)
        mine.step(), oracle.step()
    resumed_ours, resumed_theirs = [p.detach().clone().requires_grad_() for p in ours], \
        [p.detach().clone().requires_grad_() for p in theirs]
    into_ours = OuterAdam(resumed_ours, lr=5.0)  # the saved lr wins, as in torch.optim
    into_ours.load_state_dict(copy.deepcopy(oracle.state_dict()))  # (as saved to a file:
    into_theirs = torch.optim.Adam(resumed_theirs, lr=5.0)  # torch.optim's shares tensors)
    into_theirs.load_state_dict(copy.deepcopy(mine.state_dict()))
    assert into_ours.lr == 1e-2 and into_theirs.param_groups[0]["lr"] == 1e-2
    for k in range(4, 8):
        for group, opt in ((ours, mine), (theirs, oracle), (resumed_ours, into_ours),
                           (resumed_theirs, into_theirs)):
            feed(group, k)
            opt.step()
    for a, b, c, d in zip(ours, theirs, resumed_ours, resumed_theirs):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s["param_groups"].append(dict(s["param_groups"][0])), "one param group"),
    (lambda s: s["param_groups"][0].update(params=[0, 1]), "holds 2 parameters"),
    (lambda s: s["param_groups"][0].update(amsgrad=True), "options"),
    (lambda s: s["param_groups"][0].update(lr=float("nan")), "lr"),
    (lambda s: s["state"][0].pop("exp_avg_sq"), "entry 0"),
    (lambda s: s["state"][1].update(exp_avg=torch.zeros(5)), "shaped"),
])
def test_a_bad_state_is_refused_and_changes_nothing(break_it, message):
    ours = params(torch.float32)
    mine = OuterAdam(ours, lr=1e-2)
    feed(ours, 0)
    mine.step()
    saved = mine.state_dict()
    broken = {"state": {i: dict(e) for i, e in saved["state"].items()},
              "param_groups": [dict(g) for g in saved["param_groups"]]}
    break_it(broken)
    fresh = OuterAdam(params(torch.float32), lr=7e-3)
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(broken)
    assert fresh.lr == 7e-3 and fresh.state == {}


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(betas=(0.9, 1.0)), dict(eps=-1.0)])
def test_invalid_arguments_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        OuterAdam(params(torch.float32), **bad)


def test_a_meta_step_does_not_import_dynamo(tmp_path):
    """What this Adam is for: ``torch.optim`` would import ``torch._dynamo`` (~1 s)."""
    code = (
        "import sys, torch\n"
        "from scripts import meta_train\n"
        f"meta_train.main(['--config', 'configs/garo.yaml', 'out_dir={tmp_path / 'run'}',"
        " 'steps=1', 'wandb.mode=disabled', 'progress=false', 'evaluation.enabled=false',"
        " 'unroll.num_tasks=4', 'validation.num_tasks=1', 'validation.horizon=5'])\n"
        + NO_DYNAMO)
    run_fresh(code, timeout=300)
