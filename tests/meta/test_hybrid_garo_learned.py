"""The joint rule of controller.kind=hybrid_garo is the runtime's math: float64 unrolls of
``HybridGAROLearnedRule`` equal ``HybridGDODE(gd="garo")`` step for step across switches, and
its compute is charged in gradient evaluations (an RK4 step is four)."""
from __future__ import annotations

import pytest
import torch

import tasks
from metaopt.garo.rule import GARORule
from metaopt.hybrid.optimizer import HybridGDODE
from metaopt.hybrid.rule import HybridRule
from metaopt.meta import MetaLoss, unroll_segment
from metaopt.meta.hybrid_learned import HybridGAROLearnedRule
from metaopt.meta.unroll import initial_run
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule
from tests.hybrid.test_garo_module import alternating_policy, controller
from tests.meta.helpers import task_objectives

D = torch.float64


def family():
    return tasks.get("quadratic", dim=[3, 5], condition_number=[5, 50], dtype="float64")


def joint(relaxed=False, straight_through=False, compute_cost=0.0, policy=None,
          train_garo=True):
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"), min_dwell=2, ode_cfl=1.0)
    return HybridGAROLearnedRule(policy or alternating_policy(), controller(5),
                                 GARORule(direction="adam", scale="distance"), rule, 0.7,
                                 relaxed=relaxed, straight_through=straight_through,
                                 compute_cost=compute_cost, train_garo=train_garo)


@pytest.mark.parametrize("gate", ["hard", "straight_through"])
def test_joint_rule_is_the_runtime_hybrid_with_garo(gate):
    learned = joint(relaxed=gate != "hard", straight_through=gate == "straight_through")
    task = family().sample_seed(2)
    weights = learned.meta_parameters()
    names, params, state = initial_run(learned, weights, task)
    batch = task.train_batch(torch.Generator().manual_seed(0))
    live = [p.clone().requires_grad_() for p in params]
    opt = HybridGDODE(live, gd="garo", controller=learned.module["garo"],
                      policy=learned.module["policy"], ode="rk4", ode_scale=0.7, min_dwell=2,
                      ode_cfl=1.0, record_trace=True)

    closure, grad_fn = task_objectives(task, names, batch, live, opt)
    modes, evaluations = [], []
    for _ in range(9):
        with torch.no_grad():
            params, state = learned.step(params, grad_fn, state, weights)
        opt.step(closure)
        modes.append(float(state["mode"]))
        evaluations.append(float(state["evaluations"]))
        for p, q in zip(params, live):
            torch.testing.assert_close(p, q.detach(), rtol=1e-12, atol=1e-14)
    assert modes == [h["mode"] for h in opt.history] == [1.0, 1.0, 0.0, 0.0] * 2 + [1.0]
    assert evaluations[-1] == opt.gradient_evaluations  # the runtime's closure calls
    steps = [b - a for a, b in zip([0.0] + evaluations, evaluations)]
    assert all(s == (4.0 if m else 1.0) for s, m in zip(steps, modes))  # RK4: four each
    torch.testing.assert_close(state["gd"]["lr"], opt.hybrid_state["gd.lr"], rtol=1e-12,
                               atol=0)


def test_compute_charge_counts_an_rk4_step_as_four_evaluations():
    policy = alternating_policy()
    with torch.no_grad():  # always ODE: p = sigmoid(10) whatever the features
        policy.head.weight.zero_()
        policy.head.bias.fill_(10.0)
    task = family().sample_seed(1)
    free, charged = joint(policy=policy), joint(policy=policy, compute_cost=0.1)
    with torch.no_grad():
        difference = (segment(charged, task) - segment(free, task))
    torch.testing.assert_close(difference, torch.tensor(0.1 * 3, dtype=D))  # 4 − 1 per step


def segment(learned, task, steps=5):
    weights = learned.meta_parameters()
    names, params, state = initial_run(learned, weights, task)
    return unroll_segment(learned, weights, task, names, params, state, steps, MetaLoss("mean"),
                          batch_seed=0).loss


def test_meta_gradient_reaches_the_policy_garo_and_the_ode_step():
    learned = joint(relaxed=True, straight_through=True)
    weights = learned.meta_parameters()
    loss = segment(learned, family().sample_seed(3), steps=6)
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()),
                                                  allow_unused=True)))
    for prefix in ("policy.head", "garo.head_lr", "garo.head_momentum"):
        assert any(g is not None and float(g.abs().sum()) > 0
                   for k, g in grads.items() if k.startswith(prefix)), prefix


def test_a_flow_ode_module_unrolls_with_garos_differentiable_step_size(recwarn):
    from metaopt.hybrid.optimizer import make_ode_rule
    rule = HybridRule(SGDRule(), make_ode_rule("nesterov_flow"), min_dwell=2)
    learned = HybridGAROLearnedRule(alternating_policy(), controller(5), GARORule(), rule,
                                    relaxed=True, straight_through=True)
    weights = learned.meta_parameters()
    loss = segment(learned, family().sample_seed(4), steps=5)
    grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    assert torch.isfinite(loss) and any(g is not None for g in grads)
    # (metaopt.rules.ode_common reads the adaptive solver's dt with float() and warns itself)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)
                and "/hybrid/" in w.filename]


def test_a_frozen_garo_trains_the_switch_alone_over_the_same_unroll():
    """train_garo=False: φ is the policy alone, the unroll is the joint rule's (same losses), the
    policy's meta-gradient is the joint one's, and meta-training leaves GARO's weights as they
    were while it moves the policy."""
    from metaopt.meta import MetaTrainer, TruncatedBPTT
    from tests.meta.helpers import pool
    joint_rule = joint(relaxed=True, straight_through=True)
    frozen = joint(relaxed=True, straight_through=True, train_garo=False)
    assert set(frozen.meta_parameters()) == {k for k in joint_rule.meta_parameters()
                                             if k.startswith("policy.")}
    task = family().sample_seed(3)
    losses, grads = [], []
    for learned in (joint_rule, frozen):
        weights = learned.meta_parameters()
        loss = segment(learned, task, steps=6)
        policy = {k: w for k, w in weights.items() if k.startswith("policy.")}
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, list(policy.values()), allow_unused=True))
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    garo = {k: v.clone() for k, v in frozen.module["garo"].state_dict().items()}
    policy = {k: v.clone() for k, v in frozen.module["policy"].state_dict().items()}
    trainer = MetaTrainer(frozen, pool(frozen, family()), TruncatedBPTT(), outer_lr=1e-2, seed=0)
    for _ in range(2):
        trainer.step()
    assert all(torch.equal(garo[k], v) for k, v in frozen.module["garo"].state_dict().items())
    assert any(not torch.equal(policy[k], v)
               for k, v in frozen.module["policy"].state_dict().items())
