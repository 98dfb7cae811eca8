"""MLP classification on bundled digits (8x8 images flattened to 64 features) or generated clusters.

Model: ``depth`` hidden layers of ``width`` units with a sampled activation, then a linear
read-out; loss = mean softmax cross-entropy + ``(l2/2) sum ||W||^2`` (no penalty by default).
The family samples width log-uniformly in 8..128, depth in 1..3, the activation from
{tanh, relu, gelu}, the batch size and a training subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform

from .data import REAL_DATASETS, load_real, make_blobs, split_and_standardize
from .dense import DenseBatch, DenseLayout, dense_key
from .supervised import ClassificationTask

__all__ = ["ACTIVATIONS", "MLPBatch", "MLPFamily", "MLPTask"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class MLPTask(ClassificationTask):
    """``Linear(d, w) -> act -> [Linear(w, w) -> act] * (depth - 1) -> Linear(w, C)``."""

    def __init__(self, data, *, width: int, depth: int, activation: str, padding: bool = True,
                 **kwargs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        if depth < 1 or width < 1:
            raise ValueError(f"need depth >= 1 and width >= 1, got depth={depth}, width={width}")
        self.width, self.depth, self.activation = int(width), int(depth), activation
        self.padding = bool(padding)
        super().__init__(data, **kwargs)

    def build_module(self) -> nn.Module:
        layers: list[nn.Module] = []
        fan_in = self.num_features
        for _ in range(self.depth):
            layers += [nn.Linear(fan_in, self.width), ACTIVATIONS[self.activation]()]
            fan_in = self.width
        layers.append(nn.Linear(fan_in, self.num_classes))
        return nn.Sequential(*layers)

    def dense_layout(self) -> DenseLayout:
        return DenseLayout(tuple(f"{2 * k}." for k in range(self.depth + 1)),
                           (self.num_features, *[self.width] * self.depth, self.num_classes),
                           self.activation, "ce")

    def batch_label(self):
        return self.activation  # DenseBatch applies each activation to its own rows

    def batch_key(self):
        """With ``padding`` (the default): every MLP of this depth, whatever its width,
        activation, data set, penalty and minibatch size (``DenseBatch`` pads them exactly, and
        shares the batch with the other dense tasks of the same layer names). Without: MLPs of
        one architecture and minibatch size on data of one shape only."""
        if self.padding:
            return dense_key(self, self.dense_layout())
        return (MLPTask, self.depth, self.activation, self.num_features, self.num_classes,
                self.l2, self.l1, self.width, min(self.batch_size, self.num_train),
                min(self.batch_size, int(self.x_test.shape[0])), self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[MLPTask]) -> DenseBatch:
        return DenseBatch(tasks)

    def describe(self) -> str:
        return (
            f"{self.name}(width={self.width}, depth={self.depth}, act={self.activation}, "
            f"n_train={self.num_train}, bs={self.batch_size})"
        )


#: the batched form of MLPs (one ``DenseBatch`` for every dense task; the name stays public)
MLPBatch = DenseBatch


class MLPFamily(TaskFamily):
    """Samples dataset (``datasets``: "digits", "breast_cancer", "wine", "synthetic"), width in
    ``width`` (log-uniform integers), depth in ``depth`` (uniform integers), activation from
    ``activations``, batch size from ``batch_sizes`` and a training subset fraction.

    ``padding`` (default true): vectorised meta-training groups the sampled MLPs by depth only,
    padding widths, data shapes and minibatch sizes (``tasks.dense.DenseBatch``): larger
    groups, paid for in memory and padded arithmetic (``scripts/benchmark.py meta_throughput``
    measures both). Off: groups of one architecture and minibatch size."""

    name = "mlp"

    def __init__(
        self,
        datasets: Sequence[str] = ("digits",),
        width: tuple[int, int] = (8, 128),
        depth: tuple[int, int] = (1, 3),
        activations: Sequence[str] = ("tanh", "relu", "gelu"),
        batch_sizes: Sequence[int] = (32, 64, 128),
        train_fraction: tuple[float, float] = (0.5, 1.0),
        l2: float = 0.0,
        test_fraction: float = 0.25,
        synthetic_examples: int = 512,
        synthetic_features: int = 16,
        synthetic_classes: int = 4,
        padding: bool = True,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        if not isinstance(padding, bool):
            raise ValueError(f"padding: must be true or false, got {padding!r}")
        self.padding = padding
        if isinstance(datasets, str):
            datasets = (datasets,)
        if isinstance(activations, str):
            activations = (activations,)
        unknown = [d for d in datasets if d not in (*REAL_DATASETS, "synthetic")]
        if unknown or not datasets:
            raise ValueError(f"unknown dataset(s) {unknown}; "
                             f"choose from {(*REAL_DATASETS, 'synthetic')}")
        bad_activations = [a for a in activations if a not in ACTIVATIONS]
        if bad_activations or not activations:
            raise ValueError(f"unknown activation(s) {bad_activations}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.datasets, self.activations = tuple(datasets), tuple(activations)
        self.width, self.depth = tuple(width), tuple(depth)
        self.batch_sizes, self.train_fraction = tuple(batch_sizes), tuple(train_fraction)
        self.l2, self.test_fraction = float(l2), float(test_fraction)
        self.synthetic_examples = int(synthetic_examples)
        self.synthetic_features, self.synthetic_classes = (int(synthetic_features),
                                                           int(synthetic_classes))

    def sample(self, generator: torch.Generator) -> MLPTask:
        dataset = sample_choice(generator, self.datasets)
        if dataset == "synthetic":
            features, labels = make_blobs(
                generator, self.synthetic_examples, self.synthetic_features, self.synthetic_classes
            )
        else:
            features, labels = load_real(dataset)
        low_f, high_f = self.train_fraction
        fraction = low_f + (high_f - low_f) * (
            float(torch.rand((), generator=generator, dtype=torch.float64)))
        data = split_and_standardize(features, labels, generator, self.test_fraction, fraction)
        return MLPTask(
            data,
            width=sample_int_log_uniform(generator, *self.width),
            depth=int(torch.randint(self.depth[0], self.depth[1] + 1, (), generator=generator)),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
            l2=self.l2,
            padding=self.padding,
            name=f"mlp_{dataset}",
            **self._task_kwargs(),
        )
