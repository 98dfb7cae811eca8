"""The meta-gradient of a short differentiable unroll is the derivative of the meta-loss.

Oracles: ``torch.autograd.gradcheck`` (central finite differences in float64) on the unroll as a
function of the controller weights, and directional finite differences of the pool's segment loss
against the TruncatedBPTT estimator.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.meta import MetaLoss, TruncatedBPTT, unroll_segment
from metaopt.meta.unroll import initial_run

from .helpers import learned_rule, pool, quadratic_family


def _unroll_loss(learned, task, names_weights, flat_values, kind, split, steps=3):
    weights = dict(zip(names_weights, flat_values))
    names, params, state = initial_run(learned, weights, task)
    result = unroll_segment(learned, weights, task, names, params, state, steps,
                            MetaLoss(kind, split), batch_seed=3)
    assert not result.diverged
    return result.loss


@pytest.mark.parametrize("kind,split,family_kwargs", [
    ("mean", "train", {}),
    ("log", "test", {}),
    ("final", "train", {"noise_std": (0.1, 0.1)}),
])
def test_unroll_meta_gradient_matches_finite_differences(kind, split, family_kwargs):
    family = quadratic_family(dim=(3, 3))
    if family_kwargs:
        import tasks
        family = tasks.get("quadratic", dim=(3, 3), condition_number=(1.0, 30.0),
                           dtype=torch.float64, **family_kwargs)
    task = family.sample_seed(5)
    learned = learned_rule(hidden_size=2)
    names = [n for n, _ in learned.module.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in learned.module.parameters())
    assert torch.autograd.gradcheck(
        lambda *v: _unroll_loss(learned, task, names, v, kind, split), values,
        eps=1e-6, atol=1e-7, rtol=1e-4)


def test_bptt_estimator_matches_directional_finite_differences():
    family = quadratic_family()
    learned = learned_rule(hidden_size=4)
    runs = pool(learned, family, num_runs=3, truncation_length=5, horizon=10)
    generator = torch.Generator().manual_seed(0)
    weights = learned.meta_parameters()
    runs.refresh(weights, generator)
    runs.segment(weights, differentiable=False, advance=True)  # start mid-run: a 2nd truncation

    def loss_at(w):
        losses = runs.segment(w, differentiable=False, advance=False).losses
        return torch.stack(losses).mean()

    base = {k: w.detach().clone() for k, w in weights.items()}
    direction = {k: torch.randn(w.shape, generator=generator, dtype=w.dtype)
                 for k, w in base.items()}
    h = 1e-5
    fd = (loss_at({k: base[k] + h * direction[k] for k in base})
          - loss_at({k: base[k] - h * direction[k] for k in base})) / (2 * h)
    estimate = TruncatedBPTT().estimate(runs, weights, generator)
    analytic = sum((estimate.grads[k] * direction[k]).sum() for k in base)
    assert estimate.live_runs == 3 and estimate.resets == 0
    assert abs(float(analytic) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))
    assert abs(float(fd)) > 1e-4  # the check is not vacuous
