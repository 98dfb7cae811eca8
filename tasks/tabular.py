"""Regression on a bundled real dataset (sklearn's diabetes: 442 patients, 10 features, disease
progression after one year) with a linear model or a one-hidden-layer MLP — a held-out benchmark
family: never in a meta-training mixture.

Features are standardised with training statistics, and so is the target
(``y = (y_raw − mean_train) / std_train``), so the loss has the same scale for every split.

    linear:  f(x) = w·x + b
    mlp:     f(x) = w_2·σ(W_1 x + b_1) + b_2
    L = (1/n) Σ_i ½ (f(x_i) − y_i)²

Normaliser scale: ``loss_scale = ½ mean(y_train²)`` (= ½), the loss of predicting the training
mean. For the linear model the training-set minimiser is known in closed form (least squares,
``torch.linalg.lstsq``) and is the task's ``minimizers`` / ``minimum_value`` (the normaliser's
offset, as for the least-squares family).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaopt.task import TaskFamily, sample_choice, sample_int_log_uniform

from .data import REGRESSION_DATASETS, SplitData, load_regression, split_and_standardize
from .mlp import ACTIVATIONS
from .supervised import SupervisedTask

__all__ = ["TABULAR_MODELS", "TabularRegressionFamily", "TabularRegressionTask"]

TABULAR_MODELS = ("linear", "mlp")


class TabularRegressionTask(SupervisedTask):
    """Half mean squared error of a linear model or an MLP (module docstring)."""

    def __init__(self, data: SplitData, *, model: str, hidden: int, activation: str, **kwargs):
        if model not in TABULAR_MODELS:
            raise ValueError(f"unknown model {model!r}; choose from {TABULAR_MODELS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.model, self.hidden, self.activation = model, int(hidden), activation
        super().__init__(data, **kwargs)
        if model == "linear" and self.l2 == 0.0 and self.l1 == 0.0:
            ones = torch.ones(data.x_train.shape[0], 1, dtype=torch.float64)
            design = torch.cat([data.x_train, ones], 1)
            solution = torch.linalg.lstsq(design, data.y_train.unsqueeze(1)).solution.squeeze(1)
            self.minimum_value = float(0.5 * (design @ solution - data.y_train).pow(2).mean())
            self.minimizers = ({"weight": self._to(solution[:-1].reshape(1, -1)),
                                "bias": self._to(solution[-1:])},)

    def build_module(self) -> nn.Module:
        if self.model == "linear":
            return nn.Linear(self.num_features, 1)
        return nn.Sequential(nn.Linear(self.num_features, self.hidden),
                             ACTIVATIONS[self.activation](), nn.Linear(self.hidden, 1))

    def data_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (prediction.squeeze(-1) - target).pow(2).mean()

    @property
    def loss_scale(self) -> float:
        return max(0.5 * float(self.y_train.pow(2).mean()), 1e-12)

    def describe(self) -> str:
        model = "linear" if self.model == "linear" else f"mlp({self.hidden}, {self.activation})"
        return f"{self.name}({model}, n_train={self.num_train}, bs={self.batch_size})"


class TabularRegressionFamily(TaskFamily):
    """Samples the dataset, model, hidden width (log-uniform in ``hidden``), activation, batch size
    and a training subset."""

    name = "tabular_regression"

    def __init__(self, datasets: Sequence[str] = REGRESSION_DATASETS,
                 models: Sequence[str] = TABULAR_MODELS, hidden: tuple[int, int] = (16, 64),
                 activations: Sequence[str] = ("tanh", "relu"), batch_sizes: Sequence[int] = (32,),
                 train_fraction: tuple[float, float] = (0.5, 1.0), test_fraction: float = 0.25,
                 *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        datasets = (datasets,) if isinstance(datasets, str) else tuple(datasets)
        models = (models,) if isinstance(models, str) else tuple(models)
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        for key, values, allowed in (("datasets", datasets, REGRESSION_DATASETS),
                                     ("models", models, TABULAR_MODELS),
                                     ("activations", activations, tuple(ACTIVATIONS))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{key}: unknown {bad}; choose from {allowed}")
        if not 1 <= hidden[0] <= hidden[1]:
            raise ValueError(f"hidden: need 1 <= low <= high, got {hidden}")
        self.datasets, self.models, self.activations = datasets, models, activations
        self.hidden, self.batch_sizes = tuple(map(int, hidden)), tuple(batch_sizes)
        self.train_fraction, self.test_fraction = tuple(train_fraction), float(test_fraction)

    def sample(self, generator: torch.Generator) -> TabularRegressionTask:
        dataset = sample_choice(generator, self.datasets)
        features, targets = load_regression(dataset)
        low, high = self.train_fraction
        draw = float(torch.rand((), generator=generator, dtype=torch.float64))
        fraction = low + (high - low) * draw
        split = split_and_standardize(features, targets, generator, self.test_fraction, fraction)
        mean, std = split.y_train.mean(), split.y_train.std(unbiased=False).clamp_min(1e-12)
        data = SplitData(split.x_train, (split.y_train - mean) / std, split.x_test,
                         (split.y_test - mean) / std, num_classes=0)
        return TabularRegressionTask(
            data, model=sample_choice(generator, self.models),
            hidden=sample_int_log_uniform(generator, *self.hidden),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
            name=f"regression_{dataset}", **self._task_kwargs())
