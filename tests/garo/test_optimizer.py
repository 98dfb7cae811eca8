"""metaopt.optim.GARO beyond the generic conformance suite (which runs it via specs.py)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from metaopt.optim import GARO, GlobalAdaptiveSGD
from tests.garo.helpers import awake_controller, regression
from tests.optim.test_conformance import weights_only_round_trip
from tests.rules.objectives import closure_over


def test_seed_usage_snippet_verbatim():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)

    def compute_loss(batch, model):
        return (model(batch[0]) - batch[1]).pow(2).mean()

    before = [p.detach().clone() for p in model.parameters()]
    opt = GlobalAdaptiveSGD(model.parameters())
    for _step in range(5):
        loss = compute_loss((x, y), model)

        opt.zero_grad()
        loss.backward()
        opt.step()
    assert GlobalAdaptiveSGD is GARO
    assert opt.hyperparams["lr"] == pytest.approx(0.01)
    assert opt.hyperparams["momentum"] == pytest.approx(0.0, abs=1e-7)
    assert opt.hyperparams["weight_decay"] == pytest.approx(1e-8)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_first_step_of_untrained_optimizer_is_sgd_with_lr_001():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, weight_decay_scale=0.0)
    loss_fn(live).backward()
    expected = [(p - 0.01 * p.grad).detach() for p in live]
    opt.step()
    for p, e in zip(live, expected):
        torch.testing.assert_close(p.detach(), e)



@pytest.mark.parametrize("granularity", ["global", "group"])
def test_awake_controller_resumes_bit_exactly_with_hidden_state(granularity):
    params, loss_fn = regression(dtype=torch.float32)

    def fresh():
        live = [p.clone().requires_grad_() for p in params]
        groups = [{"params": live[:2]}, {"params": live[2:], "lr": 0.5}]
        return live, GARO(groups, controller=awake_controller(torch.float32),
                          granularity=granularity)

    straight, opt_straight = fresh()
    for _ in range(20):
        opt_straight.step(closure_over(opt_straight, loss_fn, straight))
    first, opt = fresh()
    for _ in range(10):
        opt.step(closure_over(opt, loss_fn, first))
    saved = weights_only_round_trip({"opt": opt.state_dict(),
                                     "params": [p.detach() for p in first]})
    resumed, opt2 = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, saved["params"]):
            p.copy_(q)
    # a different controller init: the state dict must bring the weights back too
    opt2.controller.reset_parameters(torch.Generator().manual_seed(99))
    opt2.load_state_dict(saved["opt"])
    for _ in range(10):
        opt2.step(closure_over(opt2, loss_fn, resumed))
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert torch.equal(opt_straight.garo_state["hidden"], opt2.garo_state["hidden"])


def test_non_finite_gradient_is_skipped_counted_and_warned():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=awake_controller(torch.float32))
    for _ in range(3):
        opt.step(closure_over(opt, loss_fn, live))
    before = [p.detach().clone() for p in live]
    hidden, step = opt.garo_state["hidden"].clone(), int(opt.garo_state["step"])
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in live]
    for bad in (float("nan"), float("inf")):
        opt.zero_grad()
        loss_fn(live).backward()
        live[1].grad[0] = bad
        with pytest.warns(RuntimeWarning, match="non-finite"):
            opt.step()
    finite_grad = closure_over(opt, loss_fn, live)
    with pytest.warns(RuntimeWarning, match="non-finite"):  # a finite grad but a NaN loss
        opt.step(lambda: finite_grad() * float("nan"))
    assert opt.skipped_steps == 3
    assert all(torch.equal(p, b) for p, b in zip(live, before))
    assert torch.equal(opt.garo_state["hidden"], hidden)
    assert int(opt.garo_state["step"]) == step
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(live, buffers))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure_over(opt, loss_fn, live))  # training continues normally afterwards
    assert all(torch.isfinite(p).all() for p in live)
    assert torch.isfinite(opt.garo_state["hidden"]).all()
    assert opt.state_dict()["garo"]["skipped_steps"] == 3


def test_non_finite_controller_output_is_skipped_not_applied():
    """Corrupted controller weights (a NaN lr head) must not turn the parameters into NaN."""
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    controller = awake_controller(torch.float32)
    with torch.no_grad():
        controller.head_lr.bias.fill_(float("nan"))
    opt = GARO(live, controller=controller)
    before = [p.detach().clone() for p in live]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        opt.step(closure_over(opt, loss_fn, live))
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(live, before))


def test_hyperparam_hook_reports_every_step_and_can_be_removed():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=awake_controller(torch.float32))
    trace = []
    handle = opt.register_hyperparam_hook(
        lambda o, h: trace.append({k: (v.tolist() if k != "step" else int(v))
                                   for k, v in h.items()}))
    for _ in range(4):
        opt.step(closure_over(opt, loss_fn, live))
    assert [t["step"] for t in trace] == [1, 2, 3, 4]
    assert len({t["lr"][0] for t in trace}) == 4  # the awake controller varies lr_t
    assert opt.hyperparams["lr"] == pytest.approx(trace[-1]["lr"][0])
    handle.remove()
    opt.step(closure_over(opt, loss_fn, live))
    assert len(trace) == 4


def test_layerwise_granularity_gives_each_group_its_own_hyperparameters():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO([{"params": live[:2]}, {"params": live[2:]}],
               controller=awake_controller(torch.float32), granularity="group")
    for _ in range(3):
        opt.step(closure_over(opt, loss_fn, live))
    lrs = opt.hyperparams["lr"]
    assert len(lrs) == 2 and lrs[0] != lrs[1]
    extra = torch.zeros(3, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    assert opt.garo_state["hidden"].shape[0] == 3
    assert torch.equal(opt.garo_state["hidden"][2], torch.zeros_like(opt.garo_state["hidden"][2]))


def test_hyperparams_before_first_step_are_none():
    assert GARO([torch.zeros(2, requires_grad=True)]).hyperparams["lr"] is None


def test_segments_without_gradients_keep_their_recurrent_state():
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=awake_controller(torch.float32), granularity="tensor")
    for _ in range(2):
        opt.step(closure_over(opt, loss_fn, live))
    frozen = {k: v[1].clone() for k, v in opt.garo_state.items() if v.dim() >= 1}
    for _ in range(2):
        opt.zero_grad()
        loss_fn(live).backward()
        live[1].grad = None  # segment 1 (the bias) sits these steps out
        opt.step()
    for key, value in frozen.items():
        assert torch.equal(opt.garo_state[key][1], value), key
    assert not torch.equal(opt.garo_state["hidden"][0], opt.garo_state["hidden"][1])
    assert int(opt.garo_state["step"]) == 4


def test_a_controller_with_its_own_forward_steps_as_the_stock_one():
    """A subclass that overrides ``forward`` runs through it (not the host controller), also
    from the second step on, when the last step's update norm is still pending; it steps as
    the stock controller (the host controller equals ``forward``, float64)."""
    from metaopt.garo import GAROController

    class OwnForward(GAROController):
        calls = 0

        def forward(self, *args):
            OwnForward.calls += 1
            return super().forward(*args)

    params, loss_fn = regression()
    stock = awake_controller()
    own = OwnForward(init_lr=0.05, init_momentum=0.5, init_weight_decay=1e-3).double()
    own.load_state_dict(stock.state_dict())
    runs = []
    for controller in (stock, own):
        live = [p.clone().requires_grad_() for p in params]
        opt = GARO(live, controller=controller, direction="adam", scale="prodigy")
        for _ in range(4):
            opt.zero_grad()
            loss = loss_fn(live)
            loss.backward()
            opt.step(loss=loss)
        runs.append(live)
    assert OwnForward.calls == 4
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grad_mode", [True, False])
def test_step_runs_without_grad_and_restores_the_callers_grad_mode(grad_mode):
    params, loss_fn = regression(dtype=torch.float64)
    live = [p.clone().requires_grad_() for p in params]
    opt = GARO(live, controller=awake_controller(), direction="adam", max_consecutive_skips=1)
    seen = []

    def closure():  # the closure runs with grad, whatever the caller's mode
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_fn(live)
        loss.backward()
        return loss

    with torch.set_grad_enabled(grad_mode):
        opt.step(closure)
        assert torch.is_grad_enabled() is grad_mode
        assert all(p.is_leaf and p.grad_fn is None for p in live)  # (no graph built)
        for p in live:  # a diverged run raises: the mode is restored all the same
            p.grad = torch.full_like(p, float("nan"))
        with pytest.raises(FloatingPointError):
            opt.step(loss=1.0)
        assert torch.is_grad_enabled() is grad_mode
    assert seen == [True]
