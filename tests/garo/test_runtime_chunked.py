"""GARO's runtime adam update in cache-sized chunks (``metaopt.garo.chunked.adam_chunked``, for
large CPU tensors; with Prodigy's weighted sum) equals the whole-tensor update bit for bit, and
the pure ``GARORule.apply`` in float64. Chunks are made tiny here, with ragged tails, so the
small regression model takes the chunked path."""
from __future__ import annotations

import pytest
import torch

from metaopt.garo import GAROHyper, GARORule
from metaopt.garo import chunked as garo_chunked
from metaopt.garo import update as garo_update

from .helpers import awake_controller, regression
from .test_runtime import _compare


def run(monkeypatch, scale, chunk_from, chunk, steps=15, dtype=torch.float64):
    monkeypatch.setattr(garo_chunked, "_CHUNK_FROM", chunk_from)
    monkeypatch.setattr(garo_chunked, "_CHUNK", chunk)
    params, loss_fn = regression(dtype=dtype)
    controller = awake_controller(dtype)
    rule = GARORule(direction="adam", scale=scale)
    hyper = {"controller": controller, "lr_scale": [1.0, 0.5, 1.0],
             "weight_decay_scale": [1.0, 0.0, 3.0]}
    live = [p.clone() for p in params]
    state = rule.init(live, controller, 1)
    for _ in range(steps):
        tracked = [p.detach().clone().requires_grad_() for p in live]
        loss = loss_fn(tracked)
        grads = list(torch.autograd.grad(loss, tracked))
        state = rule.apply_(live, grads, state, hyper, loss=loss.detach())
    return live, state, (rule, params, loss_fn, controller, hyper)


def assert_same_bits(a, b, a_state, b_state, scale):
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    extra = {"none": (), "distance": ("displacement",),
             "prodigy": ("displacement", "prodigy_sum")}[scale]
    for key in ("momentum_buffer", "exp_avg_sq") + extra:
        assert all(torch.equal(x, y) for x, y in zip(a_state[key], b_state[key])), key


@pytest.mark.parametrize("scale", ["none", "distance", "prodigy"])
def test_chunked_adam_update_equals_whole_tensor_update_and_the_rule(monkeypatch, scale):
    # 24- and 12-element tensors in chunks of 5 (ragged tails); the 6-element bias stays whole.
    # One step: the same bits. Later steps read the update-ratio feature from the direction
    # norms the chunks summed (equal up to rounding), so the controller's outputs may differ in
    # the last bits from there on.
    one = [run(monkeypatch, scale, chunk_from, chunk=5, steps=1) for chunk_from in (12, 1 << 40)]
    assert_same_bits(one[0][0], one[1][0], one[0][1], one[1][1], scale)
    chunked, chunked_state, (rule, params, loss_fn, controller, hyper) = run(
        monkeypatch, scale, chunk_from=12, chunk=5)
    whole, whole_state, _ = run(monkeypatch, scale, chunk_from=1 << 40, chunk=5)
    assert _compare(chunked_state, whole_state, chunked, whole) < 1e-13
    ps, functional = [p.clone() for p in params], rule.init(params, controller, 1)
    for _ in range(15):
        tracked = [p.detach().clone().requires_grad_() for p in ps]
        loss = loss_fn(tracked)
        grads = list(torch.autograd.grad(loss, tracked))
        ps, functional = rule.apply(ps, grads, functional, hyper, loss=loss.detach())
    assert _compare(chunked_state, functional, chunked, ps) < 1e-12


def test_chunked_path_is_taken(monkeypatch):
    calls = []
    original = garo_update.adam_chunked
    monkeypatch.setattr(garo_update, "adam_chunked",
                        lambda *args: calls.append(args[1].numel()) or original(*args))
    run(monkeypatch, "distance", chunk_from=12, chunk=5, steps=2)
    assert sorted(set(calls)) == [12, 24]


