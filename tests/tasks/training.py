"""A task's module trained by ``torch.optim.Adam`` (the families' learnability tests)."""
from __future__ import annotations

import torch

from metaopt.task import generator_from_seed


def normalised_test_loss(task, module) -> float:
    """The normalised loss of ``module`` on ``task``'s test set."""
    with torch.no_grad():
        return float(task.normalized_loss(task.module_loss(module, task.eval_batch("test"))))


def adam_trained(task, *, lr: float, steps: int, seed: int = 0) -> tuple[float, float]:
    """``(before, after)``: the normalised test loss of ``task.module()`` before and after
    ``steps`` Adam steps of learning rate ``lr`` on minibatches drawn from ``seed``."""
    module = task.module()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    generator = generator_from_seed(seed)
    before = normalised_test_loss(task, module)
    for _ in range(steps):
        optimizer.zero_grad()
        task.module_loss(module, task.train_batch(generator)).backward()
        optimizer.step()
    return before, normalised_test_loss(task, module)
