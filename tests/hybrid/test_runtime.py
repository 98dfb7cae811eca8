"""HybridGDODE's in-place GD path (metaopt.hybrid.runtime) equals the reference rule path.

The oracle is the same optimizer with the runtime path switched off, i.e. ``HybridRule.step``,
the pure path of meta-training: after every step of a run that switches between GD and ODE,
the parameters, both modules' state and every switch memory must agree in float64 (the
runtime rounds θ − lr·b once, as torch.optim.SGD's fused kernel does, so up to rounding), and
the runtime path must have taken the GD steps.
"""
from __future__ import annotations

import pytest
import torch

import metaopt.optim as mo
from metaopt.hybrid.policy import SwitchingPolicy
from metaopt.hybrid.runtime import GDRuntime
from tests.optim.specs import HYBRID_SWITCHING
from tests.optim.test_conformance import weights_only_round_trip

D = torch.float64


def problem(big: bool = False, scale: float = 1.0):
    """(Wx + b)² plus a diagonal quadratic ½Σ c_i v_i² (curvatures up to 3·scale); ``big`` adds
    a vector of 300,001 entries, which the runtime path updates chunk by chunk."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 5, generator=g, dtype=D)
    bias, x = torch.randn(10, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    n = 300_001 if big else 7
    v = torch.randn(n, generator=g, dtype=D)
    c = (0.1 + 2.9 * torch.rand(n, generator=g, dtype=D)) * scale
    params = [t.requires_grad_() for t in (weight, bias, v)]
    return params, lambda: (weight @ x + bias).pow(2).sum() / 10 + 0.5 * (c * v * v).sum()


def make(params, groups: bool, **kw):
    if groups:  # per-group lr / momentum / decay: several fused buckets
        params = [{"params": params[:2]}, {"params": params[2:], "lr": 0.008, "momentum": 0.7,
                                            "weight_decay": 0.02}]
    return mo.HybridGDODE(params, **kw)


def trajectories(kw, groups=False, big=False, closure=True, steps=25, scale=1.0, nan_at=None):
    runs = []
    for fast in (False, True):
        params, loss_fn = problem(big, scale)
        opt = make(params, groups, record_trace=True, **kw)
        if not fast:
            opt._runtime = None  # the reference: every step through HybridRule.step
        taken = [0]
        runtime = opt._gd_runtime()
        if runtime is not None:
            step = runtime.step

            def counted(*args, step=step):
                done = step(*args)
                taken[0] += done
                return done
            runtime.step = counted
        records = []
        for t in range(steps):
            opt.zero_grad()
            if closure:
                def closure_fn(t=t):
                    opt.zero_grad()
                    loss = loss_fn() * (float("nan") if t == nan_at else 1.0)
                    loss.backward()
                    return loss
                with pytest.warns(RuntimeWarning) if t == nan_at else _nothing():
                    opt.step(closure_fn)
            else:
                loss_fn().backward()
                if t == nan_at:
                    params[0].grad[0, 0] = float("nan")
                with pytest.warns(RuntimeWarning) if t == nan_at else _nothing():
                    opt.step()
            records.append(snapshot(opt, params))
        runs.append((records, opt, taken[0]))
    return runs


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def alternating(big: bool = False, groups: bool = False):
    """``(params, optimizer, closure)``: the hybrid switching every step on ``problem(big)``."""
    params, loss_fn = problem(big)
    opt = make(params, groups, lr=0.01, policy=Alternating().double(), min_dwell=1)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    return params, opt, closure


def snapshot(opt, params):
    out = {f"param{i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        out.update({f"{k}{i}": v.clone() for k, v in opt.state[p].items()
                    if isinstance(v, torch.Tensor)})
    out.update({k: torch.as_tensor(v).clone() for k, v in opt.hybrid_state.items()})
    return out


def assert_same_runs(runs):
    (reference, ref_opt, _), (got, opt, taken) = runs
    assert [h["mode"] for h in opt.history] == [h["mode"] for h in ref_opt.history]
    for step, (a, b) in enumerate(zip(reference, got)):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-13,
                                       msg=lambda m, key=key, step=step: f"{key}@{step}: {m}")
    assert opt.skipped_steps == ref_opt.skipped_steps
    return taken


class Alternating(SwitchingPolicy):
    """Three GD steps, two ODE steps, and again (read from the mode and dwell features)."""

    def forward(self, features):
        mode, dwell = features[..., 3], torch.expm1(features[..., 4])
        ode = torch.where(mode > 0.5, dwell < 2, dwell >= 3)
        return ode.to(features.dtype) * 0.9 + 0.05


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("policy", ["heuristic", "alternating"])
def test_switching_run_equals_the_reference(groups, big, policy):
    kw = ({**HYBRID_SWITCHING, "criteria": ("gradient", "curvature")} if policy == "heuristic"
          else {"lr": 0.01, "min_dwell": 1, "policy": Alternating().double()})
    runs = trajectories(kw, groups=groups, big=big)
    modes = [h["mode"] for h in runs[1][1].history]
    assert 0.0 in modes[1:] and 1.0 in modes  # GD steps, an ODE phase
    if policy == "alternating":
        assert modes[:10] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    # every GD step but the first and those right after an ODE step (the reference path's)
    gd_steps = sum(m == 0.0 and before == 0.0 for before, m in zip(modes, modes[1:]))
    assert assert_same_runs(runs) == gd_steps


@pytest.mark.parametrize("closure", [True, False])
def test_gd_policy_with_decay_and_groups_equals_the_reference(closure):
    runs = trajectories({"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01, "policy": "gd"},
                        groups=True, closure=closure)
    assert assert_same_runs(runs) == 24  # every step after the first


def test_learned_policy_equals_the_reference():
    policy = SwitchingPolicy(generator=torch.Generator().manual_seed(1)).double()
    assert assert_same_runs(trajectories({"lr": 0.01, "policy": policy})) == 24


def test_stability_guard_steps_go_through_the_reference():
    # lr·κ up to 0.5·30 = 15 > 1.9: the guard shortens GD steps; the runtime path must not
    # take those (it takes the others)
    runs = trajectories({"lr": 0.5, "momentum": 0.5, "policy": "gd"}, scale=10.0)
    taken = assert_same_runs(runs)
    assert taken < 24
    reference = runs[0][0]
    assert torch.isfinite(reference[-1]["param2"]).all()
    assert reference[-1]["param2"].abs().max() < reference[0]["param2"].abs().max()


@pytest.mark.parametrize("closure", [True, False])
def test_non_finite_step_is_refused_as_by_the_reference(closure):
    runs = trajectories({"lr": 0.02, "momentum": 0.9, "policy": "gd"}, closure=closure,
                        steps=10, nan_at=5)
    assert assert_same_runs(runs) == 8
    got = runs[1][0]
    for key in got[4]:  # the refused step left everything as it was
        if key != "evaluations":
            assert torch.equal(got[4][key], got[5][key]), key


def test_buffers_are_updated_in_place_and_the_gradient_is_kept_without_a_copy():
    params, loss_fn = problem(big=True)
    opt = mo.HybridGDODE(params, lr=0.01, policy="gd")
    assert isinstance(opt._gd_runtime(), GDRuntime)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    opt.step(closure)
    buffers = [opt.state[p]["gd.momentum_buffer"] for p in params]
    for _ in range(3):
        opt.step(closure)
        assert all(opt.state[p]["gd.momentum_buffer"] is b for p, b in zip(params, buffers))
        for p in params:  # g_prev: the gradient's own memory, shared copy-on-write
            prev = opt.state[p]["prev_grads"]
            assert prev is not p.grad and torch._C._is_cow_tensor(prev)
            assert torch.equal(prev, p.grad)


def _pattern_run(fast: bool, pattern: str, big: bool, steps: int = 12):
    """A momentum-SGD hybrid whose gradients are zeroed in place (``zero_grad(set_to_none=
    False)`` in the closure) or accumulated (no zeroing, steps from ``p.grad``): both write into
    the gradient the previous-gradient memory shares."""
    params, loss_fn = problem(big)
    policy = "gd" if pattern == "accumulate" else Alternating().double()
    opt = mo.HybridGDODE(params, lr=0.01, momentum=0.9, policy=policy, min_dwell=1)
    if not fast:
        opt._runtime = None
    records, shared = [], 0
    for _ in range(steps):
        if pattern == "accumulate":
            loss_fn().backward()
            opt.step()
        else:
            def closure():
                opt.zero_grad(set_to_none=False)
                loss = loss_fn()
                loss.backward()
                return loss
            opt.step(closure)
        shared += torch._C._is_cow_tensor(opt.state[params[2]]["prev_grads"])
        records.append(snapshot(opt, params))
    return records, opt, shared


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pattern", ["zero_in_place", "accumulate"])
def test_gradients_written_in_place_leave_the_kept_gradient_intact(pattern, big):
    # the runtime keeps g_prev as a copy-on-write view of p.grad: an in-place write into p.grad
    # (zeroing, accumulation) must copy it first, or the secant reads the wrong g_prev
    reference, ref_opt, _ = _pattern_run(False, pattern, big)
    got, opt, shared = _pattern_run(True, pattern, big)
    assert shared > 0  # the runtime path kept gradients without a copy
    assert [h for h in opt.history] == [h for h in ref_opt.history]
    for step, (a, b) in enumerate(zip(reference, got)):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-13,
                                       msg=lambda m, key=key, step=step: f"{key}@{step}: {m}")
    assert max(float(r["curvature"]) for r in got) > 0


@pytest.mark.parametrize("big", [False, True])
def test_memories_kept_on_the_host_between_reads_equal_the_reference(big):
    # nothing reads hybrid_state between the steps: the runtime path's memories (dwell, loss
    # window, the pending ‖Δθ‖) stay on the host and become tensors only at the final read
    def run(fast):
        params, loss_fn = problem(big)
        opt = make(params, True, lr=0.01, policy=Alternating().double(), min_dwell=1)
        if not fast:
            opt._runtime = None

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss
        for _ in range(17):
            opt.step(closure)
        dirty = getattr(opt._gd_runtime(), "dirty", False)
        return snapshot(opt, params), dirty
    (reference, _), (got, dirty) = run(False), run(True)
    assert dirty  # the last step was the runtime path's, its memories not yet tensors
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=1e-10, atol=1e-13,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_loading_an_earlier_state_into_a_running_optimizer_resets_the_host_memories():
    # the runtime path keeps the switch's memories on the host between its steps; a load must
    # replace them (a stale dwell or loss window would decide and record differently)
    params, opt, closure = alternating()
    for _ in range(6):
        opt.step(closure)
    saved = weights_only_round_trip(opt.state_dict())
    theta = [p.detach().clone() for p in params]
    for _ in range(3):
        opt.step(closure)
    twin_params, twin, twin_closure = alternating()
    with torch.no_grad():
        for p, q, t in zip(params, twin_params, theta):
            p.copy_(t)
            q.copy_(t)
    opt.load_state_dict(saved)
    twin.load_state_dict(weights_only_round_trip(saved))  # (its own tensors)
    for _ in range(6):
        opt.step(closure)
        twin.step(twin_closure)
        for key, value in snapshot(twin, twin_params).items():
            assert torch.equal(snapshot(opt, params)[key], value), key


def test_runtime_path_applies_to_momentum_sgd_only():
    params, _ = problem()
    assert mo.HybridGDODE(params, lr=0.01)._gd_runtime() is not None
    assert mo.HybridGDODE(params, lr=0.01, ode="heun")._gd_runtime() is not None
    for kw in ({"gd": "adam"}, {"ode": "nesterov_flow"}, {"curvature": "lanczos"}):
        assert mo.HybridGDODE(params, lr=0.01, **kw)._gd_runtime() is None, kw


@pytest.mark.parametrize("big", [False, True])
def test_resume_through_a_weights_only_state_dict_is_bit_exact(big):
    # the runtime path's caches are rebuilt after the load: it must decide and compute alike
    params, opt, closure = alternating(big, groups=True)
    for _ in range(14):
        opt.step(closure)
    twin_params, twin, twin_closure = alternating(big, groups=True)
    for _ in range(7):
        twin.step(twin_closure)
    saved = weights_only_round_trip(twin.state_dict())
    snapshot_params = [p.detach().clone() for p in twin_params]
    twin_params, twin, twin_closure = alternating(big, groups=True)
    with torch.no_grad():  # the model's own state travels separately
        for p, q in zip(twin_params, snapshot_params):
            p.copy_(q)
    twin.load_state_dict(saved)
    for _ in range(7):
        twin.step(twin_closure)
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)
    assert snapshot(opt, params).keys() == snapshot(twin, twin_params).keys()
    for key, value in snapshot(opt, params).items():
        assert torch.equal(value, snapshot(twin, twin_params)[key]), key
