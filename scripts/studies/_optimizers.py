"""Optimizer entries of the GDSearch study configs (a helper module: no ``NAME``, not a study).

An entry names an optimizer and its keyword options as YAML gives them::

    optimizers:
      - {label: adam, name: adam, options: {lr: 0.05}}

``name`` is a name of the optimizer registry (``metaopt.registry``: a ``torch.optim`` /
``metaopt.optim`` class, a preset or a checkpoint; the ``trajectories`` study),
or a batched rule (``sgd``, ``adam``, ``adamw``, ``rmsprop``, an RK tableau) where the whole grid
runs as one tensor program (``basins``, ``saddles``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaopt.analysis.batched import BatchedOptimizer
from metaopt.analysis.trajectories import optimizer_factory


@dataclass
class OptimizerEntry:
    label: str = "sgd"
    name: str = "sgd"
    options: dict[str, Any] = field(default_factory=dict)


def check_entries(key: str, entries: list, batched: bool) -> None:
    """Refuse empty lists, repeated labels and (batched) unknown rules/options, naming the key."""
    if not entries:
        raise ValueError(f"{key}: needs at least one optimizer")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{key}: labels must be unique, got {labels}")
    if batched:
        for i, entry in enumerate(entries):
            try:
                BatchedOptimizer(entry.name, dict(entry.options))
            except ValueError as error:
                raise ValueError(f"{key}[{i}].{error}") from None


def batched(entries: list) -> dict[str, BatchedOptimizer]:
    return {e.label: BatchedOptimizer(e.name, dict(e.options)) for e in entries}


def factories(entries: list) -> dict:
    return {e.label: optimizer_factory(e.name, **dict(e.options)) for e in entries}
