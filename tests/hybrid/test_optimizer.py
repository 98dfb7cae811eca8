"""HybridGDODE beyond the generic conformance suite: oracles for each module, the switch, the
trace, closures, checkpoints."""
from __future__ import annotations

import pytest
import torch

import metaopt
import metaopt.optim as mo
from metaopt.checkpoint import save_checkpoint
from metaopt.hybrid.policy import SwitchingPolicy
from tests.optim.specs import HYBRID_SWITCHING
from tests.optim.test_conformance import closure_for, make_problem, run, weights_only_round_trip

D = torch.float64


def test_the_conformance_setting_switches_within_the_resume_window():
    params, loss_fn = make_problem()
    opt = mo.HybridGDODE(params, **HYBRID_SWITCHING, record_trace=True)
    run(opt, loss_fn, 10)
    modes = [h["mode"] for h in opt.history]
    assert modes[0] == 0.0 and 1.0 in modes  # the 10+10 resume test crosses a GD -> ODE switch


@pytest.mark.parametrize("gd, oracle", [
    ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.01)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01)),
    ("rmsprop", lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.9, weight_decay=0.01))])
def test_gd_policy_equals_torch_optim(gd, oracle):
    params, loss_fn = make_problem(dtype=D)
    ref, ref_loss = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, lr=0.01, momentum=0.9, weight_decay=0.01, gd=gd, policy="gd")
    torch_opt = oracle(ref)
    for _ in range(10):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()  # no closure needed: GD only
        torch_opt.zero_grad()
        ref_loss().backward()
        torch_opt.step()
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("ode, oracle", [
    ("rk4", lambda ps: mo.RK4(ps, lr=0.02)),
    ("heun", lambda ps: mo.Heun(ps, lr=0.02)),
    ("dopri5", lambda ps: mo.AdaptiveRK(ps, lr=0.02, method="dopri5")),
    ("nesterov_flow", lambda ps: mo.NesterovFlow(ps, lr=0.02, rtol=1e-3))])
def test_ode_policy_equals_the_integrator_optimizers(ode, oracle):
    params, loss_fn = make_problem(dtype=D)
    ref, ref_loss = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, lr=0.02, ode=ode, policy="ode", ode_cfl=0.0, min_dwell=1)
    run(opt, loss_fn, 6)
    torch_opt = oracle(ref)
    run(torch_opt, ref_loss, 6)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert opt.gradient_evaluations == torch_opt.gradient_evaluations


def test_closure_required_only_when_an_ode_step_may_run():
    params, loss_fn = make_problem()
    opt = mo.HybridGDODE(params, lr=0.01)
    loss_fn().backward()
    with pytest.raises(RuntimeError, match="closure.*ODE step may run"):
        opt.step()
    gd_only = mo.HybridGDODE(params, lr=0.01, policy="gd")
    gd_only.step()
    with pytest.raises(RuntimeError, match="closure"):
        mo.HybridGDODE(params, policy="gd", curvature="lanczos").step()


def test_trace_and_gradient_evaluations():
    params, loss_fn = make_problem()
    calls = []

    def loss_counted():
        calls.append(1)
        return loss_fn()
    opt = mo.HybridGDODE(params, **HYBRID_SWITCHING, record_trace=True)
    assert opt.mode == "gd" and opt.last_trace == {}
    run(opt, loss_counted, 12)
    assert opt.gradient_evaluations == len(calls)
    last = opt.history[-1]
    assert set(last) >= {"mode", "gate", "probability", "log_grad_ratio", "log_stability",
                         "progress", "curvature", "evaluations", "gradient_evaluations"}
    assert last["evaluations"] == len(calls)  # the rule's count agrees with the closure calls
    ode_steps = sum(h["mode"] for h in opt.history)
    assert len(calls) == 12 + 3 * ode_steps  # RK4: 3 extra stages per ODE step
    assert opt.mode == ("ode" if last["mode"] else "gd")


