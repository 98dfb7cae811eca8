"""Checkpoint selection by the benchmark's protocol (metaopt.evaluation.selection)."""
from __future__ import annotations

import torch

import tasks
from metaopt.evaluation.selection import ValidationTask, select, tuned_references


def adam_at(lr: float):
    def build(steps: int):
        def factory(params):
            return torch.optim.Adam(params, lr=lr)
        factory.label = f"adam({lr:g})"
        return factory
    return build


def test_selection_scores_by_speedup_against_tuned_adam_and_ranks_divergence_last():
    family = tasks.get("quadratic", dim=[5, 5], condition_number=[10, 10])
    validation = [ValidationTask("quadratic", family, 40)]
    seeds = [2 ** 30, 2 ** 30 + 1]
    refs = tuned_references(validation, seeds, extension=4, low=1e-2, high=1.0)
    tuned = refs["quadratic"].lr
    candidates = {"slow": adam_at(tuned / 30), "tuned": adam_at(tuned),
                  "diverges": adam_at(1e12)}
    best, scores = select(candidates, validation, seeds, refs)
    by_name = {s.name: s for s in scores}
    # tuned Adam reaches its own final loss by step T at the latest (speedup <= 1, and below 1
    # only where its curve dips under the final loss earlier); a 30x smaller lr is much slower
    assert 0.7 <= by_name["tuned"].median_speedup <= 1.0
    assert by_name["slow"].median_speedup < 0.5
    assert by_name["diverges"].diverged == 2 or by_name["diverges"].median_speedup < 0.5
    assert best == "tuned"


class _TwiceAdam(torch.optim.Adam):
    """Adam that evaluates the closure twice a step (same batch, same gradient): the trajectory
    of Adam at twice the gradient evaluations, like a hybrid's multi-stage steps."""

    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        return super().step(closure)


def test_selection_charges_a_candidate_every_gradient_evaluation():
    family = tasks.get("quadratic", dim=[5, 5], condition_number=[10, 10])
    validation = [ValidationTask("quadratic", family, 40)]
    seeds = [2 ** 30, 2 ** 30 + 1]
    refs = tuned_references(validation, seeds, extension=4, low=1e-2, high=1.0)
    lr = refs["quadratic"].lr / 3

    def twice(steps):
        def factory(params):
            return _TwiceAdam(params, lr=lr)
        return factory

    _, (once, two) = select({"once": adam_at(lr), "twice": twice}, validation, seeds, refs)
    assert 0.1 < once.median_speedup < 1.0
    assert two.median_speedup == once.median_speedup / 2
