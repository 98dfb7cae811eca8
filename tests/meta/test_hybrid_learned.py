"""Learned hybrid rules: meta-gradient of the relaxed policy against finite differences, the
joint GARO composition, the compute charge, hard decisions = the runtime optimizer."""
from __future__ import annotations

import torch

import tasks
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.hybrid.optimizer import HybridGDODE
from metaopt.hybrid.policy import SwitchingPolicy
from metaopt.hybrid.rule import HybridRule
from metaopt.meta import MetaLoss, unroll_segment
from metaopt.meta.hybrid_learned import HybridGAROLearnedRule, HybridLearnedRule
from metaopt.meta.unroll import initial_run
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule
from tests.meta.helpers import task_objectives

D = torch.float64


def family():
    return tasks.get("quadratic", dim=[3, 5], condition_number=[5, 50], dtype="float64")


def learned_rule(relaxed=True, compute_cost=0.0, p0=0.4, feature_gradients=False):
    policy = SwitchingPolicy(hidden_size=4, init_ode_probability=p0,
                             generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        policy.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    return HybridLearnedRule(policy, HybridRule(SGDRule(), RungeKuttaRule("heun"),
                                                   feature_gradients=feature_gradients),
                             {"lr": 0.05, "momentum": 0.5}, 0.05, relaxed=relaxed,
                             compute_cost=compute_cost)


def segment_loss(learned, weights, task, steps=6):
    names, params, state = initial_run(learned, weights, task)
    return unroll_segment(learned, weights, task, names, params, state, steps, MetaLoss("mean"),
                          batch_seed=0).loss


def test_relaxed_meta_gradient_matches_finite_differences():
    # Exact with feature_gradients (the total derivative); the default detaches the features
    # (Andrychowicz et al.'s approximation), which here moves the directional derivative by
    # ~1e-5 relative — the size of what the approximation drops.
    learned = learned_rule(compute_cost=0.05, feature_gradients=True)
    approx = learned_rule(compute_cost=0.05)
    task = family().sample_seed(0)
    weights = learned.meta_parameters()
    loss = segment_loss(learned, weights, task)
    grads = torch.autograd.grad(loss, list(weights.values()))
    detached = torch.autograd.grad(segment_loss(approx, weights, task), list(weights.values()))
    direction = {k: torch.randn(w.shape, dtype=D, generator=torch.Generator().manual_seed(i))
                 for i, (k, w) in enumerate(weights.items())}
    analytic = sum((g * direction[k]).sum() for g, k in zip(grads, weights))
    eps = 1e-6
    with torch.no_grad():
        plus = segment_loss(learned, {k: w + eps * direction[k] for k, w in weights.items()},
                            task)
        minus = segment_loss(learned, {k: w - eps * direction[k] for k, w in weights.items()},
                             task)
    numeric = (plus - minus) / (2 * eps)
    assert abs(float(analytic)) > 1e-6
    torch.testing.assert_close(analytic.detach(), numeric, rtol=1e-7, atol=1e-10)
    approximate = sum((g * direction[k]).sum() for g, k in zip(detached, weights))
    torch.testing.assert_close(approximate, numeric, rtol=1e-3, atol=0)


def test_compute_charge_is_the_expected_extra_evaluations():
    task = family().sample_seed(1)
    free = learned_rule(p0=0.4)
    charged = learned_rule(compute_cost=0.1, p0=0.4)
    with torch.no_grad():
        for rule in (free, charged):
            rule.module.head.weight.zero_()  # gate = 0.4 every step (after the free first one)
        difference = segment_loss(charged, charged.meta_parameters(), task) - \
            segment_loss(free, free.meta_parameters(), task)
    # Heun: one extra stage; expected extra evaluations per step = 0.4 · 1 (step 0 is GD-locked
    # only when dwell < min_dwell = 1, which never holds: every step is gated).
    torch.testing.assert_close(difference, torch.tensor(0.1 * 0.4, dtype=D))


def test_hard_rule_is_the_runtime_optimizer():
    learned = learned_rule(relaxed=False, p0=0.45)
    task = family().sample_seed(2)
    weights = learned.meta_parameters()
    names, params, state = initial_run(learned, weights, task)
    batch = task.train_batch(torch.Generator().manual_seed(0))
    live = [p.clone().requires_grad_() for p in params]
    opt = HybridGDODE(live, lr=0.05, momentum=0.5, ode="heun", policy=learned.module,
                      min_dwell=1, ode_cfl=0.0, record_trace=True)

    closure, grad_fn = task_objectives(task, names, batch, live, opt)
    modes = []
    for _ in range(8):
        with torch.no_grad():
            params, state = learned.step(params, grad_fn, state, weights)
        opt.step(closure)
        modes.append(float(state["mode"]))
    for p, q in zip(params, live):
        torch.testing.assert_close(p, q.detach(), rtol=1e-12, atol=1e-14)
    assert modes == [h["mode"] for h in opt.history] and 0.0 in modes and 1.0 in modes


def test_joint_garo_meta_gradient_reaches_both_controllers():
    policy = SwitchingPolicy(hidden_size=4, init_ode_probability=0.3).double()
    garo = GAROController(hidden_size=4).double()
    with torch.no_grad():
        policy.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    learned = HybridGAROLearnedRule(policy, garo, GARORule(),
                                    HybridRule(SGDRule(), RungeKuttaRule("rk4")), 0.05)
    weights = learned.meta_parameters()
    assert any(k.startswith("policy.") for k in weights) and any(k.startswith("garo.")
                                                                 for k in weights)
    loss = segment_loss(learned, weights, family().sample_seed(3), steps=5)
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values()),
                                                  allow_unused=True)))
    for prefix in ("policy.head", "garo.head_lr"):
        assert any(g is not None and float(g.abs().sum()) > 0
                   for k, g in grads.items() if k.startswith(prefix)), prefix
    trace = learned.trace(initial_run(learned, weights, family().sample_seed(3))[2])
    assert {"mode", "gate", "evaluations", "lr", "momentum"} <= set(trace)


def test_straight_through_takes_hard_steps_and_passes_the_gate_gradient():
    task = family().sample_seed(4)
    st = learned_rule(p0=0.45)
    st.straight_through = True
    hard = learned_rule(relaxed=False, p0=0.45)
    weights = st.meta_parameters()
    names, params, state = initial_run(st, weights, task)
    result = unroll_segment(st, weights, task, names, params, state, 6, MetaLoss("mean"),
                            batch_seed=0)
    with torch.no_grad():
        reference = unroll_segment(hard, weights, task, names, params, state, 6,
                                   MetaLoss("mean"), batch_seed=0)
    torch.testing.assert_close(result.loss.detach(), reference.loss, rtol=1e-12, atol=1e-14)
    grads = torch.autograd.grad(result.loss, list(weights.values()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
