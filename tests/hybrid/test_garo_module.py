"""HybridGDODE with a GARO controller as its GD module, against independent oracles: GARO itself
when the switch is pinned to GD, torchdiffeq when it is pinned to ODE (with the step size the
module docstring of ``metaopt.hybrid.garo_module`` states), and bit-exact resumes across
switches."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torchdiffeq import odeint

import metaopt.optim as mo
from metaopt.garo import GAROController
from metaopt.hybrid.garo_module import GARO_FEATURES
from metaopt.hybrid.policy import SwitchingPolicy
from tests.optim.test_conformance import closure_for, make_problem, run, weights_only_round_trip

D = torch.float64


def controller(seed: int = 0, **kwargs) -> GAROController:
    """A controller whose outputs move with its inputs (perturbed heads), in float64."""
    kwargs = {"hidden_size": 8, "init_lr": 1.0, "init_momentum": 0.5, "features": "relative",
              **kwargs}
    ctrl = GAROController(generator=torch.Generator().manual_seed(seed), **kwargs).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, w in ctrl.named_parameters():
            if name.startswith("head"):
                w.add_(0.05 * torch.randn(w.shape, generator=g, dtype=w.dtype))
    return ctrl


def alternating_policy(min_dwell_mode_weight: float = 5.0) -> SwitchingPolicy:
    """A policy that asks for ODE in GD mode and GD in ODE mode (hidden unit 0 reads the mode
    feature), and reads GARO's features with small weights."""
    policy = SwitchingPolicy(hidden_size=4, extra_features=GARO_FEATURES).double()
    with torch.no_grad():
        policy.hidden.weight.zero_()
        policy.hidden.bias.zero_()
        policy.hidden.weight[0, 3] = 1.0          # z_mode = ±1
        policy.hidden.weight[1, 5:] = 0.1         # GARO's momentum and log lr
        policy.head.weight.zero_()
        policy.head.weight[0, 0] = -min_dwell_mode_weight
        policy.head.weight[0, 1] = 0.1
        policy.head.bias.zero_()
    return policy


def test_gd_pinned_equals_garo_with_the_same_controller():
    ctrl = controller()
    params, loss_fn = make_problem(dtype=D)
    ref, ref_loss = make_problem(dtype=D)
    hybrid = mo.HybridGDODE(params, gd="garo", controller=ctrl, policy="gd", record_trace=True)
    garo = mo.GARO(ref, controller=ctrl, direction="adam", scale="distance")
    run(hybrid, loss_fn, 18)
    run(garo, ref_loss, 18)
    # within GD's stability limit throughout, so the hybrid's guard never shortened a step
    # (a step later it does: η·κ̂ passes 1.9 as DoG's estimate keeps growing)
    assert max(h["log_stability"] for h in hybrid.history) < math.log(1.9)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-12)
    state = garo.garo_state
    for key in ("lr", "momentum", "hidden", "distance_max"):
        torch.testing.assert_close(hybrid.hybrid_state[f"gd.{key}"], state[key].to(D),
                                   rtol=1e-11, atol=1e-12)
    assert float(state["momentum"]) != 0.5  # the controller reacted (not the untrained output)
    assert hybrid.gradient_evaluations == garo.num_grad_evals == 18


def test_ode_pinned_takes_torchdiffeq_steps_of_the_garo_step_size():
    ctrl = controller(3)
    params, loss_fn = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, gd="garo", controller=ctrl, policy="ode", ode="rk4_38",
                         ode_scale=0.5, weight_decay_scale=0.0, ode_cfl=0.0, min_dwell=1)
    shapes = [p.shape for p in params]
    numel = sum(p.numel() for p in params)

    def flat_field(t, y):
        pieces = [v.view(s).detach().requires_grad_() for v, s in
                  zip(y.split([math.prod(s) for s in shapes]), shapes)]
        with torch.enable_grad():
            weight, bias = pieces
            x = make_x()
            loss = (weight @ x + bias).pow(2).sum()
            grads = torch.autograd.grad(loss, pieces)
        return -torch.cat([g.reshape(-1) for g in grads])

    def make_x():
        g = torch.Generator().manual_seed(0)  # make_problem's draws: weight, bias, then x
        torch.randn(10, 5, generator=g, dtype=D), torch.randn(10, generator=g, dtype=D)
        return torch.randn(5, generator=g, dtype=D)

    closure = closure_for(opt, loss_fn)
    for _ in range(6):
        y0 = torch.cat([p.detach().reshape(-1) for p in params])
        grad_norm = torch.linalg.vector_norm(flat_field(0, y0))
        opt.step(closure)
        a_t = opt.hybrid_state["gd.lr"].reshape(())
        h = 0.5 * a_t * math.sqrt(numel) / grad_norm  # the module docstring's h_t, adam
        oracle = odeint(flat_field, y0, torch.stack([h * 0, h]), method="rk4")[-1]
        got = torch.cat([p.detach().reshape(-1) for p in params])
        torch.testing.assert_close(got, oracle, rtol=1e-12, atol=1e-13)
        assert opt.mode == "ode"
    assert opt.gradient_evaluations == 6 * 4  # an RK4 step is four gradient evaluations


def _switching(params, policy=None, **kwargs):
    return mo.HybridGDODE(params, gd="garo", controller=controller(5),
                          policy=policy if policy is not None else alternating_policy(),
                          min_dwell=2, record_trace=True, **kwargs)


