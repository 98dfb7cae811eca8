"""A small MLP on the bundled digits for the Hessian and landscape studies (helper, not a study).

The task comes from ``tasks.get("mlp", ...)`` (float64, so Lanczos can be checked against the
dense Hessian); every optimizer starts from the same initialisation and sees the same minibatch
sequence. ``functional(task, split)`` is the loss over a parameter list on the full split, the
form ``metaopt.analysis`` instruments take.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

import tasks


def digits_mlp(width: int, depth: int, activation: str, batch_size: int, seed: int):
    family = tasks.get("mlp", datasets=("digits",), width=(width, width), depth=(depth, depth),
                       activations=(activation,), batch_sizes=(batch_size,),
                       train_fraction=(1.0, 1.0), dtype=torch.float64)
    return family.sample(torch.Generator().manual_seed(seed))


def functional(task, split: str) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    names = list(task.parameter_shapes())
    batch = task.eval_batch(split)
    return lambda params: task.loss(dict(zip(names, params)), batch)


def train(task, factory, steps: int, seed: int, snapshot_every: int):
    """Train from the task's seeded initialisation; returns (snapshots, minibatch losses), the
    snapshots (parameter lists) taken at step 0, every ``snapshot_every`` steps and at the end."""
    model = task.module(torch.Generator().manual_seed(seed))
    optimizer = factory(list(model.parameters()))
    batches = torch.Generator().manual_seed(seed + 1)
    snapshots = [(0, [p.detach().clone() for p in model.parameters()])]
    losses = []
    for step in range(1, steps + 1):
        batch = task.train_batch(batches)

        def closure(batch=batch):
            optimizer.zero_grad()
            loss = task.module_loss(model, batch)
            loss.backward()
            return loss
        losses.append(float(optimizer.step(closure).detach()))
        if step % snapshot_every == 0 or step == steps:
            snapshots.append((step, [p.detach().clone() for p in model.parameters()]))
    return snapshots, losses
