"""Tasks advanced together: ``TaskBatch`` (the vectorised meta-training engine's form of ``B``
tasks with one ``Task.batch_key()``) and ``RowPartition`` (a batch's rows split by a per-row
label, as a group of dense tasks of several activations needs).

A task family opts in by giving its tasks a ``batch_key()`` and a ``stack`` classmethod that
returns its ``TaskBatch`` subclass (``tasks/dense.py``, ``tasks/cnn.py``, ...); the engines in
``metaopt.meta`` (``vectorised``, ``flat_buckets``) hold the batches and never a family's code.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from .task import Batch, Task

__all__ = ["RowPartition", "TaskBatch"]


class RowPartition:
    """The rows of a batch split by a per-row label (activation, loss kind): each label's rows are
    computed on their own (``take`` or ``split``), then put back in row order (``merge``).
    Computing every activation on every row and selecting by ``torch.where`` costs each
    activation, and its first and second derivatives in meta-training, on all rows.

    Where each label's rows are one block (the engine orders a group's runs by
    ``Task.batch_label``), ``split`` cuts the rows and ``merge`` concatenates them: no gather,
    whose backward would scatter into a zero tensor of all the rows (for one part after another,
    and again in the second-order pass)."""

    def __init__(self, labels: Sequence[Hashable], device, order: Sequence | None = None):
        """``order``: the labels' order in ``parts`` (default: first appearance)."""
        labels = list(labels)
        order = dict.fromkeys(labels) if order is None else order
        rows = {label: [r for r, have in enumerate(labels) if have == label] for label in order}
        rows = {label: r for label, r in rows.items() if r}
        self.parts = [(label, torch.tensor(r, device=device)) for label, r in rows.items()]
        self.single = len(self.parts) == 1
        self.sizes = [len(r) for r in rows.values()]
        self.blocks = [r for block in rows.values() for r in block] == list(range(len(labels)))
        index = torch.cat([r for _, r in self.parts])
        self.inverse = torch.empty_like(index)
        self.inverse[index] = torch.arange(len(index), device=device)

    def take(self, value: Tensor, rows: Tensor) -> Tensor:
        return value if self.single else value.index_select(0, rows)

    def split(self, value: Tensor) -> list[Tensor]:
        """Every part's rows of ``value``, in ``parts``' order."""
        if self.single:
            return [value]
        if self.blocks:
            return list(value.split(self.sizes))
        return [value.index_select(0, rows) for _, rows in self.parts]

    def merge(self, values: Sequence[Tensor]) -> Tensor:
        if self.single:
            return values[0]
        out = torch.cat(list(values))
        return out if self.blocks else out.index_select(0, self.inverse)


class TaskBatch(ABC):
    """``B`` tasks with equal ``batch_key`` advanced as one program over a leading task dimension.

    Parameters are stacked ``{name: (B, *shape)}`` by ``stack_values`` (a family whose tasks differ
    in shape pads them; it then documents why the padding is exact) and split back by
    ``unstack_values``. ``loss(params, batch)`` returns the ``(B,)`` vector of the tasks' losses,
    ``L_b = tasks[b].loss(params_b, batch_b)``, differentiable w.r.t. ``params`` (task ``b``'s loss
    depends on row ``b`` only, so ``∂ Σ_b L_b / ∂ params`` is every task's own gradient).
    ``train_batch(generators)`` draws task ``b``'s batch from ``generators[b]`` with exactly the
    draws of ``tasks[b].train_batch`` (None: a placeholder batch, no draw), so a vectorised run
    sees the same minibatch stream as the loop. ``select(rows)`` keeps a subset of the tasks.
    Subclasses list their stacked per-task tensors in ``stacked_attributes``.
    """

    stacked_attributes: tuple[str, ...] = ()

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("tasks: a TaskBatch needs at least one task")
        first = self.tasks[0]
        self.device, self.dtype = first.device, first.dtype
        self.loss_offset = torch.tensor([t.loss_offset for t in self.tasks], dtype=torch.float64,
                                        device=self.device)
        self.loss_scale = torch.tensor([t.loss_scale for t in self.tasks], dtype=torch.float64,
                                       device=self.device)

    def __len__(self) -> int:
        return len(self.tasks)

    @abstractmethod
    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """``(B,)`` losses; ``params[name]`` has shape ``(B, *stacked shape)``."""

    @abstractmethod
    def train_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        """The stacked training batches (``generators[b]`` None: a placeholder, nothing drawn)."""

    def test_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        """The stacked ``tasks[b].test_batch(generators[b])``; by default the train batch form of
        tasks whose test batch draws nothing (override for sampled test sets)."""
        return self.train_batch([None] * len(self.tasks))

    def loss_and_grads(self, params: Mapping[str, Tensor], batch: Batch, *, grad: bool,
                       retain_graph: bool = False, create_graph: bool = False
                       ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """``(L, ∂ Σ_b L_b / ∂ params)``, the gradient in ``params``' order (None when ``grad``
        is False): what a vectorised inner step needs."""
        loss = self.loss(params, batch)
        if not grad:
            return loss, None
        return loss, torch.autograd.grad(loss.sum(), list(params.values()),
                                         retain_graph=retain_graph, create_graph=create_graph)

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        """Stack per-task tensors shaped like parameter ``name`` (and its per-parameter state)."""
        return torch.stack(list(values))

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        """The inverse of ``stack_values``: one tensor per task."""
        return list(value.unbind(0))

    def tensor_scales(self) -> Mapping[str, Tensor] | None:
        """Per parameter name a ``(B,)`` scale ``s`` when this batch's loss reads its tensors
        rescaled, ``loss(θ) = rescaled_loss(s ⊙ θ)`` (one scale per task and tensor: the
        augmented tasks' reparametrisation); None otherwise. An engine that holds a run's tensors
        as one flat row then rescales the rows with one multiply instead of a multiply per
        tensor (and per tensor again in each backward pass)."""
        return None

    def rescaled_loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """``loss`` of tensors already multiplied by ``tensor_scales()`` (``loss`` itself where
        there are none: every scale is 1)."""
        return self.loss(params, batch)

    def normalized_loss(self, losses: Tensor) -> Tensor:
        """``(L_b − offset_b) / scale_b`` for every task (``Task.normalized_loss`` row-wise)."""
        return (losses - self.loss_offset.to(losses.dtype)) / self.loss_scale.to(losses.dtype)

    def select(self, rows: Sequence[int]) -> TaskBatch:
        """The batch of ``tasks[r] for r in rows`` (stacked tensors indexed, padding kept)."""
        out = copy.copy(self)
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        out.tasks = [self.tasks[r] for r in rows]
        for name in ("loss_offset", "loss_scale", *self.stacked_attributes):
            setattr(out, name, getattr(self, name).index_select(0, index))
        return out