def test_the_learned_switch_reads_garo_and_resumes_bit_exactly_across_switches():
    params, loss_fn = make_problem(dtype=D)
    opt = _switching(params)
    run(opt, loss_fn, 5)
    saved = weights_only_round_trip(opt.state_dict())
    assert set(saved["hybrid"]) >= {"policy", "garo_controller"}
    twin_params, twin_loss = make_problem(dtype=D)
    with torch.no_grad():
        for p, q in zip(twin_params, params):
            p.copy_(q)
    twin = _switching(twin_params, policy=alternating_policy(1.0))
    twin.load_state_dict(saved)  # the policy's weights come with the state
    clone = copy.deepcopy(opt)
    run(opt, loss_fn, 6)
    run(twin, twin_loss, 6)
    clone_params = [p for g in clone.param_groups for p in g["params"]]
    run(clone, lambda: (clone_params[0] @ _x() + clone_params[1]).pow(2).sum(), 6)
    for a, b, c in zip(params, twin_params, clone_params):
        assert torch.equal(a, b) and torch.equal(a, c)
    modes = [h["mode"] for h in opt.history]
    assert modes[:4] == [1.0, 1.0, 0.0, 0.0] and modes[4:8] == [1.0, 1.0, 0.0, 0.0]


def _x():
    g = torch.Generator().manual_seed(0)
    torch.randn(10, 5, generator=g, dtype=D), torch.randn(10, generator=g, dtype=D)
    return torch.randn(5, generator=g, dtype=D)


def test_bad_input_is_a_one_line_error():
    params, _ = make_problem()
    with pytest.raises(ValueError, match="controller: a GARO controller needs gd='garo'"):
        mo.HybridGDODE(params, controller=GAROController())
    with pytest.raises(ValueError, match="controller: must be a GAROController"):
        mo.HybridGDODE(params, gd="garo", controller=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="policy: reads GARO's state"):
        mo.HybridGDODE(params, policy=SwitchingPolicy(extra_features=GARO_FEATURES))
    with pytest.raises(ValueError, match="extra_features"):
        SwitchingPolicy(extra_features=("nope",))
    with pytest.raises(ValueError, match="num_training_steps"):
        mo.HybridGDODE(params, gd="garo", num_training_steps=0)
    with pytest.raises(ValueError, match="direction"):
        mo.HybridGDODE(params, gd="garo", direction="nope")


def test_a_garo_state_is_refused_by_a_hybrid_without_garo_and_another_controller_too():
    params, loss_fn = make_problem(dtype=D)
    opt = _switching(params)
    run(opt, loss_fn, 2)
    saved = opt.state_dict()
    plain = mo.HybridGDODE(make_problem(dtype=D)[0], policy=SwitchingPolicy().double())
    with pytest.raises(ValueError, match="unknown keys|garo_controller|missing hyperparameters"):
        plain.load_state_dict(saved)
    other = mo.HybridGDODE(make_problem(dtype=D)[0], gd="garo",
                           controller=controller(num_step_frequencies=2),
                           policy=alternating_policy())
    with pytest.raises(ValueError, match=r"\['garo_controller'\]: does not fit"):
        other.load_state_dict(saved)
    before = copy.deepcopy(other.state_dict())
    assert all(torch.equal(v, before["hybrid"]["garo_controller"][k])
               for k, v in other.garo_controller.state_dict().items())


@pytest.mark.parametrize("ode", ["nesterov_flow", "heun", "dopri5"])
def test_every_ode_module_takes_garos_step_size(ode, recwarn):
    params, loss_fn = make_problem(dtype=D)
    opt = mo.HybridGDODE(params, gd="garo", controller=controller(7), ode=ode,
                         grad_threshold=0.5, min_dwell=2, criteria=("gradient",),
                         record_trace=True)
    initial = loss_fn().item()
    run(opt, loss_fn, 25)
    assert loss_fn().item() < 0.1 * initial
    assert 1.0 in [h["mode"] for h in opt.history]
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_garos_distance_counts_the_motion_of_ode_steps_too():
    # scale-free GARO's δ = θ_t − θ_0 (DoG's distance) must be the displacement actually taken,
    # ODE steps included (metaopt.hybrid.handoff.observe_motion), not the GD proposals'.
    params, loss_fn = make_problem(dtype=D)
    start = [p.detach().clone() for p in params]
    opt = _switching(params)
    run(opt, loss_fn, 6)
    assert 1.0 in [h["mode"] for h in opt.history]
    for p, p0 in zip(params, start):
        torch.testing.assert_close(opt.state[p]["gd.displacement"], p.detach() - p0,
                                   rtol=1e-12, atol=1e-14)


def test_garo_mode_names_its_decay_multiplier_as_one():
    ctrl = controller(3)
    params, _ = make_problem(dtype=D)
    with pytest.raises(ValueError, match="weight_decay_scale"):
        mo.HybridGDODE(params, gd="garo", controller=ctrl, weight_decay=0.01)
    with pytest.raises(ValueError, match="needs gd='garo'"):
        mo.HybridGDODE(params, weight_decay_scale=0.5)
    opt = mo.HybridGDODE(params, gd="garo", controller=ctrl, weight_decay_scale=0.5)
    group = opt.param_groups[0]
    assert group["weight_decay_scale"] == 0.5 and "weight_decay" not in group
    assert "weight_decay_scale: 0.5" in repr(opt)
