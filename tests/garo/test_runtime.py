"""GARORule.apply_ (metaopt.garo.runtime) equals the pure GARORule.apply, in float64.

The oracle is ``apply``, the reference path of meta-training: every parameter, buffer and entry of
the recurrent state must agree after 20 steps, for both feature sets and directions, with and
without a loss, one or several segments (including a segment without tensors), per-tensor lr and
decay multipliers (several update buckets), a horizon shorter than the run (progress clamps), and
the cosine lr prior.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.garo import GAROHyper, GARORule
from metaopt.garo.runtime import fused_norms

from .helpers import awake_controller, regression


def _compare(runtime_state, functional_state, live, ps):
    error = max((a - b).abs().max().item() for a, b in zip(live, ps))
    for key, value in functional_state.items():
        mine = runtime_state[key]
        if isinstance(value, list):
            error = max([error] + [(a - b).abs().max().item() for a, b in zip(mine, value)])
        else:
            assert mine.dtype == value.dtype, key
            error = max(error, (mine.double() - value.double()).abs().max().item())
    return error


@pytest.mark.parametrize("features", ["seed", "relative", "relative+cosine"])
@pytest.mark.parametrize("with_loss", [True, False])
@pytest.mark.parametrize("segments", ["global", "tensor", "idle segment"])
@pytest.mark.parametrize(("direction", "scale"), [  # (Prodigy's scale: adam direction only)
    ("sgd", "none"), ("sgd", "distance"), ("adam", "none"), ("adam", "distance"),
    ("adam", "prodigy")])
def test_runtime_step_equals_functional_step_float64(features, direction, with_loss, segments,
                                                     scale):
    params, loss_fn = regression()
    feature_set, _, schedule = features.partition("+")
    controller = awake_controller(features=feature_set, lr_schedule=schedule or "constant")
    rule = GARORule(direction=direction, scale=scale)
    ids, S = {"global": (None, 1), "tensor": ([0, 1, 2], 3),
              "idle segment": ([0, 0, 2], 3)}[segments]
    # (the cosine reaches lr 0 at the horizon: a longer one keeps every step moving)
    horizon = {"seed": None, "relative": 15, "relative+cosine": 40}[features]
    hyper = GAROHyper(controller, segment_ids=ids, lr_scale=[1.0, 0.5, 1.0],
                      weight_decay_scale=[1.0, 0.0, 3.0])
    live = [p.clone() for p in params]
    ps = [p.clone() for p in params]
    runtime = rule.init(live, controller, S, horizon=horizon)
    functional = rule.init(ps, controller, S, horizon=horizon)
    lrs = []
    for _ in range(20):
        for source, is_runtime in ((live, True), (ps, False)):
            tracked = [p.detach().clone().requires_grad_() for p in source]
            loss = loss_fn(tracked)
            grads = list(torch.autograd.grad(loss, tracked))
            loss = loss.detach() if with_loss else None
            if is_runtime:
                runtime = rule.apply_(live, grads, runtime, hyper, loss=loss)
            else:
                ps, functional = rule.apply(ps, grads, functional, hyper, loss=loss)
        lrs.append(functional["lr"].clone())
    error = _compare(runtime, functional, live, ps)
    print(f"\napply_ vs apply ({features}, {direction}, loss={with_loss}, {segments}, "
          f"scale={scale}), "
          f"20 steps float64: max abs error {error:.3e}")
    assert error < 1e-12
    # the controller really varied its outputs, so the comparison covers the whole step
    active = sorted(set(ids or [0]))
    assert torch.stack(lrs).log().std(dim=0)[active].min() > 1e-4
    if segments == "idle segment":  # the segment without tensors kept its initial state
        assert torch.equal(runtime["hidden"][1], torch.zeros_like(runtime["hidden"][1]))


def test_runtime_step_skips_non_finite_gradients_and_losses_untouched():
    params, loss_fn = regression()
    controller = awake_controller(features="relative")
    rule = GARORule(direction="adam")
    live = [p.clone() for p in params]
    state = rule.init(live, controller, 1, horizon=10)
    tracked = [p.clone().requires_grad_() for p in live]
    loss = loss_fn(tracked)
    grads = list(torch.autograd.grad(loss, tracked))
    state = rule.apply_(live, grads, state, {"controller": controller}, loss=loss.detach())
    before = [p.clone() for p in live]
    buffers = [b.clone() for b in state["momentum_buffer"]]
    bad = [g.clone() for g in grads]
    bad[1][0] = float("nan")
    assert rule.apply_(live, bad, state, {"controller": controller}, loss=loss.detach()) is None
    inf = [g * 1e300 * 1e300 for g in grads]  # overflows to ±inf
    assert rule.apply_(live, inf, state, {"controller": controller}, loss=loss.detach()) is None
    assert rule.apply_(live, grads, state, {"controller": controller},
                       loss=torch.tensor(float("inf"), dtype=torch.float64)) is None
    assert all(torch.equal(a, b) for a, b in zip(live, before))
    assert all(torch.equal(a, b) for a, b in zip(state["momentum_buffer"], buffers))


def test_fused_norms_equal_vector_norms():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300, 300, generator=g, dtype=torch.float64),  # the BLAS-dot branch
               torch.randn(7, generator=g, dtype=torch.float64),
               torch.randn(3, 4, generator=g, dtype=torch.float64).t()]  # non-contiguous
    expected = torch.stack([torch.linalg.vector_norm(t) for t in tensors])
    torch.testing.assert_close(fused_norms(tensors), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(fused_norms(tensors[1:]), expected[1:], rtol=1e-14, atol=0)


def test_runtime_step_with_a_custom_forward_uses_it():
    # a controller subclass that overrides forward is called through it, not the fused path
    class Scaled(type(awake_controller())):
        def forward(self, *args):
            out = super().forward(*args)
            return out._replace(lr=out.lr * 0.5)

    params, loss_fn = regression()
    base = awake_controller(features="relative")
    custom = Scaled(**base.config).double()
    custom.load_state_dict(base.state_dict())
    rule = GARORule(direction="adam")
    live, ps = [p.clone() for p in params], [p.clone() for p in params]
    runtime = rule.init(live, custom, 1, horizon=30)
    functional = rule.init(ps, custom, 1, horizon=30)
    for _ in range(10):
        for source, is_runtime in ((live, True), (ps, False)):
            tracked = [p.detach().clone().requires_grad_() for p in source]
            loss = loss_fn(tracked)
            grads = list(torch.autograd.grad(loss, tracked))
            if is_runtime:
                runtime = rule.apply_(live, grads, runtime, {"controller": custom},
                                      loss=loss.detach())
            else:
                ps, functional = rule.apply(ps, grads, functional, {"controller": custom},
                                            loss=loss.detach())
    assert _compare(runtime, functional, live, ps) < 1e-12
    # and the override really ran: one step from the same start halves the stock lr
    firsts = []
    for controller in (custom, base):
        start = [p.clone() for p in params]
        tracked = [p.clone().requires_grad_() for p in params]
        grads = list(torch.autograd.grad(loss_fn(tracked), tracked))
        state = rule.apply_(start, grads, rule.init(start, controller, 1, horizon=30),
                            {"controller": controller})
        firsts.append(state["lr"])
    torch.testing.assert_close(firsts[0], 0.5 * firsts[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("direction,granularity", [("adam", "global"), ("sgd", "global"),
                                                   ("adam", "tensor")])
def test_update_norm_read_by_the_next_step_equals_reading_it_at_once(monkeypatch, direction,
                                                                     granularity):
    # The runtime leaves a step's update norm for the next step's norm call when keeping the
    # directions is cheap (metaopt.garo.runtime._DEFER_NUMEL). Deferred or not, every parameter and
    # every state entry must be the same bits — including across a state_dict mid-run and a
    # tensor that sits out a step (its segment idle).
    from metaopt.garo import runtime as garo_runtime
    from metaopt.optim import GARO

    params, loss_fn = regression(dtype=torch.float32)

    def run(defer_numel):
        monkeypatch.setattr(garo_runtime, "_DEFER_NUMEL", defer_numel)
        live = [p.clone().requires_grad_() for p in params]
        opt = GARO(live, controller=awake_controller(torch.float32, features="relative"),
                   direction=direction, granularity=granularity, num_training_steps=12)
        ratios = []
        for step in range(12):
            opt.zero_grad()
            loss = loss_fn(live)
            loss.backward()
            if step == 5:
                live[1].grad = None  # sits out this step
            opt.step(loss=loss)
            if step == 7:
                ratios.append(opt.garo_state["prev_update_ratio"].clone())  # settles mid-run
        return live, opt.state_dict(), ratios

    deferred, now = run(1 << 20), run(0)
    assert all(torch.equal(a, b) for a, b in zip(deferred[0], now[0]))
    for key, value in now[1]["garo"]["state"].items():
        assert torch.equal(deferred[1]["garo"]["state"][key], value), key
    assert torch.equal(deferred[2][0], now[2][0])
    assert torch.isfinite(now[1]["garo"]["state"]["prev_update_ratio"]).all()


def test_host_floats_reads_what_one_stacked_read_gives():
    """The step's reads as host floats (``scale.host_floats``): on the CPU each value read
    where it lies, the same floats as the one stacked read of a GPU (which widens mixed
    dtypes, exactly)."""
    from metaopt.garo.scale import host_floats

    g = torch.Generator().manual_seed(0)
    values = [torch.randn((), generator=g, dtype=dtype) * 1e3 for dtype in
              (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.float32)]
    values.append(torch.tensor(float("nan")))
    got = host_floats(values)
    expected = torch.stack(values).tolist()
    assert all(type(v) is float for v in got)
    assert [repr(v) for v in got] == [repr(v) for v in expected]
    assert host_floats([]) == []
