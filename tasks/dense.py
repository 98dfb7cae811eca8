"""Fully connected networks of any widths, activations, data sets, penalties and loss kinds in one
zero-padded batch (vectorised meta-training): MLP classifiers, logistic and least-squares
regression, the digits autoencoder.

A task opts in with ``dense_layout()``: its layers' parameter prefixes (``"0."``, ``"2."``, ...
for an ``nn.Sequential``; ``""`` for a bare ``nn.Linear``), its layer sizes ``(d_0, ..., d_K)``,
its hidden activation and its loss::

    h_0 = x,   h_k = act(W_k h_{k−1} + b_k) (k < K),   h_K = W_K h_{K−1} + b_K
    "ce":   L = Σ_i w_i CE(h_K,i, y_i)                          (softmax over the task's classes)
    "mse":  L = Σ_i w_i c Σ_o (h_K,io − y_io)²                  (c = ½ for least squares, 1/d_K
                                                                 for the autoencoder's mean)
    + Σ_k (l2/2 ‖W_k‖² + l1 ‖W_k‖₁),   w_i = 1/n on the n rows of the minibatch.

``DenseBatch`` pads every size to the group's largest, task ``b``'s parameters in the top-left
corner of each padded tensor, zero elsewhere. The padding is exact: a padded input feature is 0 and
a padded hidden unit has zero incoming weights and bias, so its activation is ``act(0) = 0``
(tanh, ReLU and GELU all map 0 to 0) and, with zero outgoing weights, it adds exact zeros to every
sum; a padded output is masked out of the loss (its logit set to −1e30 before the softmax,
``exp`` of which is exactly 0, or its squared error multiplied by 0). Every padded weight's
gradient is therefore exactly 0, and so is the penalty's. The per-task constants (activation,
penalties, loss kind and constant, class count) are data, so all tasks with the same layer names
share one ``batch_key``; each activation and each loss kind is evaluated on its own rows
(``metaopt.task.RowPartition``), so no row pays for an activation it does not use.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from metaopt.task import Batch
from metaopt.task_batch import RowPartition, TaskBatch

from .data import minibatch

__all__ = ["ACTIVATION_CODES", "DenseBatch", "DenseLayout", "draw_rows", "select_activation",
           "weighted_rows"]

# each maps 0 to 0 (what makes hidden-width padding exact)
_FUNCTIONAL = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}
ACTIVATION_CODES = {name: code for code, name in enumerate(_FUNCTIONAL)}
_ACTIVATION_NAMES = tuple(_FUNCTIONAL)
_MASKED_LOGIT = -1e30  # exp(−1e30 − max) is exactly 0: a padded class gets no probability


@dataclass(frozen=True)
class DenseLayout:
    """What ``DenseBatch`` needs of a task (module docstring)."""

    prefixes: tuple[str, ...]
    sizes: tuple[int, ...]
    activation: str | None
    loss: str                     # "ce" or "mse"
    mse_coefficient: float = 0.0  # c of the "mse" loss


def dense_key(task, layout: DenseLayout):
    """The shared ``batch_key`` of dense tasks: layer names, dtype and device (module doc)."""
    return ("dense", layout.prefixes, task.device, task.dtype)


def _pad_to(value: Tensor, shape: Sequence[int]) -> Tensor:
    return F.pad(value, [p for size, have in zip(reversed(shape), reversed(value.shape))
                         for p in (0, size - have)])


def _targets(task, labels: Tensor, layout: DenseLayout) -> tuple[Tensor, Tensor]:
    """(class labels, real targets (n, d_K)); the unused one is zeros."""
    n = int(labels.shape[0])
    if layout.loss == "ce":
        return labels.long(), torch.zeros(n, layout.sizes[-1], dtype=task.dtype,
                                          device=task.device)
    real = labels.reshape(n, -1).to(task.dtype)
    return torch.zeros(n, dtype=torch.long, device=task.device), real


def weighted_rows(indices: Sequence[Tensor], dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``indices[b]`` of task ``b``'s stacked set, padded to the longest: the ``(B, m)``
    gather index (padding: row 0), the row weights (``1/n_b`` on task ``b``'s own ``n_b`` rows,
    0 on the padding, so a weighted sum is task ``b``'s mean) and the ``(B, 1)`` task index."""
    index = pad_sequence(list(indices), batch_first=True)
    counts = torch.tensor([len(i) for i in indices], dtype=torch.float64).unsqueeze(1)
    real = torch.arange(index.shape[1]) < counts
    weights = torch.where(real, 1.0 / counts, 0.0).to(dtype)  # 1/n_b as the float64 it was
    rows = torch.arange(len(indices), device=device).unsqueeze(1)
    return index.to(device), weights.to(device), rows


