"""``VectorisedPool`` against the loop (``InnerRunPool``): the independent oracle is the sequential
unroll, run for run. float64; a mixture of two shape groups (zero-padded quadratics of dims 3–6
and small MLPs of widths 3–7 and two batch sizes, padded), log-uniform horizons (runs of one group
end their segments at different steps) and a controller that makes some runs diverge and be reset in
the middle of a meta-batch."""
from __future__ import annotations

import logging

import pytest
import torch

import tasks
from metaopt.meta import (
    AntitheticES,
    InnerRunPool,
    MetaLoss,
    PersistentES,
    TruncatedBPTT,
    VectorisedPool,
    make_horizon,
)

from .helpers import learned_rule

DT = torch.float64


def mixture():
    quadratics = tasks.get("mixture", dtype=DT, components={
        "quadratic": {"dim": (3, 6), "condition_number": (1.0, 30.0)},
        "noisy_quadratic": {"dim": (3, 6), "condition_number": (1.0, 30.0),
                            "noise_std": (0.01, 0.3)}})
    mlp = tasks.get("mlp", datasets=("synthetic",), width=(3, 7), depth=(1, 1),
                    activations=("tanh",), batch_sizes=(6, 8), synthetic_examples=64,
                    synthetic_features=4, synthetic_classes=3, padding=True,
                    dtype=DT)  # widths and batch sizes padded
    return tasks.MixtureFamily([quadratics, mlp])


def rule(lr_bias):
    learned = learned_rule(hidden_size=4)
    with torch.no_grad():  # lr = softplus(lr_bias): 3.0 -> ~3 > 2/λ_max, quadratics blow up
        learned.module.head_lr.bias.fill_(lr_bias)
    return learned


def pools(learned, family, kind="mean", split="train", num_runs=6, threshold=3.0):
    def make(cls):
        return cls(learned, family, num_runs, 4, make_horizon("log_uniform", min_length=2,
                                                              max_length=10),
                   MetaLoss(kind, split, divergence_threshold=threshold))
    return make(InnerRunPool), make(VectorisedPool)


def relative_error(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / max(scale, 1e-300)


def run_both(estimators, kind, split, lr_bias, steps=3, family=None, threshold=3.0):
    learned = rule(lr_bias)
    weights = learned.meta_parameters()
    loop, vectorised = pools(learned, family or mixture(), kind, split, threshold=threshold)
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    out = []
    for _ in range(steps):
        results = []
        for pool, estimator, generator in zip((loop, vectorised), estimators, generators):
            pool.refresh(weights, generator)
            results.append(estimator.estimate(pool, weights, generator))
        out.append(results)
        assert vectorised.fallback is None
        assert loop.run_keys() == vectorised.run_keys()
        for a, b in zip(loop.runs, vectorised.runs):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.step == b.step
                for p, q in zip(a.params, b.params):
                    torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-13)
    return out


@pytest.mark.parametrize("kind,split", [("mean", "train"), ("log", "train"), ("mean", "test"),
                                        ("final", "test")])
def test_bptt_meta_gradient_equals_the_loop(kind, split):
    results = run_both((TruncatedBPTT(), TruncatedBPTT()), kind, split, lr_bias=3.0)
    resets = sum(a.resets for a, _ in results)
    assert resets > 0 and all(a.live_runs > 0 for a, _ in results)  # diverged mid-batch
    for a, b in results:
        assert (a.resets, a.live_runs) == (b.resets, b.live_runs)
        assert abs(a.loss - b.loss) <= 1e-12 * abs(a.loss)
        assert relative_error(a.grads, b.grads) <= 1e-12
        assert a.traces.keys() == b.traces.keys()


@pytest.mark.parametrize("name,kind,split", [("beale", "mean", "train"),
                                             ("styblinski_tang", "mean", "train"),
                                             ("beale", "mean", "test"),
                                             ("styblinski_tang", "final", "test")])
