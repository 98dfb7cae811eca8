"""A pre-norm residual MLP with LayerNorm or BatchNorm on a bundled sklearn dataset (a held-out
benchmark family: never in a meta-training mixture).

Model (``width`` units, ``depth`` blocks, ``N`` = LayerNorm or BatchNorm, ``σ`` the activation):

    h_0 = W_in x + b_in
    h_k = h_{k-1} + W_k2 σ(W_k1 N_k(h_{k-1}) + b_k1) + b_k2           (k = 1..depth)
    logits = W_out N_out(h_depth) + b_out

the pre-activation residual layout of He et al. 2016 ("Identity mappings in deep residual
networks") and of pre-LN transformers (Xiong et al. 2020). LayerNorm (Ba et al. 2016) normalises
each example over its features; BatchNorm (Ioffe & Szegedy 2015) each feature over the batch, here
always with the batch's own statistics (``track_running_stats=False``): the loss is then a pure
function of the parameters and the batch (no hidden running averages the optimizer cannot see),
and the full-batch evaluation normalises with full-batch statistics. Norm scales start at 1 and
shifts at 0 (``init_norms``), linear layers at PyTorch's fan-in-uniform initialisation.
Loss: mean softmax cross-entropy (+ optional L2 on the linear weights); normaliser ``log C``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaopt.task import Params, TaskFamily, sample_choice, sample_int_log_uniform

from .data import REAL_DATASETS, load_real, split_and_standardize
from .mlp import ACTIVATIONS
from .supervised import ClassificationTask

__all__ = ["NORMS", "ResidualMLP", "ResidualMLPFamily", "ResidualMLPTask", "init_norms"]

NORMS = ("layernorm", "batchnorm")
_NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def init_norms(model: nn.Module, params: Params) -> Params:
    """``params`` with every LayerNorm / BatchNorm / GroupNorm scale set to 1 and shift to 0 (their
    standard initialisation; the fan-in rule would draw the scales from U(−1, 1))."""
    out = dict(params)
    for name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{name}." if name else ""
            out[prefix + "weight"] = torch.ones_like(out[prefix + "weight"])
            out[prefix + "bias"] = torch.zeros_like(out[prefix + "bias"])
    return out


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width)
    return nn.BatchNorm1d(width, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, norm: str, activation: str):
        super().__init__()
        self.norm = _norm(norm, width)
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        self.act = ACTIVATIONS[activation]()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.outer(self.act(self.inner(self.norm(h))))


class ResidualMLP(nn.Module):
    def __init__(self, features: int, width: int, depth: int, classes: int, norm: str,
                 activation: str):
        super().__init__()
        self.input = nn.Linear(features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, norm, activation) for _ in range(depth)))
        self.norm = _norm(norm, width)
        self.output = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.norm(self.blocks(self.input(x))))


class ResidualMLPTask(ClassificationTask):
    """A ``ResidualMLP`` classifier (module docstring)."""

    def __init__(self, data, *, width: int, depth: int, norm: str, activation: str, **kwargs):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.width, self.depth = int(width), int(depth)
        self.norm, self.activation = norm, activation
        super().__init__(data, **kwargs)

    def build_module(self) -> nn.Module:
        return ResidualMLP(self.num_features, self.width, self.depth, self.num_classes, self.norm,
                           self.activation)

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        return init_norms(self._template().model, super().init_params(generator))

    def describe(self) -> str:
        return (f"{self.name}(width={self.width}, depth={self.depth}, norm={self.norm}, "
                f"act={self.activation}, n_train={self.num_train}, bs={self.batch_size})")


class ResidualMLPFamily(TaskFamily):
    """Samples the dataset, width (log-uniform in ``width``), depth (uniform in ``depth``), norm,
    activation, batch size and a training subset."""

    name = "residual_mlp"

    def __init__(self, datasets: Sequence[str] = ("digits",), width: tuple[int, int] = (32, 64),
                 depth: tuple[int, int] = (1, 3), norms: Sequence[str] = NORMS,
                 activations: Sequence[str] = ("relu", "gelu"), batch_sizes: Sequence[int] = (64,),
                 train_fraction: tuple[float, float] = (0.5, 1.0), l2: float = 0.0,
                 test_fraction: float = 0.25, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        datasets = (datasets,) if isinstance(datasets, str) else tuple(datasets)
        norms = (norms,) if isinstance(norms, str) else tuple(norms)
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        for key, values, allowed in (("datasets", datasets, REAL_DATASETS),
                                     ("norms", norms, NORMS),
                                     ("activations", activations, tuple(ACTIVATIONS))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{key}: unknown {bad}; choose from {allowed}")
        if not 1 <= width[0] <= width[1] or not 1 <= depth[0] <= depth[1]:
            raise ValueError(f"need 1 <= low <= high for width and depth, got {width}, {depth}")
        self.datasets, self.norms, self.activations = datasets, norms, activations
        self.width, self.depth = tuple(map(int, width)), tuple(map(int, depth))
        self.batch_sizes, self.train_fraction = tuple(batch_sizes), tuple(train_fraction)
        self.l2, self.test_fraction = float(l2), float(test_fraction)

    def sample(self, generator: torch.Generator) -> ResidualMLPTask:
        dataset = sample_choice(generator, self.datasets)
        features, labels = load_real(dataset)
        low, high = self.train_fraction
        draw = float(torch.rand((), generator=generator, dtype=torch.float64))
        fraction = low + (high - low) * draw
        data = split_and_standardize(features, labels, generator, self.test_fraction, fraction)
        depth = int(torch.randint(self.depth[0], self.depth[1] + 1, (), generator=generator))
        return ResidualMLPTask(
            data, width=sample_int_log_uniform(generator, *self.width), depth=depth,
            norm=sample_choice(generator, self.norms),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)), l2=self.l2,
            name=f"residual_mlp_{dataset}", **self._task_kwargs())
