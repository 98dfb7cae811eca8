"""Datasets for the data-driven task families. Nothing is downloaded at run time.

* Real data: scikit-learn's bundled ``load_digits`` (1797 x 64, 10 classes), ``load_breast_cancer``
  (569 x 30, 2 classes), ``load_wine`` (178 x 13, 3 classes) and ``load_iris`` (150 x 4, 3
  classes); for regression ``load_diabetes`` (442 x 10, a real-valued target,
  ``load_regression``); these ship inside the sklearn wheel.
* Generated data: Gaussian class clusters, drawn from an explicit ``torch.Generator``.

Splits come from the generator (a random permutation), and features are standardised with the
*training* split's mean and standard deviation only, so no test statistics leak into training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["REAL_DATASETS", "REGRESSION_DATASETS", "SplitData", "load_real", "load_regression",
           "make_blobs", "minibatch", "split_and_standardize"]

REAL_DATASETS = ("digits", "breast_cancer", "wine", "iris")
REGRESSION_DATASETS = ("diabetes",)


@dataclass(frozen=True)
class SplitData:
    """Standardised train/test features (float64, CPU) and integer labels."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


@functools.cache
def _load_real_arrays(name: str) -> tuple[Tensor, Tensor]:
    try:
        from sklearn import datasets
    except ImportError as error:  # pragma: no cover - sklearn is a declared test/data dependency
        raise ImportError(
            f"dataset {name!r} needs scikit-learn (pip install 'metaopt[data]')"
        ) from error
    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
        "diabetes": datasets.load_diabetes,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; known: "
                         f"{', '.join(REAL_DATASETS + REGRESSION_DATASETS)}")
    bunch = loaders[name]()
    features = torch.as_tensor(bunch.data, dtype=torch.float64)
    target_dtype = torch.float64 if name in REGRESSION_DATASETS else torch.long
    return features, torch.as_tensor(bunch.target, dtype=target_dtype)


def load_real(name: str) -> tuple[Tensor, Tensor]:
    """Raw (features, labels) of a bundled sklearn classification dataset, as CPU tensors
    (cached; do not mutate)."""
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REAL_DATASETS)}")
    return _load_real_arrays(name)


def load_regression(name: str) -> tuple[Tensor, Tensor]:
    """Raw (features, float64 targets) of a bundled sklearn regression dataset (cached)."""
    if name not in REGRESSION_DATASETS:
        raise ValueError(f"unknown regression dataset {name!r}; known: "
                         f"{', '.join(REGRESSION_DATASETS)}")
    return _load_real_arrays(name)


def make_blobs(
    generator: torch.Generator,
    num_examples: int,
    num_features: int,
    num_classes: int,
    class_separation: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """Gaussian clusters: ``y ~ U{0..C-1}``, ``x = class_separation * mu_y + eps`` with
    ``mu_c ~ N(0, I/d)*sqrt(d)`` (unit-norm-ish centres) and ``eps ~ N(0, I)``."""
    centres = torch.randn(num_classes, num_features, generator=generator, dtype=torch.float64)
    centres = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = torch.randint(num_classes, (num_examples,), generator=generator)
    noise = torch.randn(num_examples, num_features, generator=generator, dtype=torch.float64)
    return class_separation * centres[labels] + noise, labels


def split_and_standardize(
    features: Tensor,
    labels: Tensor,
    generator: torch.Generator,
    test_fraction: float = 0.25,
    train_fraction_used: float = 1.0,
) -> SplitData:
    """Random train/test split from ``generator``; keep a random ``train_fraction_used`` of the
    training split (the "data subset" variation); standardise with training statistics.

    Constant training features (e.g. always-blank digit pixels) get standard deviation 1, so they
    stay 0 instead of dividing by zero.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 < train_fraction_used <= 1.0:
        raise ValueError(f"train_fraction_used must be in (0, 1], got {train_fraction_used}")
    num_examples = features.shape[0]
    order = torch.randperm(num_examples, generator=generator)
    num_test = max(1, int(round(test_fraction * num_examples)))
    test_index, train_index = order[:num_test], order[num_test:]
    num_train_used = max(1, int(round(train_fraction_used * train_index.numel())))
    train_index = train_index[:num_train_used]
    x_train, x_test = features[train_index], features[test_index]
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    num_classes = int(labels.max().item()) + 1
    return SplitData(
        x_train=(x_train - mean) / std,
        y_train=labels[train_index],
        x_test=(x_test - mean) / std,
        y_test=labels[test_index],
        num_classes=num_classes,
    )


def minibatch(generator: torch.Generator, num_examples: int, batch_size: int) -> Tensor:
    """Indices of a minibatch: ``batch_size`` distinct examples (all of them if fewer exist)."""
    return torch.randperm(num_examples, generator=generator)[: min(batch_size, num_examples)]
