"""The hybrid GD–ODE optimizer's learned rules on the vectorised engine's native batched path
(``metaopt.meta.native_batched``) against the loop engine (the oracle: each run unrolled on its
own by ``unroll_segment``), float64.

Both rules of the hybrid configs: ``HybridLearnedRule`` (momentum SGD | RK4 with ``ode_cfl``, as
``configs/hybrid.yaml``) and ``HybridGAROLearnedRule`` (scale-free GARO with Prodigy's scale and
the adam direction | RK4 with h from GARO's step size, the policy reading GARO's state, as
``configs/hybrid_general.yaml``), with random policy heads so runs switch between the modes.
A meta-batch of several families (padded quadratics, padded MLPs, n-D Rastrigin and 2-D test
functions) is meta-trained by both engines; the meta-losses (with the compute charge), the
meta-gradients and the runs' parameters must agree to rounding, with runs that diverge mid-segment
and are reset. A rule whose Runge–Kutta stages were handed θ's gradient, a compute charge left
out, or a padded coordinate that leaks would all show here.
"""
from __future__ import annotations

import re

import pytest
import torch

import tasks
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.hybrid.evaluations import CountedGradFn
from metaopt.hybrid.garo_module import GARO_FEATURES
from metaopt.hybrid.policy import SwitchingPolicy
from metaopt.hybrid.rule import HybridRule
from metaopt.meta import (
    AntitheticES,
    InnerRunPool,
    MetaLoss,
    PersistentES,
    TruncatedBPTT,
    VectorisedPool,
    make_horizon,
)
from metaopt.meta.batch_plan import rule_pads_exactly
from metaopt.meta.hybrid_learned import HybridGAROLearnedRule, HybridLearnedRule
from metaopt.rules.adam import AdamRule
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule
from metaopt.rules.step_size_control import AdaptiveRungeKuttaRule

from .test_vectorised import mixture
from .test_vectorised_families import assert_engines_agree, relative_error

DT = torch.float64
GATES = {"straight_through": dict(relaxed=True, straight_through=True),
         "relaxed": dict(relaxed=True), "hard": dict(relaxed=False)}


def family():
    points = tasks.get("mixture", dtype=DT, components={
        "rastrigin_nd": {"dim": [2, 4]}, "himmelblau": {}, "six_hump_camel": {}})
    return tasks.MixtureFamily([mixture(), points])


def policy(extra=()):
    """A policy whose head is random, so the gate differs between runs and steps."""
    module = SwitchingPolicy(hidden_size=4, init_ode_probability=0.5, extra_features=extra,
                             generator=torch.Generator().manual_seed(0)).to(DT)
    with torch.no_grad():
        module.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    return module


def plain(gate="straight_through", lr=0.6):
    """configs/hybrid.yaml's rule (its GD steps long: the stability guard shortens some)."""
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"), ode_cfl=1.0, min_dwell=1, window=3)
    return HybridLearnedRule(policy(), rule, {"lr": lr, "momentum": 0.5}, 0.05,
                             compute_cost=0.02, **GATES[gate])


def joint(gate="straight_through", lr_bias=-1.0, train_garo=True):
    """configs/hybrid_general.yaml's rule (GARO trained too, so its controller's meta-gradient
    is compared as well)."""
    controller = GAROController(hidden_size=4, features="relative", init_lr=0.05,
                                generator=torch.Generator().manual_seed(0)).to(DT)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in (controller.head_lr, controller.head_momentum,
                     controller.head_weight_decay):
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=generator,
                                                dtype=DT))
        controller.head_lr.bias.fill_(lr_bias)
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"), ode_cfl=1.0, min_dwell=1, window=3)
    return HybridGAROLearnedRule(policy(GARO_FEATURES), controller,
                                 GARORule(direction="adam", scale="prodigy"), rule, 1.0,
                                 compute_cost=0.02, train_garo=train_garo, **GATES[gate])


def pools(learned, num_runs=8, threshold=3.0):
    return [cls(learned, family(), num_runs, 4, make_horizon("log_uniform", min_length=2,
                                                            max_length=10),
                MetaLoss("mean", "train", divergence_threshold=threshold))
            for cls in (InnerRunPool, VectorisedPool)]


def run_both(learned, estimator=TruncatedBPTT, steps=3, monkeypatch=None, threshold=3.0):
    """Both engines, ``steps`` meta-steps; the results in ``assert_engines_agree``'s format,
    the resets, whether a group mixed sizes and how many runs took the loop in the pool."""
    weights = learned.meta_parameters()
    loop, vectorised = pools(learned, threshold=threshold)
    alone = []
    if monkeypatch is not None:  # count the vectorised pool's runs left to the loop
        import metaopt.meta.vectorised as module
        inner = module.unroll_segment
        monkeypatch.setattr(module, "unroll_segment",
                            lambda *a, **k: alone.append(1) or inner(*a, **k))
    generators = [torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)]
    results, resets, mixed = [], 0, False
    for _ in range(steps):
        step = []
        for pool, generator in zip((loop, vectorised), generators):
            pool.refresh(weights, generator)
            if pool is vectorised:
                groups, _ = pool._groups(range(len(pool.runs)))
                mixed |= any(len({tuple(p.shape for p in pool.runs[i].params) for i in g}) > 1
                             for g in groups)
            step.append(estimator().estimate(pool, weights, generator))
        resets += step[0].resets
        assert vectorised.fallback is None
        assert step[0].traces.keys() == step[1].traces.keys()
        for key in step[0].traces:
            assert abs(step[0].traces[key] - step[1].traces[key]) <= 1e-9 * (
                1 + abs(step[0].traces[key])), key
        results.append((step, [[list(r.params) if r else None for r in p.runs]
                               for p in (loop, vectorised)]))
    return results, resets, mixed, len(alone)