def test_runs_that_overflow_leave_no_nan_in_the_meta_gradient(name, kind, split):
    """Quartic test functions with a large step and a divergence threshold that never fires:
    runs jump to |θ| ≈ 1e100 and their losses' derivatives overflow. The loop drops those runs'
    graphs; the batched backward must give their rows exact zeros, not 0·∞ = NaN."""
    family = tasks.MixtureFamily([tasks.get(name, dtype=DT),
                                  tasks.get("quadratic", dim=(3, 6), dtype=DT)])
    results = run_both((TruncatedBPTT(), TruncatedBPTT()), kind, split, lr_bias=3.0,
                       family=family, threshold=1e300)
    assert sum(a.resets for a, _ in results) > 0
    for a, b in results:
        assert a.resets == b.resets and a.live_runs == b.live_runs > 0
        assert all(torch.isfinite(g).all() for g in b.grads.values())
        assert relative_error(a.grads, b.grads) <= 1e-12


def test_bptt_without_divergence_matches_to_rounding():
    for a, b in run_both((TruncatedBPTT(), TruncatedBPTT()), "mean", "train", lr_bias=-2.0):
        assert a.resets == b.resets == 0
        assert relative_error(a.grads, b.grads) <= 1e-12


@pytest.mark.parametrize("make", [lambda: AntitheticES(2, 0.01), lambda: PersistentES(2, 0.01)],
                         ids=["es", "pes"])
def test_es_and_pes_meta_gradients_equal_the_loop(make):
    results = run_both((make(), make()), "mean", "train", lr_bias=3.0)
    assert sum(a.resets for a, _ in results) > 0
    for a, b in results:
        assert a.resets == b.resets
        # (M⁺ − M⁻)/2σ amplifies the rounding of the losses by 1/σ; still far below 1e-12
        assert relative_error(a.grads, b.grads) <= 1e-12


def test_resume_is_bit_exact_and_checkpoints_cross_engines():
    learned = rule(-2.0)
    weights = learned.meta_parameters()
    family = mixture()
    _, first = pools(learned, family)
    generator = torch.Generator().manual_seed(3)
    estimator = TruncatedBPTT()
    for _ in range(2):
        first.refresh(weights, generator)
        estimator.estimate(first, weights, generator)
    saved, saved_generator = first.state_dict(), generator.get_state()
    loop, second = pools(learned, family)
    second.load_state_dict(saved)
    loop.load_state_dict(saved)  # the loop engine resumes a vectorised run (same format)
    results = []
    for pool in (first, second, loop):
        generator.set_state(saved_generator)
        pool.refresh(weights, generator)
        results.append(estimator.estimate(pool, weights, generator))
    a, b, c = results
    assert all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)
    assert a.loss == b.loss
    assert relative_error(c.grads, a.grads) <= 1e-12


class _KeylessRosenbrock(tasks.TaskFamily):
    """Rosenbrock tasks that opt out of batching (``batch_key`` None)."""

    def __init__(self):
        super().__init__(dtype=DT)
        self.inner = tasks.get("rosenbrock", dtype=DT)

    def sample(self, generator):
        task = self.inner.sample(generator)
        task.batch_key = lambda: None
        return task


def test_tasks_without_batch_key_take_the_loop_with_one_notice(caplog):
    family = tasks.MixtureFamily([tasks.get("quadratic", dim=(3, 6), dtype=DT),
                                  _KeylessRosenbrock()])
    with caplog.at_level(logging.WARNING, logger="metaopt.meta.vectorised"):
        results = run_both((TruncatedBPTT(), TruncatedBPTT()), "mean", "train", lr_bias=-2.0,
                           steps=2, family=family)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "batch_key" in notices[0], notices
    for a, b in results:
        assert relative_error(a.grads, b.grads) <= 1e-12


