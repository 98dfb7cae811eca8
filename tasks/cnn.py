"""A small convolutional network on the bundled 8x8 digits.

Model: ``Conv(1->c, 3x3, pad 1) -> act -> Conv(c->2c, 3x3, stride 2, pad 1) -> act -> flatten
(2c*4*4) -> Linear(., 10)``; loss = mean softmax cross-entropy (+ optional L2 on weights).
Pixels are standardised per position with training statistics (as for the other families), then
reshaped to ``(N, 1, 8, 8)``. The family samples the channel count, activation, batch size and a
training subset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform

from .data import load_real, split_and_standardize
from .mlp import ACTIVATIONS
from .supervised import ClassificationTask

__all__ = ["CNNDigitsFamily", "CNNTask"]

IMAGE_SIDE = 8  # load_digits images are 8x8


class CNNTask(ClassificationTask):
    """Two 3x3 convolutions (the second with stride 2) and a linear read-out."""

    def __init__(self, data, *, channels: int, activation: str, **kwargs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.channels, self.activation = int(channels), activation
        super().__init__(data, **kwargs)
        # Features arrive flattened (N, 64); the network wants images (N, 1, 8, 8).
        self.x_train = self.x_train.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        self.x_test = self.x_test.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)

    def build_module(self) -> nn.Module:
        c = self.channels
        act = ACTIVATIONS[self.activation]
        side_after_stride = IMAGE_SIDE // 2
        return nn.Sequential(
            nn.Conv2d(1, c, kernel_size=3, padding=1),
            act(),
            nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
            act(),
            nn.Flatten(),
            nn.Linear(2 * c * side_after_stride**2, self.num_classes),
        )

    def batch_key(self):
        """CNNs of one width (channels) and activation, penalty and batch size stack
        (``SupervisedBatch``: only data and parameters differ)."""
        return self._supervised_batch_key("cnn", self.channels, self.activation)

    def describe(self) -> str:
        return (
            f"{self.name}(channels={self.channels}, act={self.activation}, "
            f"n_train={self.num_train}, bs={self.batch_size})"
        )


class CNNDigitsFamily(TaskFamily):
    """Samples channels log-uniformly in ``channels``, activation, batch size, training subset."""

    name = "cnn_digits"

    def __init__(
        self,
        channels: tuple[int, int] = (4, 16),
        activations: Sequence[str] = ("tanh", "relu", "gelu"),
        batch_sizes: Sequence[int] = (32, 64, 128),
        train_fraction: tuple[float, float] = (0.5, 1.0),
        l2: float = 0.0,
        test_fraction: float = 0.25,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        if isinstance(activations, str):
            activations = (activations,)
        bad = [a for a in activations if a not in ACTIVATIONS]
        if bad or not activations:
            raise ValueError(f"unknown activation(s) {bad}; choose from {sorted(ACTIVATIONS)}")
        self.channels, self.activations = tuple(channels), tuple(activations)
        self.batch_sizes, self.train_fraction = tuple(batch_sizes), tuple(train_fraction)
        self.l2, self.test_fraction = float(l2), float(test_fraction)

    def sample(self, generator: torch.Generator) -> CNNTask:
        features, labels = load_real("digits")
        low_f, high_f = self.train_fraction
        fraction = low_f + (high_f - low_f) * (
            float(torch.rand((), generator=generator, dtype=torch.float64)))
        data = split_and_standardize(features, labels, generator, self.test_fraction, fraction)
        return CNNTask(
            data,
            channels=sample_int_log_uniform(generator, *self.channels),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
            l2=self.l2,
            name="cnn_digits",
            **self._task_kwargs(),
        )