@pytest.mark.parametrize("gate", ["straight_through", "relaxed"])
@pytest.mark.parametrize("make", [plain, joint], ids=["hybrid", "hybrid_garo"])
def test_bptt_meta_gradient_equals_the_loop(make, gate, monkeypatch):
    learned = make(gate)
    assert rule_pads_exactly(learned, learned.meta_parameters())
    results, _, mixed, alone = run_both(learned, monkeypatch=monkeypatch)
    assert mixed and alone <= 2  # padded groups of several families, batched
    assert_engines_agree(results)


@pytest.mark.parametrize("gate", ["straight_through", "hard"])
def test_a_group_probes_again_only_the_runs_whose_step_was_shortened(gate, monkeypatch):
    """The stability guard's later probes of a group evaluate only the runs whose step it
    shortened (``CountedGradFn``'s ``rows``); the others keep their last probe's stage. (The
    long GD steps of ``plain`` make the guard probe again; ``joint``'s shorter ones rarely.)"""
    partial = []
    merged = CountedGradFn._merged
    monkeypatch.setattr(CountedGradFn, "_merged", lambda self, points: partial.append(
        (len(self._rows), len(self.stage[1][0]))) or merged(self, points))
    results, _, _, _ = run_both(plain(gate))
    assert partial and all(evaluated < runs for evaluated, runs in partial), partial
    assert_engines_agree(results)


def test_garo_steps_the_runs_of_a_flat_bucket_without_vmap(monkeypatch):
    """The GD module's GARO steps a flat bucket's rows as ``metaopt.garo.stacked`` does (one
    ``(R, N)`` tensor a run), and the result is still the loop's."""
    import metaopt.hybrid.garo_module as garo_module
    stacked, inner = [], garo_module.stacked_step
    monkeypatch.setattr(garo_module, "stacked_step",
                        lambda *a, **k: stacked.append(a[2].shape) or inner(*a, **k))
    results, _, _, _ = run_both(joint())
    assert stacked and all(len(shape) == 2 for shape in stacked)
    assert_engines_agree(results)


@pytest.mark.parametrize("make", [plain, joint], ids=["hybrid", "hybrid_garo"])
def test_runs_that_diverge_mid_segment_are_reset_as_by_the_loop(make):
    """(The stability guard keeps these rules' steps stable: runs diverge by the meta-loss's
    threshold, a normalised loss above 1.1, the engines' common divergence test.)"""
    results, resets, _, _ = run_both(make(), threshold=1.1)
    assert resets > 0 and all(loop.live_runs > 0 for (loop, _), _ in results)
    for (loop, vectorised), _ in results:
        assert (loop.resets, loop.live_runs) == (vectorised.resets, vectorised.live_runs)
    assert_engines_agree(results)


@pytest.mark.parametrize("estimator", [lambda: AntitheticES(2, 0.01),
                                       lambda: PersistentES(2, 0.01)], ids=["es", "pes"])
@pytest.mark.parametrize("make", [plain, joint], ids=["hybrid", "hybrid_garo"])
def test_hard_decisions_under_es_equal_the_loop(make, estimator):
    """The loop's hard gate runs only the chosen module; the batch runs both and selects:
    the same values (the unchosen ODE step is charged 0 evaluations; RK4 keeps no state)."""
    results, _, _, _ = run_both(make("hard"), estimator, steps=2)
    for (loop, vectorised), (loop_params, vec_params) in results:
        assert abs(loop.loss - vectorised.loss) <= 1e-11 * abs(loop.loss)
        # (M⁺ − M⁻)/2σ amplifies the losses' rounding by 1/σ
        assert relative_error(loop.grads, vectorised.grads) <= 1e-8
        for a, b in zip(loop_params, vec_params):
            for p, q in zip(a or [], b or []):
                torch.testing.assert_close(q, p, rtol=1e-11, atol=1e-12)


def test_resume_is_bit_exact_and_checkpoints_cross_engines():
    learned = joint()
    weights = learned.meta_parameters()
    _, first = pools(learned)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        first.refresh(weights, generator)
        TruncatedBPTT().estimate(first, weights, generator)
    saved, saved_generator = first.state_dict(), generator.get_state()
    assert all(isinstance(run["state"]["step"], int) for run in saved["runs"] if run)
    loop, second = pools(learned)
    second.load_state_dict(saved)
    loop.load_state_dict(saved)  # the loop resumes a vectorised run: the same state format
    results = []
    for pool in (first, second, loop):
        generator.set_state(saved_generator)
        pool.refresh(weights, generator)
        results.append(TruncatedBPTT().estimate(pool, weights, generator))
    a, b, c = results
    assert a.loss == b.loss and all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)
    assert relative_error(c.grads, a.grads) <= 1e-10


def test_the_start_up_report_says_the_hybrid_is_batched():
    for learned in (plain(), joint()):
        text = pools(learned)[1].describe(learned.meta_parameters(), probe=16)
        assert "steps stacked runs itself" in text and "one flat vector" in text, text
        batched = re.search(r"(\d+)/16 probe runs batched", text)
        assert "cannot advance" not in text and int(batched.group(1)) >= 14, text
    for rule, why in [(HybridRule(SGDRule(), RungeKuttaRule("rk4"), curvature="lanczos"),
                       "Lanczos probe"),
                      (HybridRule(SGDRule(), AdaptiveRungeKuttaRule("dopri5")), "Runge-Kutta"),
                      (HybridRule(AdamRule(), RungeKuttaRule("rk4")), "not AdamRule")]:
        learned = plain()
        learned.rule = rule  # no batched form: every run takes the loop, and the report says why
        text = pools(learned)[1].describe(learned.meta_parameters(), probe=16)
        assert "cannot advance stacked runs" in text and why in text, text
