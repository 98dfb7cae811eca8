"""Residual and attention networks on the bundled 8x8 digits: the mixture's residual networks
with normalisation layers and its transformers (the benchmark's residual MLPs and sequence
transformers are other families, held out of every mixture).

``resnet_digits`` — a pre-activation residual CNN (He et al. 2016, "Identity mappings in deep
residual networks"), ``c`` channels at 8x8 throughout, ``N`` = BatchNorm2d (Ioffe & Szegedy
2015, batch statistics only, as in ``residual_mlp``) or GroupNorm (Wu & He 2018, ``gcd(c, 4)``
groups):

    h_0 = conv_in(x)
    h_k = h_{k-1} + conv_k2 σ(N_k2(conv_k1 σ(N_k1(h_{k-1}))))        (k = 1..depth)
    logits = W_out flatten(avgpool_2x2 σ(N_out(h_depth)))            (4x4 average-pooled map)

``vit_digits`` — a vision transformer (Dosovitskiy et al. 2021): the image cut into ``p x p``
patches, each a token; ``depth`` pre-LN blocks of bidirectional multi-head self-attention and a
2D-wide MLP; mean-pooled tokens read out:

    x = W_e patches + P;   x += MHA(LN_1 x);   x += W_2 σ(W_1 LN_2 x)   (per block)
    logits = W_out LN_f(mean_t x_t)

Loss: mean softmax cross-entropy (+ optional L2 on the weights); normaliser ``log 10``. Pixels
are standardised per position with training statistics. Convolutions and linear layers start at
the fan-in-uniform initialisation, norms at scale 1 / shift 0.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import Params, TaskFamily, sample_choice, sample_int_log_uniform

from .attention import self_attention
from .cnn import IMAGE_SIDE
from .data import load_real, split_and_standardize
from .mlp import ACTIVATIONS
from .residual import init_norms
from .supervised import ClassificationTask, SupervisedBatch

__all__ = ["IMAGE_NORMS", "PatchTransformer", "PreActResNet", "ResNetDigitsFamily",
           "ViTDigitsFamily"]

IMAGE_NORMS = ("batchnorm", "groupnorm")
PATCH_SIDES = (2, 4)


def _image_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.GroupNorm(math.gcd(channels, 4), channels)


class PreActBlock(nn.Module):
    def __init__(self, channels: int, norm: str, activation: str):
        super().__init__()
        self.norm1, self.norm2 = _image_norm(norm, channels), _image_norm(norm, channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = ACTIVATIONS[activation]()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(self.act(self.norm2(self.conv1(self.act(self.norm1(h))))))


class PreActResNet(nn.Module):
    """The ``resnet_digits`` network (module docstring)."""

    def __init__(self, channels: int, depth: int, classes: int, norm: str, activation: str):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(PreActBlock(channels, norm, activation)
                                      for _ in range(depth)))
        self.norm = _image_norm(norm, channels)
        self.act = ACTIVATIONS[activation]()
        self.output = nn.Linear(channels * (IMAGE_SIDE // 2) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.norm(self.blocks(self.stem(x))))
        return self.output(F.avg_pool2d(h, 2).flatten(1))


class PatchTransformer(nn.Module):
    """The ``vit_digits`` network (module docstring)."""

    def __init__(self, patch: int, heads: int, head_dim: int, depth: int, classes: int,
                 activation: str):
        super().__init__()
        width, tokens = heads * head_dim, (IMAGE_SIDE // patch) ** 2
        self.patch, self.heads, self.head_dim = patch, heads, head_dim
        self.embed = nn.Linear(patch * patch, width)
        self.position = nn.Embedding(tokens, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(width), "qkv": nn.Linear(width, 3 * width),
            "proj": nn.Linear(width, width), "norm2": nn.LayerNorm(width),
            "mlp_in": nn.Linear(width, 2 * width), "mlp_out": nn.Linear(2 * width, width),
        }) for _ in range(depth))
        self.act = ACTIVATIONS[activation]()
        self.norm_f = nn.LayerNorm(width)
        self.readout = nn.Linear(width, classes)

    def patches(self, x: Tensor) -> Tensor:
        """(N, 1, 8, 8) images -> (N, tokens, patch²) row-major patches."""
        p = self.patch
        return x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, p * p)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(self.patches(x)) + self.position.weight
        for block in self.blocks:
            x = x + self_attention(block["qkv"], block["proj"], block["norm1"](x), self.heads,
                                   self.head_dim, causal=False)
            x = x + block["mlp_out"](self.act(block["mlp_in"](block["norm2"](x))))
        return self.readout(self.norm_f(x.mean(dim=1)))


class _DigitsImageTask(ClassificationTask):
    """A classifier of (N, 1, 8, 8) digit images with normalisation layers."""

    def __init__(self, data, **kwargs):
        super().__init__(data, **kwargs)
        self.x_train = self.x_train.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
        self.x_test = self.x_test.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        return init_norms(self._template().model, super().init_params(generator))

    @abstractmethod
    def architecture(self) -> tuple:
        """Everything the network's loss depends on besides parameters and data."""

    def batch_key(self):
        """Networks of one architecture, minibatch size and penalty share a ``SupervisedBatch``
        (``vmap`` of the first task's loss; BatchNorm's statistics stay per task under vmap)."""
        return (type(self).__name__, self.architecture(), self.batch_size, self.l2, self.device,
                self.dtype)

    @classmethod
    def stack(cls, tasks) -> SupervisedBatch:
        return SupervisedBatch(tasks)


