"""PES (Vicol et al. 2021) is unbiased for the FULL unroll's gradient; truncated BPTT/ES are not.

Oracle: a tiny deterministic quadratic (d = 3) trained by a heavy-ball rule with constant
``lr = exp(a)``, ``momentum = sigmoid(b)`` (φ = (a, b)) for N = 12 steps, cut into K = 4
truncations of T = 3. The full-unroll meta-loss is ``F(φ) = (1/N) Σ_n ℓ̂(θ_n) = (1/K) Σ_k M_k``,
and its gradient is computed twice, independently of every estimator: by central finite
differences of F (h = 1e-5, float64) and by exact BPTT through one untruncated segment. With
σ = 1e-3 the smoothing bias ``(σ²/2) ∇ΔF`` is ~1e-6 relative, far below the Monte-Carlo tolerance.
(lr = 0.05 for 12 steps: far from converged, so the early steps matter a lot for later losses.)

Each of R replicates runs a fresh PES through the K truncations of one run at fixed φ and sums its
K estimates; the tolerance is derived from the replicates' own spread (standard error ``s/√R``,
4 s.e. per component). Truncated BPTT over the same truncations (the start of each truncation
held constant) misses the dependence of later truncations on earlier steps: its error is reported
and must be many standard errors, which also shows the check can fail.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from metaopt.meta import (
    InnerRunPool,
    MetaLoss,
    MetaTrainer,
    PersistentES,
    TruncatedBPTT,
    make_estimator,
    make_horizon,
    unroll_segment,
)
from metaopt.meta.estimators import AntitheticES
from metaopt.meta.trainer import load_training_state, save_training_state

from .helpers import learned_rule, pool, quadratic_family

F64 = torch.float64
N, T = 12, 3


class HeavyBall:
    """``v ← m v + g;  θ ← θ − lr v`` with constant ``lr = exp(a)``, ``m = sigmoid(b)``."""

    def __init__(self, a=-3.0, b=0.0):  # lr = e⁻³ ≈ 0.05
        self.module = nn.Module()
        self.module.a = nn.Parameter(torch.tensor(a, dtype=F64))
        self.module.b = nn.Parameter(torch.tensor(b, dtype=F64))

    def meta_parameters(self):
        return dict(self.module.named_parameters())

    def init(self, params, weights, horizon=None):
        return {"velocity": [torch.zeros_like(p) for p in params]}

    def step(self, params, grad_fn, state, weights):
        _, grads = grad_fn(params)
        lr, momentum = weights["a"].exp(), torch.sigmoid(weights["b"])
        velocity = [momentum * v + g for v, g in zip(state["velocity"], grads)]
        return [p - lr * v for p, v in zip(params, velocity)], {"velocity": velocity}

    def trace(self, state):
        return {}


def _family():
    return quadratic_family(dim=(3, 3), condition_number=(1.0, 10.0))


def _pool(rule, truncation_length=T, horizon=N, num_runs=1, threshold=1e3):
    return InnerRunPool(rule, _family(), num_runs, truncation_length,
                        make_horizon("constant", horizon), MetaLoss("mean", "train",
                                                                    divergence_threshold=threshold))


def _flat(grads):
    return torch.stack([grads["a"], grads["b"]])


def _full_unroll_loss(rule, weights):
    runs = _pool(rule, truncation_length=N)
    runs.refresh(weights, torch.Generator().manual_seed(1))
    run = runs.runs[0]
    with torch.no_grad():
        return float(unroll_segment(rule, weights, run.task, run.names, run.params, run.state, N,
                                    runs.meta_loss, batch_seed=run.batch_seed,
                                    differentiable=False).loss)


def _oracle(rule):
    """∇ of Σ_k M_k (= K·F) by finite differences and by exact BPTT of the untruncated unroll."""
    weights = rule.meta_parameters()
    h, fd = 1e-5, []
    for name in ("a", "b"):
        shifted = [{k: w.detach() + (sign * h if k == name else 0.0) for k, w in weights.items()}
                   for sign in (1, -1)]
        fd.append((_full_unroll_loss(rule, shifted[0]) - _full_unroll_loss(rule, shifted[1]))
                  / (2 * h))
    fd = torch.tensor(fd, dtype=F64) * (N // T)
    runs = _pool(rule, truncation_length=N)
    runs.refresh(weights, torch.Generator().manual_seed(1))
    exact = _flat(TruncatedBPTT().estimate(runs, weights, torch.Generator()).grads) * (N // T)
    return fd, exact


def _summed_over_truncations(rule, estimator, seed):
    weights = rule.meta_parameters()
    runs = _pool(rule)
    runs.refresh(weights, torch.Generator().manual_seed(1))  # the oracle's task
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(2, dtype=F64)
    for _ in range(N // T):
        total += _flat(estimator.estimate(runs, weights, generator).grads)
    assert runs.runs[0].step == N
    return total


def test_pes_is_unbiased_for_the_full_unroll_where_truncated_bptt_is_not():
    rule = HeavyBall()
    fd, exact = _oracle(rule)
    assert torch.allclose(fd, exact, rtol=1e-6), (fd, exact)  # the two oracles agree

    replicates = torch.stack([_summed_over_truncations(rule, PersistentES(24, 1e-3), seed)
                              for seed in range(8)])
    mean, standard_error = replicates.mean(0), replicates.std(0) / math.sqrt(len(replicates))
    pes_error = (mean - exact).abs()
    tbptt = _summed_over_truncations(rule, TruncatedBPTT(), 0)
    tbptt_error = (tbptt - exact).abs()
    print(f"oracle {exact.tolist()}, PES {mean.tolist()} ± {standard_error.tolist()}, "
          f"relative error {float((mean - exact).norm() / exact.norm()):.4f}; truncated BPTT "
          f"{tbptt.tolist()}, relative error {float((tbptt - exact).norm() / exact.norm()):.4f}")
    assert (pes_error < 4 * standard_error).all(), (pes_error, standard_error)
    assert float((mean - exact).norm() / exact.norm()) < 0.1
    assert (tbptt_error > 6 * standard_error).any(), (tbptt_error, standard_error)
    assert float((tbptt - exact).norm() / exact.norm()) > 0.4
    # truncated ES (PES without persistence) estimates truncated BPTT's gradient, not the oracle
    es = _summed_over_truncations(rule, AntitheticES(48, 1e-3), 0)
    print(f"truncated ES {es.tolist()}")
    assert float((es - exact).norm() / exact.norm()) > 0.4


def test_runs_of_one_truncation_make_pes_exactly_es():
    """ξ restarts with each new run: with horizon = truncation every ξ is the current ε."""
    rule = HeavyBall()
    estimates = []
    for estimator in (PersistentES(3, 1e-2), AntitheticES(3, 1e-2)):
        runs, generator = _pool(rule, horizon=T, num_runs=2), torch.Generator().manual_seed(5)
        out = []
        for _ in range(3):
            runs.refresh(rule.meta_parameters(), generator)
            out.append(_flat(estimator.estimate(runs, rule.meta_parameters(), generator).grads))
        estimates.append(torch.stack(out))
    assert torch.allclose(estimates[0], estimates[1], rtol=1e-12, atol=0)
    # with persistence over 2 truncations, the second estimate differs from ES
    runs = _pool(rule, horizon=2 * T)
    generator = torch.Generator().manual_seed(5)
    runs.refresh(rule.meta_parameters(), generator)
    pes = PersistentES(3, 1e-2)
    pes.estimate(runs, rule.meta_parameters(), generator)
    assert pes._xi[0][0] is not None and pes._particles[0][0][0] is not None


def test_diverging_particles_drop_their_pair_and_restart():
    rule = HeavyBall(a=math.log(0.8), b=-3.0)  # lr·exp(±σε) crosses the stability limit 2
    runs = _pool(rule, horizon=4 * T, threshold=10.0)
    generator = torch.Generator().manual_seed(0)
    runs.refresh(rule.meta_parameters(), generator)
    pes = PersistentES(16, 1.5)
    estimate = pes.estimate(runs, rule.meta_parameters(), generator)
    restarted = [j for j in range(16) if pes._particles[0][j] == [None, None]]
    assert 0 < len(restarted) < 16, restarted
    assert all(pes._xi[0][j] is None for j in restarted)
    assert all(torch.isfinite(g).all() for g in estimate.grads.values())
    assert estimate.live_runs == 1 and runs.runs[0].step == T


def test_resume_is_bit_exact(tmp_path):
    """3 meta-steps, save, load into a fresh trainer, 3 more == 6 uninterrupted (with PES)."""
    def trainer():
        learned = learned_rule(hidden_size=2, dtype=F64)
        runs = pool(learned, quadratic_family(), num_runs=2, truncation_length=2, horizon=8)
        return MetaTrainer(learned, runs, make_estimator("pes", 2, 0.05), outer_lr=1e-2, seed=3)

    straight = trainer()
    reference = [straight.step()["meta_loss"] for _ in range(6)]
    first = trainer()
    losses = [first.step()["meta_loss"] for _ in range(3)]
    save_training_state(first.state_dict(), tmp_path / "state.pt")
    second = trainer()
    second.load_state_dict(load_training_state(tmp_path / "state.pt"))
    losses += [second.step()["meta_loss"] for _ in range(3)]
    assert losses == reference
    for (name, a), b in zip(straight.learned.module.state_dict().items(),
                            second.learned.module.state_dict().values()):
        assert torch.equal(a, b), name
    # without the estimator's particles the resumed run would differ
    third = trainer()
    state = load_training_state(tmp_path / "state.pt")
    state.pop("estimator")
    third.load_state_dict(state)
    assert [third.step()["meta_loss"] for _ in range(3)] != reference[3:]


def test_pes_arguments_are_checked():
    for bad in ({"num_pairs": 0}, {"sigma": 0.0}, {"sigma": math.inf}):
        try:
            PersistentES(**bad)
        except ValueError as error:
            assert next(iter(bad)) in str(error)
        else:
            raise AssertionError(bad)
