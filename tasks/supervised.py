"""Shared machinery for data-driven tasks: minibatches from a fixed train/test split, a model built
by the concrete family, and a penalised loss.

A batch is a tuple ``(x, y)``. ``module_loss`` is ``data_loss(model(x), y) + penalty(model)``; the
functional ``loss(params, batch)`` is derived from it by ``ModuleTask`` via ``functional_call``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import (
    Batch,
    ModuleTask,
)
from metaopt.task_batch import TaskBatch

from .data import SplitData, minibatch

__all__ = ["ClassificationTask", "SupervisedBatch", "SupervisedTask", "stack_padded",
           "weight_penalty"]


def weight_penalty(model: nn.Module, l2: float = 0.0, l1: float = 0.0) -> Tensor | float:
    """``(l2/2) * sum ||W||_2^2 + l1 * sum ||W||_1`` over parameters named ``*weight`` (biases are
    not penalised, as in scikit-learn and the usual weight-decay convention)."""
    total: Tensor | float = 0.0
    if l2 == 0.0 and l1 == 0.0:
        return total
    for name, parameter in model.named_parameters():
        if name.endswith("weight"):
            if l2:
                total = total + 0.5 * l2 * parameter.pow(2).sum()
            if l1:
                total = total + l1 * parameter.abs().sum()
    return total


class SupervisedTask(ModuleTask):
    """A model trained on ``(x, y)`` pairs with minibatches of ``batch_size`` examples.

    ``init_seed`` fixes the canonical initialisation: ``init_params()`` draws the default
    fan-in-uniform init from ``generator_from_seed(init_seed)``.
    """

    def __init__(
        self,
        data: SplitData,
        *,
        batch_size: int,
        init_seed: int,
        l2: float = 0.0,
        l1: float = 0.0,
        name: str = "supervised",
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        self.name = name
        self.num_features = data.num_features
        self.num_classes = data.num_classes
        self.batch_size = int(batch_size)
        self.init_seed = int(init_seed)
        self.l2 = float(l2)
        self.l1 = float(l1)
        self.x_train, self.x_test = self._to(data.x_train), self._to(data.x_test)
        self.y_train, self.y_test = self._targets(data.y_train), self._targets(data.y_test)

    def _targets(self, labels: Tensor) -> Tensor:
        return self._to(labels)

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @abstractmethod
    def data_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean per-example loss."""

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return self.data_loss(module(x), y) + weight_penalty(module, self.l2, self.l1)

    def train_batch(self, generator: torch.Generator) -> Batch:
        index = minibatch(generator, self.num_train, self.batch_size).to(self.device)
        return self.x_train[index], self.y_train[index]

    def eval_batch(self, split: str = "test") -> Batch:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def test_batch(self, generator: torch.Generator | None = None) -> Batch:
        """The full test set, or a ``batch_size`` minibatch of it when a generator is given."""
        if generator is None:
            return self.eval_batch("test")
        index = minibatch(generator, int(self.x_test.shape[0]), self.batch_size).to(self.device)
        return self.x_test[index], self.y_test[index]


    def _supervised_batch_key(self, *architecture):
        """A ``batch_key`` for subclasses that opt in: the loss is ``module_loss`` of the same
        architecture (``architecture`` names it), penalties and minibatch sizes; only the data
        and the parameters differ between tasks of one key."""
        num_test = int(self.x_test.shape[0])
        return (type(self), architecture, self.num_features, self.num_classes, self.l2, self.l1,
                min(self.batch_size, self.num_train), min(self.batch_size, num_test),
                self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[SupervisedTask]) -> SupervisedBatch:
        return SupervisedBatch(tasks)


def stack_padded(pairs: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-task data sets ``(x, y)`` stacked, each padded with zero rows to the longest (the
    padding is never drawn: ``minibatch`` indexes below a task's own size)."""
    rows = max(int(x.shape[0]) for x, _ in pairs)
    xs = torch.stack([torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])
                      for x, _ in pairs])
    ys = torch.stack([torch.cat([y, y.new_zeros(rows - y.shape[0], *y.shape[1:])])
                      for _, y in pairs])
    return xs, ys


class SupervisedBatch(TaskBatch):
    """Supervised tasks of one architecture, batched by ``torch.func.vmap`` of the first task's
    functional loss (tasks of one ``batch_key`` differ only in data and parameters).

    The tasks' train (test) sets are stacked, padded to the longest; task ``b``'s minibatch rows
    are drawn from its own generator with ``minibatch`` exactly as ``SupervisedTask.train_batch``
    does (only indices below its own set size), then gathered in one indexing op.
    """

    stacked_attributes = ("x_train", "y_train", "x_test", "y_test")

    def __init__(self, tasks: Sequence[SupervisedTask]):
        super().__init__(tasks)
        self.x_train, self.y_train = stack_padded([(t.x_train, t.y_train) for t in self.tasks])
        self.x_test, self.y_test = stack_padded([(t.x_test, t.y_test) for t in self.tasks])
        self._loss = torch.func.vmap(self.tasks[0].loss)

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self._loss(dict(params), batch)

    def _gather(self, x: Tensor, y: Tensor, sizes: Sequence[int],
                generators: Sequence[torch.Generator | None]) -> Batch:
        size = min(self.tasks[0].batch_size, min(sizes))
        index = torch.stack([torch.arange(size) if g is None else minibatch(g, n, size)
                             for n, g in zip(sizes, generators)]).to(self.device)
        rows = torch.arange(len(self.tasks), device=self.device).unsqueeze(1)
        return x[rows, index], y[rows, index]

    def train_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        return self._gather(self.x_train, self.y_train, [t.num_train for t in self.tasks],
                            generators)

    def test_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        return self._gather(self.x_test, self.y_test,
                            [int(t.x_test.shape[0]) for t in self.tasks], generators)


class ClassificationTask(SupervisedTask):
    """Softmax cross-entropy classification. Normaliser: ``loss_scale = log(num_classes)``, the
    cross-entropy of the uniform prediction (a fixed per-family scale, so a normalised loss of 1 is
    "knows nothing" regardless of the random initialisation)."""

    is_classification = True

    def data_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction, target)

    @property
    def loss_scale(self) -> float:
        return math.log(self.num_classes)

    def accuracy(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        x, y = batch
        logits = torch.func.functional_call(self._template().model, dict(params), (x,))
        return (logits.argmax(dim=1) == y).to(self.dtype).mean()

    def describe(self) -> str:
        return f"{self.name}(n_train={self.num_train}, d={self.num_features}, C={self.num_classes})"