@pytest.mark.parametrize("segments", [None, [0, 1, 2]])
def test_chunk_reads_of_prodigy_scale_equal_the_rule(monkeypatch, segments):
    # A tensor updated in chunks reads ‖θ‖², ⟨g, δ⟩ in its update and ‖s‖₁ chunk by chunk
    # (``chunked.l1_norm``). Prodigy's estimate must move here (d_t ≫ d_0 = 1e-4 by the end),
    # so every one of those reads reaches the step size: wrong ones fail the comparison.
    monkeypatch.setattr(garo_chunked, "_CHUNK_FROM", 12)
    monkeypatch.setattr(garo_chunked, "_CHUNK", 5)
    params, loss_fn = regression()
    controller = awake_controller(features="relative", scale=1.0)
    rule = GARORule(direction="adam", scale="prodigy")
    S = 1 if segments is None else 3
    hyper = GAROHyper(controller, segment_ids=segments, lr_scale=[1.0, 0.5, 1.0],
                      weight_decay_scale=[1.0, 0.0, 3.0])
    live, ps = [p.clone() for p in params], [p.clone() for p in params]
    runtime = rule.init(live, controller, S, horizon=15)
    functional = rule.init(ps, controller, S, horizon=15)
    calls = []
    original = garo_update.adam_chunked
    monkeypatch.setattr(garo_update, "adam_chunked",
                        lambda *args: calls.append(args[1].numel()) or original(*args))
    for _ in range(20):
        for source, is_runtime in ((live, True), (ps, False)):
            tracked = [p.detach().clone().requires_grad_() for p in source]
            loss = loss_fn(tracked)
            grads = list(torch.autograd.grad(loss, tracked))
            if is_runtime:
                runtime = rule.apply_(live, grads, runtime, hyper, loss=loss.detach())
            else:
                ps, functional = rule.apply(ps, grads, functional, hyper, loss=loss.detach())
    assert sorted(set(calls)) == [12, 24]
    assert functional["prodigy_d"].max() > 1e-2
    assert _compare(runtime, functional, live, ps) < 1e-12


def test_chunked_prodigy_step_resumes_and_copies_bit_exactly(monkeypatch):
    # The optimizer on the chunked path (two param groups: several update buckets), Prodigy's
    # scale and relative features as the shipped checkpoint: a run resumed from its state dict,
    # and a deep copy, continue as the straight run to the bit. (The chunked reads are recomputed
    # each step from the tensors, never carried over: nothing to lose in a checkpoint.)
    import copy

    from metaopt.optim import GARO
    from tests.optim.test_conformance import weights_only_round_trip
    from tests.rules.objectives import closure_over

    monkeypatch.setattr(garo_chunked, "_CHUNK_FROM", 12)
    monkeypatch.setattr(garo_chunked, "_CHUNK", 5)
    params, loss_fn = regression()

    def fresh():
        live = [p.clone().requires_grad_() for p in params]
        groups = [{"params": live[:2]}, {"params": live[2:], "lr": 0.5 * 0.05}]
        return live, GARO(groups, controller=awake_controller(features="relative", scale=1.0),
                          direction="adam",
                          scale="prodigy", num_training_steps=15)

    straight, opt_straight = fresh()
    d = []
    for _ in range(16):
        opt_straight.step(closure_over(opt_straight, loss_fn, straight))
        d.append(opt_straight.garo_state["prodigy_d"].item())
    first, opt = fresh()
    for _ in range(8):
        opt.step(closure_over(opt, loss_fn, first))
    saved = weights_only_round_trip({"opt": opt.state_dict(),
                                     "params": [p.detach() for p in first]})
    copied, twin = copy.deepcopy((first, opt))  # (one memo: the copy steps its own tensors)
    resumed, opt2 = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, saved["params"]):
            p.copy_(q)
    opt2.load_state_dict(saved["opt"])
    for _ in range(8):
        opt2.step(closure_over(opt2, loss_fn, resumed))
        twin.step(closure_over(twin, loss_fn, copied))
    assert d[-1] > 1.05 * d[8]  # Prodigy's estimate still moves after the resume
    for other, other_opt in ((resumed, opt2), (copied, twin)):
        assert all(torch.equal(a, b) for a, b in zip(straight, other))
        for key, value in opt_straight.garo_state.items():
            assert torch.equal(value, other_opt.garo_state[key]), key