def test_lanczos_probe_costs_gradient_evaluations_and_finds_the_top_eigenvalue():
    params, loss_fn = make_problem(dtype=D)
    sizes = [p.numel() for p in params]

    def flat_loss(v):
        w, b = v[:sizes[0]].view_as(params[0]), v[sizes[0]:]
        return (w @ x + b).pow(2).sum()
    g = torch.Generator().manual_seed(0)  # make_problem's draws: weight, bias, then x
    torch.randn(10, 5, generator=g, dtype=D), torch.randn(10, generator=g, dtype=D)
    x = torch.randn(5, generator=g, dtype=D)
    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([p.detach().reshape(-1)
                                                                      for p in params]))
    opt = mo.HybridGDODE(params, lr=0.01, policy="gd", curvature="lanczos", probe_every=5,
                         probe_iters=6)
    run(opt, loss_fn, 10)
    probes = opt.gradient_evaluations - 10  # two probes, one gradient per HVP
    assert 2 <= probes <= 12 and opt.last_trace["evaluations"] == opt.gradient_evaluations
    top = torch.linalg.eigvalsh(hessian).abs().max()  # constant: the objective is quadratic
    assert opt.last_trace["curvature"] == pytest.approx(float(top), rel=1e-4)


def test_learned_policy_checkpoint_round_trip(tmp_path):
    policy = SwitchingPolicy(hidden_size=4, init_ode_probability=0.9)
    path = save_checkpoint(tmp_path / "h.safetensors", policy,
                           {"lr": 0.01, "ode": "heun", "min_dwell": 1},
                           {"note": "test"}, optimizer_class="HybridGDODE")
    params, loss_fn = make_problem()
    opt = metaopt.load_optimizer(path, params)
    assert isinstance(opt, mo.HybridGDODE) and opt.policy_name == "learned"
    run(opt, loss_fn, 3)
    assert opt.mode == "ode"  # p = 0.9 > 0.5
    saved = weights_only_round_trip(opt.state_dict())
    twin, twin_loss = make_problem()
    with torch.no_grad():
        for p, q in zip(twin, params):
            p.copy_(q)
    opt2 = metaopt.load_optimizer(path, twin)
    opt2.load_state_dict(saved)
    run(opt, loss_fn, 2)
    run(opt2, twin_loss, 2)
    assert all(torch.equal(a, b) for a, b in zip(params, twin))
    with pytest.raises(ValueError, match="min_dwell"):
        metaopt.load_optimizer(path, params, min_dwell=0)


def test_shipped_hybrid_general_loads():
    if "hybrid_general" not in metaopt.list_pretrained():
        pytest.skip("hybrid_general not shipped in this checkout")
    params, loss_fn = make_problem()
    opt = metaopt.load_optimizer("hybrid_general", params)
    assert isinstance(opt, mo.HybridGDODE)
    initial = loss_fn().item()
    closure = closure_for(opt, loss_fn)
    for _ in range(20):
        opt.step(closure)
    assert loss_fn().item() < initial


def test_closure_zeroing_grads_in_place_does_not_corrupt_the_secant():
    def trajectory(set_to_none):
        params, loss_fn = make_problem(dtype=D)
        opt = mo.HybridGDODE(params, **HYBRID_SWITCHING)

        def closure():
            opt.zero_grad(set_to_none=set_to_none)
            loss = loss_fn()
            loss.backward()
            return loss
        for _ in range(12):
            opt.step(closure)
        return params
    for a, b in zip(trajectory(True), trajectory(False)):
        assert torch.equal(a, b)


def test_the_secant_reads_the_previous_gradient_of_the_parameters_stepped_now():
    """When a parameter loses its gradient, κ = ‖g − g_prev‖/‖Δθ_prev‖ is taken over the others:
    oracle, the difference of their gradients computed directly (float64)."""
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([30.0, 40.0], dtype=torch.float64))
    opt = mo.HybridGDODE([a, b], lr=0.1, gd="adam", policy="gd")
    ((a**2).sum() + (b**3).sum()).backward()
    opt.step()
    g_prev, moved = a.grad.clone(), opt.hybrid_state["displacement_norm"].clone()
    opt.zero_grad()
    (a**2).sum().backward()  # b gets no gradient this step
    opt.step()
    expected = torch.linalg.vector_norm(a.grad - g_prev) / moved
    torch.testing.assert_close(opt.hybrid_state["curvature"], expected, rtol=1e-10, atol=0)
