"""A family that samples from several families: the task distribution for meta-training on a
mix (e.g. quadratics + test functions + small MLPs), learned_optimization style."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metaopt.task import Task, TaskFamily

__all__ = ["MixtureFamily"]


class MixtureFamily(TaskFamily):
    """Picks component ``i`` with probability ``weights[i] / sum(weights)`` (uniform by default),
    then samples a task from it with the same generator."""

    name = "mixture"

    def __init__(self, families: Sequence[TaskFamily], weights: Sequence[float] | None = None):
        families = tuple(families)
        if not families:
            raise ValueError("a mixture needs at least one family")
        super().__init__(device=families[0].device, dtype=families[0].dtype)
        weights = tuple(float(w)
                        for w in (weights if weights is not None else [1.0] * len(families)))
        if len(weights) != len(families) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per family with a positive sum, "
                             f"got {weights}")
        self.families = families
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.name = "mixture(" + ",".join(f.name for f in families) + ")"

    def sample(self, generator: torch.Generator) -> Task:
        index = int(torch.multinomial(self.weights, 1, generator=generator))
        return self.families[index].sample(generator)
