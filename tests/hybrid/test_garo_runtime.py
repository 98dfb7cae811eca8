"""HybridGDODE(gd="garo")'s in-place GD path (metaopt.hybrid.garo_runtime) equals the reference.

The oracle is the same optimizer with the runtime path switched off, i.e. ``HybridRule.step``
with ``GARORule.apply``, the pure path of meta-training: after every step of a run (GD steps, a
forced ODE phase, GD again) the parameters, GARO's buffers, the previous gradients and the whole
optimizer-wide state (the switch's memories, GARO's recurrent state) must agree in float64, and
the runtime path must have taken the GD steps it can (``GARORuntime.fast_steps``).
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import metaopt
import metaopt.optim as mo
from metaopt.hybrid.garo_runtime import GARORuntime
from tests.hybrid.test_garo_module import alternating_policy, controller
from tests.hybrid.test_runtime import problem
from tests.optim.test_conformance import weights_only_round_trip

D = torch.float64
# the shipped configuration (configs/hybrid_general.yaml): adam direction, Prodigy's scale,
# cosine prior; and scale-free GARO over DoG's distance (configs/garo_general_dog.yaml), the
# hybrid's default; the sgd direction with and without DoG's scale
CONFIGS = [("adam", "prodigy"), ("adam", "distance"), ("sgd", "distance"), ("sgd", "none")]


class GDThenODE:
    """A learned-policy stand-in: GD for 6 steps, then ODE for 2, and again (read from the mode
    and dwell features, so both paths see the same decisions)."""

    hard = True

    def gate(self, features):
        mode, dwell = features[..., 3], torch.expm1(features[..., 4])
        return torch.where(mode > 0.5, dwell < 2, dwell >= 6).to(features.dtype)


def make(params, direction="adam", scale="prodigy", policy="gd", dtype=D, **kw):
    ctrl = controller(7, lr_schedule="cosine", init_lr=0.5).to(dtype)
    opt = mo.HybridGDODE(params, gd="garo", controller=ctrl, direction=direction, scale=scale,
                         num_training_steps=40, min_dwell=1, ode="rk4",
                         policy=policy if isinstance(policy, str) else "heuristic", **kw)
    if not isinstance(policy, str):  # a scripted gate (the rule reads .gate and .hard)
        opt.gate = policy
    return opt


def snapshot(opt, params):
    out = {f"param{i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        out.update({f"{k}{i}": v.clone() for k, v in opt.state[p].items()})
    out.update({k: torch.as_tensor(v).clone() for k, v in opt.hybrid_state.items()})
    return out


def trajectory(fast: bool, steps: int = 30, every_step: bool = True, dtype=D, groups=False,
               **kw):
    params, loss_fn = problem()
    params = [p.detach().to(dtype).requires_grad_() for p in params]
    if groups:
        params = [{"params": params[:2]}, {"params": params[2:], "lr": 0.3,
                                            "weight_decay_scale": 0.5}]
    opt = make(params, dtype=dtype, **kw)
    flat = [p for g in opt.param_groups for p in g["params"]]
    if not fast:
        opt._runtime = None
    return run_steps(opt, flat, lambda t: loss_fn2(flat), steps, every_step), opt


def run_steps(opt, params, loss_at, steps: int, every_step: bool = True) -> list[dict]:
    """``steps`` closure steps of ``opt`` on the loss ``loss_at(t)``; a snapshot after each
    (or only after the last)."""
    records = []
    for t in range(steps):
        def closure(t=t):
            opt.zero_grad()
            loss = loss_at(t)
            loss.backward()
            return loss
        opt.step(closure)
        if every_step or t == steps - 1:
            records.append(snapshot(opt, params))
    return records


def loss_fn2(params):
    weight, bias, v = params
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=g, dtype=weight.dtype)
    c = torch.linspace(0.1, 3.0, v.numel(), dtype=v.dtype)
    return (weight @ x + bias).pow(2).sum() / 10 + 0.5 * (c * v * v).sum()


def assert_same(reference, got):
    assert len(reference) == len(got)
    for step, (a, b) in enumerate(zip(reference, got)):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key].to(D), a[key].to(D), rtol=1e-10, atol=1e-12,
                                       msg=lambda m, key=key, step=step: f"{key}@{step}: {m}")


def fast_steps(opt) -> int:
    runtime = opt._gd_runtime()
    assert isinstance(runtime, GARORuntime)
    return runtime.fast_steps


@pytest.mark.parametrize("direction,scale", CONFIGS)
@pytest.mark.parametrize("every_step", [True, False], ids=["settled", "host"])
def test_gd_run_equals_the_reference(direction, scale, every_step):
    kw = dict(direction=direction, scale=scale)
    reference, ref_opt = trajectory(False, every_step=every_step, **kw)
    got, opt = trajectory(True, every_step=every_step, **kw)
    assert_same(reference, got)
    assert opt.mode == "gd" and ref_opt.gradient_evaluations == opt.gradient_evaluations == 30
    assert fast_steps(opt) == 29  # every step but the first (which sets the references)


@pytest.mark.parametrize("direction,scale", CONFIGS[:3])
def test_a_forced_ode_phase_and_back_equals_the_reference(direction, scale):
    kw = dict(direction=direction, scale=scale, policy=GDThenODE())
    reference, _ = trajectory(False, **kw)
    got, opt = trajectory(True, **kw)
    assert_same(reference, got)
    modes = [float(r["mode"]) for r in got]
    assert modes[:9] == [0.0] * 6 + [1.0, 1.0, 0.0] and modes.count(1.0) == 6
    # GD steps after a GD step (the first, and those right after an ODE step, are the reference's)
    assert fast_steps(opt) == sum(m == 0.0 and b == 0.0 for b, m in zip(modes, modes[1:]))


def test_the_heuristic_switch_equals_the_reference():
    # the gradient criterion (‖g‖/‖g₀‖ < 0.9) sends the run to ODE after 18 GD steps
    kw = dict(policy="heuristic", grad_threshold=0.9, criteria=("gradient",))
    reference, _ = trajectory(False, **kw)
    got, opt = trajectory(True, **kw)
    assert_same(reference, got)
    modes = [float(r["mode"]) for r in got]
    assert modes == [0.0] * 18 + [1.0] * 12 and fast_steps(opt) == 17


def test_a_stock_learned_policy_reading_garo_equals_the_reference():
    # SwitchingPolicy itself (evaluated on the host by the fast path), reading GARO's state;
    # min_dwell 3 keeps GD for three steps, then it asks for ODE (and GD again from there); the
    # stability feature's scale is narrowed until it clips (a unit that does not read it)
    runs = []
    for fast in (False, True):
        policy = alternating_policy()
        policy.feature_std[1] = 1e-3
        params, _ = problem()
        params = [{"params": params[:2]}, {"params": params[2:], "lr": 0.3}]
        opt = mo.HybridGDODE(params, gd="garo", controller=controller(7, lr_schedule="cosine"),
                             scale="prodigy", policy=policy, min_dwell=3,
                             num_training_steps=40)
        if not fast:
            opt._runtime = None
        flat = [p for g in opt.param_groups for p in g["params"]]
        runs.append((run_steps(opt, flat, lambda t, flat=flat: loss_fn2(flat), 26), opt))
    assert_same(runs[0][0], runs[1][0])
    modes = [float(r["mode"]) for r in runs[1][0]]
    assert 1.0 in modes and modes.count(0.0) > 10
    assert fast_steps(runs[1][1]) == sum(m == 0.0 and b == 0.0 for b, m in zip(modes, modes[1:]))


def test_a_non_finite_step_is_refused_as_by_the_reference():
    def run(fast: bool):
        params, _ = problem()
        opt = make(params, scale="distance", policy="gd")
        if not fast:
            opt._runtime = None
        records = []
        for t in range(14):
            def closure(t=t):
                opt.zero_grad()
                loss = loss_fn2(params) * (float("nan") if t == 7 else 1.0)
                loss.backward()
                return loss
            with pytest.warns(RuntimeWarning) if t == 7 else contextlib.nullcontext():
                opt.step(closure)
            records.append(snapshot(opt, params))
        return records, opt
    (reference, ref_opt), (got, opt) = run(False), run(True)
    assert_same(reference, got)
    assert opt.skipped_steps == ref_opt.skipped_steps == 1 and fast_steps(opt) == 12
    for key in got[6]:  # the refused step left everything as it was
        if key != "evaluations":
            assert torch.equal(got[6][key], got[7][key]), key


def test_groups_and_the_sgd_guard_go_through_the_reference_where_needed():
    # the sgd direction with a large step: the guard shortens some steps (the reference's);
    # per-group multipliers: several update buckets
    kw = dict(direction="sgd", scale="none", groups=True, lr=3.0)
    reference, ref_opt = trajectory(False, **kw)
    got, opt = trajectory(True, **kw)
    assert_same(reference, got)
    assert 0 < fast_steps(opt) < 29


def test_zero_and_missing_gradients_behave_as_on_the_reference():
    # step 10: every gradient exactly zero; from step 15 on, the bias has no gradient (None)
    def loss_at(flat):
        def loss(t):
            weight, bias, v = flat
            if t == 10:
                return (weight * 0).sum() + (bias * 0).sum() + (v * 0).sum()
            if t >= 15:
                return loss_fn2([weight, bias.detach(), v])
            return loss_fn2(flat)
        return loss
    runs = []
    for fast in (False, True):
        params, _ = problem()
        opt = make(params, scale="distance")
        if not fast:
            opt._runtime = None
        runs.append((run_steps(opt, params, loss_at(params), 25), opt))
    assert_same(runs[0][0], runs[1][0])
    assert runs[1][0][16]["param1"].equal(runs[1][0][14]["param1"])  # the bias stayed
    assert fast_steps(runs[1][1]) >= 20
    # no gradient at all: nothing happens, as before
    params, _ = problem()
    opt = make(params)
    before = [p.detach().clone() for p in params]
    opt.step(lambda: torch.zeros(()))
    assert all(torch.equal(a, b) for a, b in zip(before, params)) and not opt.state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("policy", ["gd", "ode_phase"])
def test_resume_after_fast_steps_is_bit_exact(dtype, policy):
    def start():
        params, _ = problem()
        params = [p.detach().to(dtype).requires_grad_() for p in params]
        opt = make(params, dtype=dtype, policy=GDThenODE() if policy == "ode_phase" else "gd")

        def closure():
            opt.zero_grad()
            loss = loss_fn2(params)
            loss.backward()
            return loss
        return params, opt, closure
    params, opt, closure = start()
    for _ in range(16):
        opt.step(closure)
    twin_params, twin, twin_closure = start()
    for _ in range(9):
        twin.step(twin_closure)
    assert fast_steps(twin) >= 5  # the state below was left by fast steps
    saved = weights_only_round_trip(twin.state_dict())
    clone = copy.deepcopy(twin)
    moved = [p.detach().clone() for p in twin_params]
    twin_params, twin, twin_closure = start()
    with torch.no_grad():
        for p, q in zip(twin_params, moved):
            p.copy_(q)
    twin.load_state_dict(saved)
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    for _ in range(7):
        twin.step(twin_closure)
        clone.step(lambda: _closure(clone, clone_params))
    assert fast_steps(twin) >= 4
    expected = snapshot(opt, params)
    for got in (snapshot(twin, twin_params), snapshot(clone, clone_params)):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(value, got[key]), key


def _closure(opt, params):
    opt.zero_grad()
    loss = loss_fn2(params)
    loss.backward()
    return loss


def test_the_state_dict_after_fast_steps_is_the_references():
    reference, ref_opt = trajectory(False, every_step=False, steps=12)
    got, opt = trajectory(True, every_step=False, steps=12)
    assert fast_steps(opt) == 11  # (settled from the host copies once, at the end)
    a, b = ref_opt.state_dict(), opt.state_dict()
    assert a["hybrid"]["state"].keys() == b["hybrid"]["state"].keys()
    for key, value in a["hybrid"]["state"].items():
        torch.testing.assert_close(torch.as_tensor(b["hybrid"]["state"][key]),
                                   torch.as_tensor(value), rtol=1e-10, atol=1e-12, msg=key)
    for i, state in a["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["state"][i][key], value, rtol=1e-10, atol=1e-12)


def test_the_shipped_hybrid_general_takes_the_fast_path():
    def run(fast: bool, dtype):
        g = torch.Generator().manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 3)).to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=D) * 0.5)
        x, y = torch.randn(64, 8, generator=g, dtype=D).to(dtype), torch.randint(
            0, 3, (64,), generator=g)
        opt = metaopt.load_optimizer("hybrid_general", model.parameters(),
                                     num_training_steps=100)
        opt.garo_controller.to(dtype)
        opt.policy_module.to(dtype)
        if not fast:
            opt._runtime = None

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        losses = [float(opt.step(closure).detach()) for _ in range(25)]
        return [p.detach().clone() for p in model.parameters()], losses, opt
    ref, ref_losses, _ = run(False, D)
    got, losses, opt = run(True, D)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert fast_steps(opt) == 24 and opt.mode == "gd" and losses[-1] < losses[0]
    _, losses32, opt32 = run(True, torch.float32)  # as shipped (float32)
    assert fast_steps(opt32) == 24
    assert abs(losses32[-1] - losses[-1]) < 1e-3 * abs(losses[0])
