"""An MLP autoencoder on the bundled 8x8 digits (a held-out benchmark family).

Model: ``64 -> hidden -> act -> bottleneck -> act -> hidden -> act -> 64`` (four ``nn.Linear``
layers); loss: mean squared reconstruction error of the standardised pixels (+ optional L2 on
weights). Pixels are standardised with training statistics, as for the classification families;
always-blank pixels stay 0. Normaliser: ``loss_scale = mean(x_train²)``, the error of predicting 0
(the training mean) everywhere, so a normalised loss of 1 is "reconstructs nothing".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform

from .data import SplitData, load_real, split_and_standardize
from .dense import DenseBatch, DenseLayout, dense_key
from .mlp import ACTIVATIONS
from .supervised import SupervisedTask

__all__ = ["AutoencoderDigitsFamily", "AutoencoderTask"]


class AutoencoderTask(SupervisedTask):
    """Reconstruct ``x`` through a ``bottleneck``-unit code (targets are the inputs)."""

    def __init__(self, data: SplitData, *, hidden: int, bottleneck: int, activation: str, **kwargs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.hidden, self.bottleneck, self.activation = int(hidden), int(bottleneck), activation
        super().__init__(data, **kwargs)

    def build_module(self) -> nn.Module:
        act, d = ACTIVATIONS[self.activation], self.num_features
        return nn.Sequential(nn.Linear(d, self.hidden), act(),
                             nn.Linear(self.hidden, self.bottleneck), act(),
                             nn.Linear(self.bottleneck, self.hidden), act(),
                             nn.Linear(self.hidden, d))

    def data_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)

    # -- vectorised meta-batches: padded widths, shared with depth-3 MLPs (``tasks.dense``) -------
    def dense_layout(self) -> DenseLayout:
        d = self.num_features
        return DenseLayout(("0.", "2.", "4.", "6."), (d, self.hidden, self.bottleneck,
                                                      self.hidden, d),
                           self.activation, "mse", mse_coefficient=1.0 / d)

    def batch_label(self):
        return self.activation  # DenseBatch applies each activation to its own rows

    def batch_key(self):
        return dense_key(self, self.dense_layout())

    @classmethod
    def stack(cls, tasks: Sequence[AutoencoderTask]) -> DenseBatch:
        return DenseBatch(tasks)

    @property
    def loss_scale(self) -> float:
        return max(float(self.x_train.pow(2).mean()), 1e-12)

    def describe(self) -> str:
        return (f"{self.name}(hidden={self.hidden}, bottleneck={self.bottleneck}, "
                f"act={self.activation}, n_train={self.num_train}, bs={self.batch_size})")


class AutoencoderDigitsFamily(TaskFamily):
    """Samples hidden width (log-uniform in ``hidden``), bottleneck (in ``bottleneck``), activation,
    batch size and a training subset."""

    name = "autoencoder_digits"

    def __init__(self, hidden: tuple[int, int] = (32, 64), bottleneck: tuple[int, int] = (4, 16),
                 activations: Sequence[str] = ("tanh", "relu", "gelu"),
                 batch_sizes: Sequence[int] = (64,),
                 train_fraction: tuple[float, float] = (0.5, 1.0), l2: float = 0.0,
                 test_fraction: float = 0.25, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        bad = [a for a in activations if a not in ACTIVATIONS]
        if bad or not activations:
            raise ValueError(f"unknown activation(s) {bad}; choose from {sorted(ACTIVATIONS)}")
        if not 1 <= hidden[0] <= hidden[1] or not 1 <= bottleneck[0] <= bottleneck[1]:
            raise ValueError(f"need 1 <= low <= high for hidden and bottleneck, got {hidden}, "
                             f"{bottleneck}")
        self.hidden, self.bottleneck = tuple(map(int, hidden)), tuple(map(int, bottleneck))
        self.activations, self.batch_sizes = activations, tuple(batch_sizes)
        self.train_fraction, self.l2 = tuple(train_fraction), float(l2)
        self.test_fraction = float(test_fraction)

    def sample(self, generator: torch.Generator) -> AutoencoderTask:
        features, labels = load_real("digits")
        low, high = self.train_fraction
        fraction = low + (high - low) * (
            float(torch.rand((), generator=generator, dtype=torch.float64)))
        split = split_and_standardize(features, labels, generator, self.test_fraction, fraction)
        data = SplitData(split.x_train, split.x_train, split.x_test, split.x_test,
                         split.num_classes)
        return AutoencoderTask(
            data, hidden=sample_int_log_uniform(generator, *self.hidden),
            bottleneck=sample_int_log_uniform(generator, *self.bottleneck),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)), l2=self.l2,
            name="autoencoder_digits", **self._task_kwargs())
