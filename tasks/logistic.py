"""L2-regularised multinomial logistic regression on bundled real data or generated clusters.

Loss (Gradient-Flow seed, "Logistic Regression with Regularization"):

    L(W, b) = (1/n) sum_i CE(softmax(W x_i + b), y_i) + (l2 / 2) ||W||_F^2

This equals scikit-learn's ``LogisticRegression(C=1/(l2 * n))`` objective divided by ``C * n``
(multinomial case), which the tests use as an independent oracle for the minimiser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaopt.task import TaskFamily, sample_choice, sample_log_uniform

from .data import REAL_DATASETS, load_real, make_blobs, split_and_standardize
from .dense import DenseBatch, DenseLayout, dense_key
from .supervised import ClassificationTask

__all__ = ["LogisticRegressionFamily", "LogisticRegressionTask"]


class LogisticRegressionTask(ClassificationTask):
    """A linear softmax classifier ``nn.Linear(d, C)`` with an L2 penalty on the weight matrix."""

    def build_module(self) -> nn.Module:
        return nn.Linear(self.num_features, self.num_classes)

    # -- vectorised meta-batches: one padded batch with least squares (``tasks.dense``) -----------
    def dense_layout(self) -> DenseLayout:
        return DenseLayout(("",), (self.num_features, self.num_classes), None, "ce")

    def batch_key(self):
        return dense_key(self, self.dense_layout())

    @classmethod
    def stack(cls, tasks: Sequence[LogisticRegressionTask]) -> DenseBatch:
        return DenseBatch(tasks)

    def describe(self) -> str:
        return (
            f"{self.name}(n_train={self.num_train}, d={self.num_features}, C={self.num_classes}, "
            f"l2={self.l2:.2g}, bs={self.batch_size})"
        )


class LogisticRegressionFamily(TaskFamily):
    """Samples a dataset from ``datasets`` ("digits", "breast_cancer", "wine", "synthetic"), a
    random train/test split, a random training subset of fraction in ``train_fraction``, the L2
    strength log-uniformly in ``l2``, and the batch size from ``batch_sizes``.

    Synthetic data: ``synthetic_examples`` Gaussian-cluster points with a sampled number of
    features in ``synthetic_features`` and classes in ``synthetic_classes``.
    """

    name = "logistic_regression"

    def __init__(
        self,
        datasets: Sequence[str] = ("digits",),
        l2: tuple[float, float] = (1e-4, 1e-2),
        batch_sizes: Sequence[int] = (32, 64, 128),
        train_fraction: tuple[float, float] = (1.0, 1.0),
        test_fraction: float = 0.25,
        synthetic_examples: int = 512,
        synthetic_features: tuple[int, int] = (4, 32),
        synthetic_classes: tuple[int, int] = (2, 5),
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        if isinstance(datasets, str):
            datasets = (datasets,)
        unknown = [d for d in datasets if d not in (*REAL_DATASETS, "synthetic")]
        if unknown or not datasets:
            raise ValueError(
                f"unknown dataset(s) {unknown}; choose from {(*REAL_DATASETS, 'synthetic')}"
            )
        self.datasets = tuple(datasets)
        self.l2 = tuple(l2)
        self.batch_sizes = tuple(batch_sizes)
        self.train_fraction = tuple(train_fraction)
        self.test_fraction = float(test_fraction)
        self.synthetic_examples = int(synthetic_examples)
        self.synthetic_features = tuple(synthetic_features)
        self.synthetic_classes = tuple(synthetic_classes)

    def sample(self, generator: torch.Generator) -> LogisticRegressionTask:
        dataset = sample_choice(generator, self.datasets)
        if dataset == "synthetic":
            low_d, high_d = self.synthetic_features
            low_c, high_c = self.synthetic_classes
            num_features = int(torch.randint(low_d, high_d + 1, (), generator=generator))
            num_classes = int(torch.randint(low_c, high_c + 1, (), generator=generator))
            features, labels = make_blobs(
                generator, self.synthetic_examples, num_features, num_classes
            )
        else:
            features, labels = load_real(dataset)
        low_f, high_f = self.train_fraction
        fraction = low_f + (high_f - low_f) * (
            float(torch.rand((), generator=generator, dtype=torch.float64)))
        data = split_and_standardize(features, labels, generator, self.test_fraction, fraction)
        return LogisticRegressionTask(
            data,
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
            l2=sample_log_uniform(generator, *self.l2),
            name=f"logreg_{dataset}",
            **self._task_kwargs(),
        )