class ResNetDigitsTask(_DigitsImageTask):
    def __init__(self, data, *, channels: int, depth: int, norm: str, activation: str, **kwargs):
        self.channels, self.depth, self.norm, self.activation = channels, depth, norm, activation
        super().__init__(data, **kwargs)

    def architecture(self) -> tuple:
        return self.channels, self.depth, self.norm, self.activation

    def build_module(self) -> nn.Module:
        return PreActResNet(self.channels, self.depth, self.num_classes, self.norm,
                            self.activation)

    def describe(self) -> str:
        return (f"{self.name}(channels={self.channels}, depth={self.depth}, norm={self.norm}, "
                f"act={self.activation}, n_train={self.num_train}, bs={self.batch_size})")


class ViTDigitsTask(_DigitsImageTask):
    def __init__(self, data, *, patch: int, heads: int, head_dim: int, depth: int,
                 activation: str, **kwargs):
        self.patch, self.heads, self.head_dim = patch, heads, head_dim
        self.depth, self.activation = depth, activation
        super().__init__(data, **kwargs)

    def architecture(self) -> tuple:
        return self.patch, self.heads, self.head_dim, self.depth, self.activation

    def build_module(self) -> nn.Module:
        return PatchTransformer(self.patch, self.heads, self.head_dim, self.depth,
                                self.num_classes, self.activation)

    def describe(self) -> str:
        return (f"{self.name}(patch={self.patch}, heads={self.heads}x{self.head_dim}, "
                f"depth={self.depth}, act={self.activation}, n_train={self.num_train}, "
                f"bs={self.batch_size})")


def _choices(key: str, values, allowed) -> tuple:
    values = (values,) if isinstance(values, (str, int)) else tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{key}: unknown {bad}; choose from {tuple(allowed)}")
    return values


def _span(key: str, span) -> tuple[int, int]:
    low, high = map(int, span)
    if not 1 <= low <= high:
        raise ValueError(f"{key}: need 1 <= low <= high, got {tuple(span)}")
    return low, high


class _DigitsImageFamily(TaskFamily):
    """Shared sampling: the activation, batch size and a training subset of the digits."""

    def __init__(self, activations, batch_sizes, train_fraction, l2, test_fraction, *, device,
                 dtype):
        super().__init__(device=device, dtype=dtype)
        self.activations = _choices("activations", activations, tuple(ACTIVATIONS))
        self.batch_sizes, self.train_fraction = tuple(batch_sizes), tuple(train_fraction)
        self.l2, self.test_fraction = float(l2), float(test_fraction)

    def _common(self, generator: torch.Generator) -> tuple:
        low, high = self.train_fraction
        fraction = low + (high - low) * float(torch.rand((), generator=generator,
                                                         dtype=torch.float64))
        data = split_and_standardize(*load_real("digits"), generator, self.test_fraction,
                                     fraction)
        return data, dict(
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)), l2=self.l2,
            name=self.name, **self._task_kwargs())


class ResNetDigitsFamily(_DigitsImageFamily):
    """Samples channels (log-uniform), depth (uniform), the norm, activation, batch size and a
    training subset."""

    name = "resnet_digits"

    def __init__(self, channels: Sequence[int] = (4, 8), depth: Sequence[int] = (1, 2),
                 norms: Sequence[str] = IMAGE_NORMS, activations: Sequence[str] = ("relu", "gelu"),
                 batch_sizes: Sequence[int] = (32, 64), train_fraction=(0.5, 1.0), l2: float = 0.0,
                 test_fraction: float = 0.25, *, device=None, dtype=None):
        super().__init__(activations, batch_sizes, train_fraction, l2, test_fraction,
                         device=device, dtype=dtype)
        self.channels, self.depth = _span("channels", channels), _span("depth", depth)
        self.norms = _choices("norms", norms, IMAGE_NORMS)

    def sample(self, generator: torch.Generator) -> ResNetDigitsTask:
        data, common = self._common(generator)
        return ResNetDigitsTask(
            data, channels=sample_int_log_uniform(generator, *self.channels),
            depth=int(torch.randint(self.depth[0], self.depth[1] + 1, (), generator=generator)),
            norm=sample_choice(generator, self.norms), **common)


class ViTDigitsFamily(_DigitsImageFamily):
    """Samples the patch side, heads, depth (uniform), activation, batch size and a training
    subset; ``head_dim`` is fixed."""

    name = "vit_digits"

    def __init__(self, patches: Sequence[int] = PATCH_SIDES, heads: Sequence[int] = (1, 2),
                 head_dim: int = 8, depth: Sequence[int] = (1, 1),
                 activations: Sequence[str] = ("relu", "gelu"),
                 batch_sizes: Sequence[int] = (32, 64), train_fraction=(0.5, 1.0), l2: float = 0.0,
                 test_fraction: float = 0.25, *, device=None, dtype=None):
        super().__init__(activations, batch_sizes, train_fraction, l2, test_fraction,
                         device=device, dtype=dtype)
        self.patches = _choices("patches", patches, PATCH_SIDES)
        self.heads = tuple(map(int, (heads,) if isinstance(heads, int) else heads))
        if not self.heads or min(self.heads) < 1 or int(head_dim) < 1:
            raise ValueError(f"heads and head_dim: need >= 1, got {heads}, {head_dim}")
        self.head_dim, self.depth = int(head_dim), _span("depth", depth)

    def sample(self, generator: torch.Generator) -> ViTDigitsTask:
        data, common = self._common(generator)
        return ViTDigitsTask(
            data, patch=sample_choice(generator, self.patches),
            heads=sample_choice(generator, self.heads), head_dim=self.head_dim,
            depth=int(torch.randint(self.depth[0], self.depth[1] + 1, (), generator=generator)),
            **common)