def test_probes_leave_the_runs_and_return_their_ends():
    learned = rule(-2.0)
    weights = learned.meta_parameters()
    loop, vectorised = pools(learned, mixture())
    for pool in (loop, vectorised):
        pool.refresh(weights, torch.Generator().manual_seed(5))
    before = [[p.clone() for p in r.params] for r in vectorised.runs]
    with torch.no_grad():
        a = loop.segment(weights, differentiable=False, advance=False)
        b = vectorised.segment(weights, differentiable=False, advance=False)
        chained = [vectorised.segment(weights, differentiable=False, advance=False,
                                      starts=b.ends), loop.segment(
            weights, differentiable=False, advance=False, starts=a.ends)]
    for run, saved in zip(vectorised.runs, before):
        assert all(torch.equal(p, q) for p, q in zip(run.params, saved))
    for x, y in zip(a.ends + chained[1].ends, b.ends + chained[0].ends):
        for p, q in zip(x[0], y[0]):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="starts"):
        vectorised.segment(weights, differentiable=False, advance=True, starts=b.ends)


class _HostSyncRule:
    """GARO that reads the loss on the host each step: it cannot run under vmap."""

    stacked_step = None  # (steps are this class's own, not the inner rule's stacked form)

    def __init__(self, inner):
        self.inner, self.module = inner, inner.module

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, params, grad_fn, state, weights):
        def reading(points):
            loss, grads = grad_fn(points)
            float(loss.detach())  # a host sync: vmap refuses it
            return loss, grads
        return self.inner.step(params, reading, state, weights)


def test_a_rule_that_does_not_vmap_takes_the_loop_with_one_notice(caplog):
    learned = _HostSyncRule(rule(-2.0))
    weights = learned.meta_parameters()
    loop, vectorised = pools(learned, mixture())
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    with caplog.at_level(logging.WARNING, logger="metaopt.meta.vectorised"):
        for _ in range(2):
            results = []
            for pool, generator in zip((loop, vectorised), generators):
                pool.refresh(weights, generator)
                results.append(TruncatedBPTT().estimate(pool, weights, generator))
            a, b = results
            assert all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)
    assert vectorised.fallback is not None and "_HostSyncRule" in vectorised.fallback
    assert len(caplog.records) == 1


def test_a_compiler_that_fails_on_the_rule_leaves_the_eager_vectorised_step(monkeypatch, caplog):
    """``unroll.compile``: a backend failure (inductor rejects GARO's float multipliers under
    ``dynamic=True`` today) must cost only the compilation, not send every run to the loop."""
    from torch._dynamo.exc import BackendCompilerFailed

    def failing_compile(fn, **kwargs):
        def compiled(*args):
            cause = RuntimeError("x must be Tensor or scalar, got SymFloat")
            raise BackendCompilerFailed("inductor", cause, None)
        return compiled
    monkeypatch.setattr(torch, "compile", failing_compile)
    learned = rule(-2.0)
    weights = learned.meta_parameters()
    eager, compiled = (VectorisedPool(learned, mixture(), 6, 4, make_horizon("constant", 5),
                                      MetaLoss("mean", "train"), compile=flag)
                       for flag in (False, True))
    results = []
    with caplog.at_level(logging.WARNING):
        for pool in (eager, compiled):
            generator = torch.Generator().manual_seed(1)
            pool.refresh(weights, generator)
            results.append(TruncatedBPTT().estimate(pool, weights, generator))
    assert compiled.fallback is None and not compiled.compile
    assert sum("torch.compile of the rule step failed" in r.message for r in caplog.records) == 1
    assert results[0].loss == results[1].loss
    for k in results[0].grads:
        torch.testing.assert_close(results[1].grads[k], results[0].grads[k], rtol=0, atol=0)


def test_saved_run_states_own_their_storage():
    """A run's state after a batched segment is a view of its group's stacked tensors; the pool's
    state_dict copies it out, so pickling it (torch.distributed.gather_object) writes the run's
    own values, not every run's of the group."""
    learned = rule(-2.0)
    weights = learned.meta_parameters()
    _, vectorised = pools(learned, mixture())
    generator = torch.Generator().manual_seed(3)
    vectorised.refresh(weights, generator)
    TruncatedBPTT().estimate(vectorised, weights, generator)
    tensors = [t for run in vectorised.state_dict()["runs"] if run is not None
               for t in torch.utils._pytree.tree_leaves([run["params"], run["state"]])
               if isinstance(t, torch.Tensor)]
    assert tensors and all(
        t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)