def draw_rows(tasks, generators, split: str, sizes: Sequence[int] | None = None) -> list[Tensor]:
    """Per task the minibatch rows of ``SupervisedTask.train_batch`` / ``test_batch`` (of sets of
    ``sizes[b]`` rows; default the supervised task's own), with the same draws from
    ``generators[b]``; None: its first rows (train) or its whole set (test)."""
    out = []
    for b, (task, g) in enumerate(zip(tasks, generators)):
        n = sizes[b] if sizes is not None else (
            task.num_train if split == "train" else int(task.x_test.shape[0]))
        if g is None:
            out.append(torch.arange(min(task.batch_size, n) if split == "train" else n))
        else:
            out.append(minibatch(g, n, task.batch_size))
    return out


def select_activation(h: Tensor, codes: Tensor, present: Sequence[int]) -> Tensor:
    """``act_b(h_b)`` with task ``b``'s activation given by ``codes[b]`` (``ACTIVATION_CODES``),
    selected by ``torch.where`` among the ``present`` codes (the others get zero cotangent): for
    models evaluated per task under ``vmap``, where rows cannot be split by activation."""
    if len(present) == 1:
        return _FUNCTIONAL[_ACTIVATION_NAMES[present[0]]](h)
    out = None
    for code in present:
        value = _FUNCTIONAL[_ACTIVATION_NAMES[code]](h)
        out = value if out is None else torch.where(
            (codes == code).view(-1, *[1] * (h.dim() - 1)), value, out)
    return out


