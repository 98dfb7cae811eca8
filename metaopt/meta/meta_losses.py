"""Meta-losses: how one inner unroll is scored, so controllers can be compared across tasks.

Every inner loss is first normalised by its task (``metaopt.task.Task.normalized_loss``)::

    ℓ̂_k = (L(θ_k; batch_k) − L*) / scale        (1 = no progress, 0 = solved)

where ``θ_k`` is the inner iterate after ``k`` steps of the segment (k = 1..T) and ``batch_k`` a
training minibatch (``split="train"``) or a held-out batch from the task's test split
(``split="test"``). The kinds combine the T terms of a segment:

    mean:  (1/T) Σ_k ℓ̂_k                      (area under the normalised loss curve)
    final: ℓ̂_T
    log:   (1/T) Σ_k log(max(ℓ̂_k, 0) + ε)       (rewards progress at every scale of the loss)

Terms above ``divergence_threshold`` (or non-finite) mark the inner run as diverged: the trainer
resets it and leaves it out of the meta-loss, so one bad task never produces a non-finite update.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

META_LOSS_KINDS = ("mean", "final", "log")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class MetaLoss:
    """Scores a segment from its normalised inner losses ``ℓ̂_1..ℓ̂_T`` (see module docstring).

    Args:
        kind: ``"mean"``, ``"final"`` or ``"log"``.
        split: ``"train"`` (the minibatch losses the inner optimizer sees) or ``"test"``
            (held-out batches of the same task: what the optimizer should generalise to).
        log_eps: ``ε`` of the log kind (the floor of the log, so a solved task stays finite).
        divergence_threshold: a normalised loss above this counts as divergence.
    """

    kind: str = "mean"
    split: str = "train"
    log_eps: float = 1e-6
    divergence_threshold: float = 1e3

    def __post_init__(self):
        if self.kind not in META_LOSS_KINDS:
            raise ValueError(f"kind: must be one of {META_LOSS_KINDS}, got {self.kind!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}, got {self.split!r}")
        if not self.log_eps > 0:
            raise ValueError(f"log_eps: must be > 0, got {self.log_eps!r}")
        if not self.divergence_threshold > 0:
            raise ValueError("divergence_threshold: must be > 0, "
                             f"got {self.divergence_threshold!r}")

    @property
    def needs_every_term(self) -> bool:
        """False for ``final``: only ``ℓ̂_T`` matters, so held-out losses are evaluated once."""
        return self.kind != "final"

    def combine(self, terms: Sequence[Tensor]) -> Tensor:
        """The segment's meta-loss from its normalised terms (a differentiable scalar)."""
        if len(terms) == 0:
            raise ValueError("terms: a segment needs at least one inner loss")
        if self.kind == "final":
            return terms[-1]
        stacked = torch.stack(list(terms))
        if self.kind == "log":
            stacked = torch.log(stacked.clamp_min(0.0) + self.log_eps)
        return stacked.mean()

    def is_divergent(self, normalized_loss: Tensor) -> Tensor:
        """Bool tensor: the term is non-finite or beyond ``divergence_threshold``."""
        return ~torch.isfinite(normalized_loss) | (normalized_loss > self.divergence_threshold)
