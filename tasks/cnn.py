"""A small convolutional network on the bundled 8x8 digits.

Model: ``Conv(1->c, 3x3, pad 1) -> act -> Conv(c->2c, 3x3, stride 2, pad 1) -> act -> flatten
(2c*4*4) -> Linear(., 10)``; loss = mean softmax cross-entropy (+ optional L2 on weights).
Pixels are standardised per position with training statistics (as for the other families), then
reshaped to ``(N, 1, 8, 8)``. The family samples the channel count, activation, batch size and a
training subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform
from metaopt.task_batch import TaskBatch

from .data import load_real, split_and_standardize
from .dense import ACTIVATION_CODES, draw_rows, select_activation, weighted_rows
from .mlp import ACTIVATIONS
from .supervised import ClassificationTask, stack_padded

__all__ = ["CNNBatch", "CNNDigitsFamily", "CNNTask"]

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
        """CNNs of every width (channels), activation, penalty and batch size share one padded
        ``CNNBatch``."""
        return ("cnn", self.num_classes, self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[CNNTask]) -> CNNBatch:
        return CNNBatch(tasks)

    def describe(self) -> str:
        return (
            f"{self.name}(channels={self.channels}, act={self.activation}, "
            f"n_train={self.num_train}, bs={self.batch_size})"
        )


class CNNBatch(TaskBatch):
    """CNNs of any channel counts ``c_b``, activations and penalties, padded to the largest ``C``
    (``tasks.dense`` for the minibatch rows and the activation as data).

    Task ``b``'s parameters sit in the top-left corner of the padded ones: the first convolution's
    ``c_b`` of ``C`` output channels, the second's ``2c_b`` of ``2C`` outputs and ``c_b`` inputs,
    the read-out's first ``2c_b·16`` inputs (the flatten is channel-major, so a padded channel's
    16 features come after the real ones). The padding is exact: a padded channel has zero
    weights and bias, so it is ``act(0) = 0`` everywhere and meets only zero weights downstream;
    every padded weight's gradient is exactly 0.

    The convolutions run as matrix products over unfolded patches (im2col)::

        P = unfold(h, 3×3) ∈ ℝ^{B×N×9C×S},   conv(h)_{b,n} = W_b P_{b,n} + β_b

    one batched product over the tasks. A vmapped ``conv2d`` (a grouped convolution) cost more in
    meta-training's loss, gradient and second-order backward on CPU, most for the small groups
    that mixtures form (one core, float32: 2.24 / 3.49 / 12.7 ms for 1 / 4 / 16 tasks, against
    1.10 / 2.70 / 11.1 ms).
    """

    stacked_attributes = ("x_train", "y_train", "x_test", "y_test", "act", "l2")

    def __init__(self, tasks: Sequence[CNNTask]):
        super().__init__(tasks)
        self.channels = max(t.channels for t in self.tasks)
        self.x_train, self.y_train = stack_padded([(t.x_train, t.y_train) for t in self.tasks])
        self.x_test, self.y_test = stack_padded([(t.x_test, t.y_test) for t in self.tasks])
        self.act = torch.tensor([ACTIVATION_CODES[t.activation] for t in self.tasks],
                                device=self.device)
        self.l2 = torch.tensor([t.l2 for t in self.tasks], dtype=self.dtype, device=self.device)
        self._present()

    def _present(self) -> None:
        self.activations = sorted({int(a) for a in self.act.tolist()})
        self.penalised = bool(self.l2.any())

    def select(self, rows):
        out = super().select(rows)
        out._present()
        return out

    def _shape(self, name: str, channels: int) -> tuple[int, ...]:
        c, side = channels, IMAGE_SIDE // 2
        return {"0.weight": (c, 1, 3, 3), "0.bias": (c,), "2.weight": (2 * c, c, 3, 3),
                "2.bias": (2 * c,), "5.weight": (self.tasks[0].num_classes, 2 * c * side ** 2),
                "5.bias": (self.tasks[0].num_classes,)}[name]

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        shape = self._shape(name, self.channels)
        return torch.stack([F.pad(v, [p for size, have in zip(reversed(shape), reversed(v.shape))
                                      for p in (0, size - have)]) for v in values])

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return [row[tuple(slice(0, n) for n in self._shape(name, t.channels))]
                for row, t in zip(value.unbind(0), self.tasks)]

    def _conv(self, h: Tensor, weight: Tensor, bias: Tensor, side: int, stride: int) -> Tensor:
        """``act(conv3x3(h) + bias)`` of every task: ``h`` ``(B, N, C_in, side²)`` ->
        ``(B, N, C_out, (side/stride)²)``."""
        tasks, rows = h.shape[:2]
        patches = F.unfold(h.reshape(tasks * rows, -1, side, side), 3, padding=1, stride=stride)
        patches = patches.view(tasks, rows, *patches.shape[1:])
        out = torch.einsum("bok,bnkp->bnop", weight.flatten(2), patches)
        return select_activation(out + bias[:, None, :, None], self.act, self.activations)

    def loss(self, params: Mapping[str, Tensor], batch) -> Tensor:
        x, weights, y = batch
        h = self._conv(x.flatten(2), params["0.weight"], params["0.bias"], IMAGE_SIDE, 1)
        h = self._conv(h, params["2.weight"], params["2.bias"], IMAGE_SIDE, 2)
        logits = torch.baddbmm(params["5.bias"].unsqueeze(1), h.flatten(2),
                               params["5.weight"].transpose(1, 2))
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss = (ce.view_as(weights) * weights).sum(1)
        if self.penalised:
            for name in ("0.weight", "2.weight", "5.weight"):
                loss = loss + 0.5 * self.l2 * params[name].flatten(1).square().sum(1)
        return loss

    def _gather(self, split: str, indices) -> tuple[Tensor, Tensor, Tensor]:
        index, weights, rows = weighted_rows(indices, self.dtype, self.device)
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        return x[rows, index], weights, y[rows, index]

    def train_batch(self, generators):
        return self._gather("train", draw_rows(self.tasks, generators, "train"))

    def test_batch(self, generators):
        return self._gather("test", draw_rows(self.tasks, generators, "test"))


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
