"""Linear regression on generated data: least squares and the Lasso (the Runge–Kutta
gradient-flow optimizers' "Lasso" experiment).

Data: ``X = Z diag(s)`` with ``Z ~ N(0, I)`` and feature scales ``s_j`` log-uniform in
``[1/spread, 1]`` (``spread`` sampled, so the design's conditioning varies), ``y = X w* + b* +
noise_std * eps``; for the Lasso ``w*`` is sparse. Model ``nn.Linear(d, 1)``. Losses:

    least squares:  L(w, b) = (1/n) sum_i (1/2) (w . x_i + b - y_i)^2
    Lasso:          L(w, b) = (1/n) sum_i (1/2) (w . x_i + b - y_i)^2 + lam * ||w||_1

The Lasso loss is exactly scikit-learn's ``Lasso(alpha=lam)`` objective, and the least-squares
minimiser on the training set is known in closed form (``torch.linalg.lstsq``), which the tests use
as independent oracles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform, sample_log_uniform

from .data import SplitData
from .dense import DenseBatch, DenseLayout, dense_key
from .supervised import SupervisedTask

__all__ = ["LinearRegressionFamily", "LinearRegressionTask"]


class LinearRegressionTask(SupervisedTask):
    """Least squares (``l1 == 0``) or Lasso (``l1 > 0``) on fixed generated data. For least squares
    ``minimizers``/``minimum_value`` hold the exact training-set minimiser and minimum."""

    def __init__(self, data: SplitData, **kwargs):
        super().__init__(data, **kwargs)
        if self.l1 == 0.0 and self.l2 == 0.0:
            design = torch.cat(
                [data.x_train, torch.ones(data.x_train.shape[0], 1, dtype=torch.float64)], 1)
            solution = torch.linalg.lstsq(design, data.y_train.unsqueeze(1)).solution.squeeze(1)
            residual = design @ solution - data.y_train
            self.minimum_value = float(0.5 * residual.pow(2).mean())
            self.minimizers = (
                {"weight": self._to(solution[:-1].reshape(1, -1)), "bias": self._to(solution[-1:])},
            )

    def _targets(self, labels: Tensor) -> Tensor:
        return self._to(labels)

    def build_module(self) -> nn.Module:
        return nn.Linear(self.num_features, 1)

    def data_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (prediction.squeeze(-1) - target).pow(2).mean()

    # -- vectorised meta-batches: one padded batch with logistic regression (``tasks.dense``) ----
    def dense_layout(self) -> DenseLayout:
        return DenseLayout(("",), (self.num_features, 1), None, "mse", mse_coefficient=0.5)

    def batch_key(self):
        return dense_key(self, self.dense_layout())

    @classmethod
    def stack(cls, tasks: Sequence[LinearRegressionTask]) -> DenseBatch:
        return DenseBatch(tasks)

    def describe(self) -> str:
        kind = f"lasso(l1={self.l1:.2g})" if self.l1 else "least_squares"
        return f"{kind}(n_train={self.num_train}, d={self.num_features}, bs={self.batch_size})"


class LinearRegressionFamily(TaskFamily):
    """Samples the number of features (log-uniform in ``num_features``), training examples
    (log-uniform in ``num_train``), feature-scale spread (log-uniform in ``feature_spread``),
    noise level (log-uniform in ``noise_std``), batch size, and for the Lasso ``lam`` (log-uniform
    in ``l1``) and the fraction of nonzero true weights (``sparsity``)."""

    name = "least_squares"

    def __init__(
        self,
        lasso: bool = False,
        num_features: tuple[int, int] = (5, 50),
        num_train: tuple[int, int] = (100, 400),
        num_test: int = 200,
        feature_spread: tuple[float, float] = (1.0, 10.0),
        noise_std: tuple[float, float] = (0.01, 0.5),
        l1: tuple[float, float] = (1e-3, 1e-1),
        sparsity: float = 0.3,
        batch_sizes: tuple[int, ...] = (16, 32, 64),
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        if not 0.0 < sparsity <= 1.0:
            raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
        self.lasso = bool(lasso)
        self.name = "lasso" if self.lasso else "least_squares"
        self.num_features, self.num_train = tuple(num_features), tuple(num_train)
        self.num_test = int(num_test)
        self.feature_spread, self.noise_std = tuple(feature_spread), tuple(noise_std)
        self.l1, self.sparsity = tuple(l1), float(sparsity)
        self.batch_sizes = tuple(batch_sizes)

    def sample(self, generator: torch.Generator) -> LinearRegressionTask:
        d = sample_int_log_uniform(generator, *self.num_features)
        n = sample_int_log_uniform(generator, *self.num_train)
        spread = sample_log_uniform(generator, *self.feature_spread)
        noise = sample_log_uniform(generator, *self.noise_std)
        log_scales = -torch.rand(d, generator=generator, dtype=torch.float64) * torch.log(
            torch.tensor(spread))
        scales = torch.exp(log_scales)
        true_weight = torch.randn(d, generator=generator, dtype=torch.float64)
        if self.lasso:
            keep = torch.rand(d, generator=generator, dtype=torch.float64) < self.sparsity
            # at least one signal feature
            keep[int(torch.randint(d, (), generator=generator))] = True
            true_weight = true_weight * keep
        true_bias = torch.randn((), generator=generator, dtype=torch.float64)

        def draw(count: int) -> tuple[Tensor, Tensor]:
            x = torch.randn(count, d, generator=generator, dtype=torch.float64) * scales
            eps = torch.randn(count, generator=generator, dtype=torch.float64)
            return x, x @ true_weight + true_bias + noise * eps

        x_train, y_train = draw(n)
        x_test, y_test = draw(self.num_test)
        data = SplitData(x_train, y_train, x_test, y_test, num_classes=0)
        lam = sample_log_uniform(generator, *self.l1) if self.lasso else 0.0
        return LinearRegressionTask(
            data,
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
            l1=lam,
            name=self.name,
            **self._task_kwargs(),
        )