class DenseBatch(TaskBatch):
    """Dense tasks of one ``batch_key`` (layer names), padded to the largest sizes (module doc)."""

    stacked_attributes = ("x_train", "c_train", "r_train", "x_test", "c_test", "r_test",
                          "act", "l2", "l1", "out_mask", "mse_coefficient")

    def __init__(self, tasks: Sequence):
        super().__init__(tasks)
        self.layouts = [t.dense_layout() for t in self.tasks]
        self.prefixes = self.layouts[0].prefixes
        self.sizes = tuple(max(s) for s in zip(*(lay.sizes for lay in self.layouts)))
        features, outputs = self.sizes[0], self.sizes[-1]
        for split in ("train", "test"):
            xs, cs, rs = [], [], []
            for task, lay in zip(self.tasks, self.layouts):
                x, y = task.eval_batch(split)
                c, r = _targets(task, y, lay)
                xs.append(x.reshape(x.shape[0], -1))
                cs.append(c)
                rs.append(r)
            rows = max(int(x.shape[0]) for x in xs)
            setattr(self, f"x_{split}", torch.stack([_pad_to(x, (rows, features)) for x in xs]))
            setattr(self, f"c_{split}", torch.stack([_pad_to(c, (rows,)) for c in cs]))
            setattr(self, f"r_{split}", torch.stack([_pad_to(r, (rows, outputs)) for r in rs]))
        device, dtype = self.device, self.dtype
        self.act = torch.tensor([ACTIVATION_CODES.get(lay.activation, 0)
                                 for lay in self.layouts], device=device)
        self.l2 = torch.tensor([t.l2 for t in self.tasks], dtype=dtype, device=device)
        self.l1 = torch.tensor([t.l1 for t in self.tasks], dtype=dtype, device=device)
        self.out_mask = (torch.arange(outputs, device=device)
                         < torch.tensor([lay.sizes[-1] for lay in self.layouts],
                                        device=device).unsqueeze(1))
        self.mse_coefficient = torch.tensor([lay.mse_coefficient for lay in self.layouts],
                                            dtype=dtype, device=device)
        self._rows()

    def _rows(self) -> None:
        self.layouts = [t.dense_layout() for t in self.tasks]
        self.kinds = RowPartition([lay.loss for lay in self.layouts], self.device, ("ce", "mse"))
        # each kind's loss reads only the outputs its own rows have (the others are padding:
        # masked logits, zero errors), e.g. ten digit classes beside the autoencoder's 64 pixels
        self.kind_widths = [max(self.layouts[r].sizes[-1] for r in rows.tolist())
                            for _, rows in self.kinds.parts]
        self.activations = RowPartition(self.act.tolist(), self.device)
        self.penalties = (bool(self.l2.any()), bool(self.l1.any()))

    def select(self, rows):
        out = super().select(rows)
        out._rows()
        return out

    # -- parameters ------------------------------------------------------------------------------
    def _shape(self, name: str, sizes: Sequence[int]) -> tuple[int, ...]:
        prefix, kind = name[:name.rfind(".") + 1] if "." in name else "", name.rsplit(".", 1)[-1]
        k = self.prefixes.index(prefix)
        return (sizes[k + 1],) if kind == "bias" else (sizes[k + 1], sizes[k])

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        shape = self._shape(name, self.sizes)
        return torch.stack([_pad_to(v, shape) for v in values])

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return [row[tuple(slice(0, n) for n in self._shape(name, lay.sizes))]
                for row, lay in zip(value.unbind(0), self.layouts)]

    # -- the loss --------------------------------------------------------------------------------
    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        x, weights, classes, real = batch
        h = x
        last = len(self.prefixes) - 1
        for k, prefix in enumerate(self.prefixes):
            weight, bias = params[prefix + "weight"], params[prefix + "bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if k < last:
                acts = self.activations
                h = acts.merge([_FUNCTIONAL[_ACTIVATION_NAMES[code]](part)
                                for (code, _), part in zip(acts.parts, acts.split(h))])
        parts, kinds = [], self.kinds
        for (kind, rows), width in zip(kinds.parts, self.kind_widths):
            out, mask = (kinds.take(t, rows)[..., :width] for t in (h, self.out_mask))
            w = kinds.take(weights, rows)
            if kind == "ce":
                logits = out.masked_fill(~mask.unsqueeze(1), _MASKED_LOGIT)
                per_row = F.cross_entropy(logits.flatten(0, 1), kinds.take(classes, rows).flatten(),
                                          reduction="none").view_as(w)
            else:
                c = kinds.take(self.mse_coefficient, rows)
                target = kinds.take(real, rows)[..., :width]
                per_row = ((out - target) * mask.unsqueeze(1)).square().sum(-1) * c.unsqueeze(1)
            parts.append((per_row * w).sum(1))
        loss = kinds.merge(parts)
        for prefix in self.prefixes:
            weight = params[prefix + "weight"].flatten(1)
            if self.penalties[0]:
                loss = loss + 0.5 * self.l2 * weight.square().sum(1)
            if self.penalties[1]:
                loss = loss + self.l1 * weight.abs().sum(1)
        return loss

    # -- minibatches -----------------------------------------------------------------------------
    def _gather(self, split: str, indices: Sequence[Tensor]) -> Batch:
        index, weights, rows = weighted_rows(indices, self.dtype, self.device)
        x, c, r = (getattr(self, f"{name}_{split}") for name in "xcr")
        return x[rows, index], weights, c[rows, index], r[rows, index]

    def train_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        return self._gather("train", draw_rows(self.tasks, generators, "train"))

    def test_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        return self._gather("test", draw_rows(self.tasks, generators, "test"))
