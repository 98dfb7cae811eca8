"""MLP classification on bundled digits (8x8 images flattened to 64 features) or generated clusters.

Model: ``depth`` hidden layers of ``width`` units with a sampled activation, then a linear
read-out; loss = mean softmax cross-entropy + ``(l2/2) sum ||W||^2`` (no penalty by default).
The family samples width log-uniformly in 8..128, depth in 1..3, the activation from
{tanh, relu, gelu}, the batch size and a training subset, as the issue asks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import Batch, TaskBatch, TaskFamily, sample_choice, sample_int_log_uniform

from .data import REAL_DATASETS, load_real, make_blobs, minibatch, split_and_standardize
from .supervised import ClassificationTask, stack_padded

__all__ = ["ACTIVATIONS", "MLPBatch", "MLPFamily", "MLPTask"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
# the same functions, for the batched forward; each maps 0 to 0 (what makes width padding exact)
_FUNCTIONAL = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}


class MLPTask(ClassificationTask):
    """``Linear(d, w) -> act -> [Linear(w, w) -> act] * (depth - 1) -> Linear(w, C)``."""

    def __init__(self, data, *, width: int, depth: int, activation: str, padding: bool = False,
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

    def batch_key(self):
        """MLPs of one architecture (depth, activation, width) and minibatch size on data of one
        shape stack; with ``padding``, whatever their widths and minibatch sizes (``MLPBatch``
        pads both exactly, trading memory and padded arithmetic for larger groups)."""
        sizes = None if self.padding else (self.width, min(self.batch_size, self.num_train),
                                           min(self.batch_size, int(self.x_test.shape[0])))
        return (MLPTask, self.depth, self.activation, self.num_features, self.num_classes,
                self.l2, self.l1, sizes, self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[MLPTask]) -> MLPBatch:
        return MLPBatch(tasks)

    def describe(self) -> str:
        return (
            f"{self.name}(width={self.width}, depth={self.depth}, act={self.activation}, "
            f"n_train={self.num_train}, bs={self.batch_size})"
        )


class MLPBatch(TaskBatch):
    """MLPs of one depth and activation; hidden widths and minibatch sizes padded to the largest
    (none to pad unless the tasks were built with ``padding``: see ``MLPTask.batch_key``).

    Task ``b``'s parameters sit in the top-left corner of the padded ones (``W`` hidden units, the
    group's largest width); the rest is zero. The padding is exact: a padded unit has zero
    incoming weights and bias, so its activation is ``act(0) = 0`` (tanh, ReLU and GELU all map 0
    to 0), and zero outgoing weights, so it adds exact zeros to every sum; its weights' gradients
    are exactly 0 (``∂/∂W_out = act(0)·δ = 0``, ``∂/∂W_in = (W_outᵀ δ ⊙ act'(0))·xᵀ = 0``), and the
    penalty sees only zeros there. A rule that maps ``θ = g = state = 0`` to 0 and reads parameters
    only through sums (GARO) therefore computes task ``b``'s own step, up to the summation order.
    Minibatches are padded to the largest with rows of weight 0: ``L_b = Σ_i w_bi·CE_bi + penalty``
    with ``w_bi = 1/n_b`` on task ``b``'s own ``n_b`` rows (its mean).
    """

    stacked_attributes = ("x_train", "y_train", "x_test", "y_test")

    def __init__(self, tasks: Sequence[MLPTask]):
        super().__init__(tasks)
        first = self.tasks[0]
        self.depth, self.act = first.depth, _FUNCTIONAL[first.activation]
        self.widths = [t.width for t in self.tasks]
        self.width = max(self.widths)
        self.l2, self.l1 = first.l2, first.l1
        self.x_train, self.y_train = stack_padded([(t.x_train, t.y_train) for t in self.tasks])
        self.x_test, self.y_test = stack_padded([(t.x_test, t.y_test) for t in self.tasks])

    def select(self, rows):
        out = super().select(rows)
        out.widths = [t.width for t in out.tasks]
        return out

    def _shape(self, name: str, width: int) -> tuple[int, ...]:
        """Parameter ``name``'s shape in an MLP of hidden width ``width`` (nn.Sequential names:
        Linear ``k`` is module ``2k``)."""
        layer, kind = name.split(".")
        index = int(layer) // 2
        rows = self.tasks[0].num_classes if index == self.depth else width
        if kind == "bias":
            return (rows,)
        return (rows, self.tasks[0].num_features if index == 0 else width)

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        shape = self._shape(name, self.width)
        return torch.stack([F.pad(v, [p for size, have in zip(reversed(shape), reversed(v.shape))
                                      for p in (0, size - have)]) for v in values])

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return [row[tuple(slice(0, size) for size in self._shape(name, width))]
                for row, width in zip(value.unbind(0), self.widths)]

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        x, y, weights = batch
        h = x
        for k in range(self.depth + 1):
            weight, bias = params[f"{2 * k}.weight"], params[f"{2 * k}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if k < self.depth:
                h = self.act(h)
        ce = F.cross_entropy(h.flatten(0, 1), y.flatten(), reduction="none").view_as(weights)
        loss = (ce * weights).sum(1)
        for k in range(self.depth + 1):
            weight = params[f"{2 * k}.weight"].flatten(1)
            if self.l2:
                loss = loss + 0.5 * self.l2 * weight.pow(2).sum(1)
            if self.l1:
                loss = loss + self.l1 * weight.abs().sum(1)
        return loss

    def _gather(self, x: Tensor, y: Tensor, indices: Sequence[Tensor]) -> Batch:
        """Rows ``indices[b]`` of task ``b``'s set, padded to the longest with weight-0 rows."""
        size = max(len(i) for i in indices)
        index = torch.zeros(len(indices), size, dtype=torch.long)
        weights = torch.zeros(len(indices), size, dtype=self.dtype)
        for b, rows in enumerate(indices):
            index[b, :len(rows)] = rows
            weights[b, :len(rows)] = 1.0 / len(rows)
        index, weights = index.to(self.device), weights.to(self.device)
        rows = torch.arange(len(indices), device=self.device).unsqueeze(1)
        return x[rows, index], y[rows, index], weights

    def train_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        # each task's own draw (SupervisedTask.train_batch); None: its first rows, no draw
        return self._gather(self.x_train, self.y_train, [
            torch.arange(min(t.batch_size, t.num_train)) if g is None
            else minibatch(g, t.num_train, t.batch_size) for t, g in zip(self.tasks, generators)])

    def test_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        # SupervisedTask.test_batch: the whole test set, or a drawn minibatch of it
        return self._gather(self.x_test, self.y_test, [
            torch.arange(int(t.x_test.shape[0])) if g is None
            else minibatch(g, int(t.x_test.shape[0]), t.batch_size)
            for t, g in zip(self.tasks, generators)])


class MLPFamily(TaskFamily):
    """Samples dataset (``datasets``: "digits", "breast_cancer", "wine", "synthetic"), width in
    ``width`` (log-uniform integers), depth in ``depth`` (uniform integers), activation from
    ``activations``, batch size from ``batch_sizes`` and a training subset fraction.

    ``padding``: vectorised meta-training groups the sampled MLPs by depth and activation only,
    padding widths and minibatch sizes (``MLPBatch``): larger groups, paid for in memory and
    padded arithmetic (``scripts/benchmark.py meta_throughput`` measures both). Off: groups of
    one architecture and minibatch size."""

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
        padding: bool = False,
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
