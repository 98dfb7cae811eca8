"""Sequence tasks of one model type (GRU or causal conv) in one zero-padded batch, whatever their
kind, vocabulary, length, hidden width, activation and batch size (vectorised meta-training).

Task ``b`` (vocabulary ``V_b``, width ``H_b``, length ``L_b``) sits in the top-left corner of
every padded tensor, except the GRU's gate-stacked tensors (``input``, ``recurrent``: rows
``[r; z; n]`` of ``H`` each), padded block by block so that each gate's real rows come first. The
padding is exact:

* vocabulary: a padded input token never occurs, so its one-hot column is 0 and its input weights
  get exactly zero gradient; a padded output class has its logit set to −1e30 before the softmax
  (``exp`` of it is exactly 0), so it takes no probability and its read-out rows get zero
  gradient;
* hidden units: a padded GRU unit has zero weights and biases, so ``r = z = σ(0)``,
  ``n = tanh(0) = 0`` and ``h = n + z(h − n)`` stays exactly 0; a padded conv channel is
  ``act(0) = 0``; both meet only zero weights downstream, so every padded weight's gradient is 0;
* positions and rows: the models are causal, so positions after ``L_b`` never reach an earlier
  output, and padded positions and minibatch rows have mask 0 in
  ``L_b = Σ_{n,t} m_nt CE_nt / Σ_{n,t} m_nt`` (``masked_token_loss``).

The activation of the conv model is per-task data (``tasks.dense.select_activation``). Both
models run on the task dimension directly, every product one batched matrix product over the tasks
(``baddbmm`` / ``einsum``; the convolutions over unfolded windows). Under ``vmap`` every
operation, and its first and second derivatives in meta-training, paid the batching rules'
dispatch again: loss, gradient and second-order backward of 1 / 4 / 16 tasks on one core
(float32) took 4.03 / 5.60 / 12.1 ms (GRU) and 2.37 / 4.44 / 13.2 ms (conv) that way, 2.99 /
5.00 / 11.8 and 1.27 / 2.65 / 12.3 ms this way.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaopt.task import Batch
from metaopt.task_batch import TaskBatch

from .dense import ACTIVATION_CODES, draw_rows, select_activation, weighted_rows

__all__ = ["PaddedSequenceBatch"]

_MASKED_LOGIT = -1e30
_GATED = ("input.weight", "input.bias", "recurrent.weight", "recurrent.bias")


def _pad_to(value: Tensor, shape: Sequence[int]) -> Tensor:
    return F.pad(value, [p for size, have in zip(reversed(shape), reversed(value.shape))
                         for p in (0, size - have)])


def _stack_data(datas, rows: int, length: int) -> Tensor:
    """Per task ``(tokens, targets, mask)`` -> ``(B, 3, rows, length)`` int64, zero-padded."""
    return torch.stack([torch.stack([_pad_to(t.long(), (rows, length)) for t in data])
                        for data in datas])


class PaddedSequenceBatch(TaskBatch):
    """``SequenceTask`` s of one model type, padded (module docstring)."""

    stacked_attributes = ("train_data", "test_data", "act", "out_mask")

    def __init__(self, tasks: Sequence):
        super().__init__(tasks)
        first = self.tasks[0]
        self.model = first.model_name
        self.vocab_in = max(t.vocab_in for t in self.tasks)
        self.vocab_out = max(t.vocab_out for t in self.tasks)
        self.hidden = max(t.hidden for t in self.tasks)
        length = max(t.length for t in self.tasks)
        for split in ("train", "test"):
            datas = [getattr(t, f"{split}_data") for t in self.tasks]
            rows = max(int(d[0].shape[0]) for d in datas)
            setattr(self, f"{split}_data", _stack_data(datas, rows, length))
        self.act = torch.tensor([ACTIVATION_CODES[t.activation] for t in self.tasks],
                                device=self.device)
        self.out_mask = (torch.arange(self.vocab_out, device=self.device)
                         < torch.tensor([t.vocab_out for t in self.tasks],
                                        device=self.device).unsqueeze(1))
        self._present()

    def _present(self) -> None:
        self.activations = sorted({int(a) for a in self.act.tolist()})

    def select(self, rows):
        out = super().select(rows)
        out._present()
        return out

    # -- parameters ------------------------------------------------------------------------------
    def _shape(self, name: str, vocab_in: int, hidden: int, vocab_out: int) -> tuple[int, ...]:
        if self.model == "gru":
            return {"input.weight": (3, hidden, vocab_in), "input.bias": (3, hidden),
                    "recurrent.weight": (3, hidden, hidden), "recurrent.bias": (3, hidden),
                    "readout.weight": (vocab_out, hidden), "readout.bias": (vocab_out,)}[name]
        return {"conv1.weight": (hidden, vocab_in, 3), "conv1.bias": (hidden,),
                "conv2.weight": (hidden, hidden, 3), "conv2.bias": (hidden,),
                "readout.weight": (vocab_out, hidden, 1), "readout.bias": (vocab_out,)}[name]

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        shape = self._shape(name, self.vocab_in, self.hidden, self.vocab_out)
        gated = self.model == "gru" and name in _GATED
        out = []
        for value in values:
            if gated:  # (3h, ...) -> (3, h, ...): each gate's block padded on its own
                value = value.reshape(3, -1, *value.shape[1:])
            padded = _pad_to(value, shape)
            out.append(padded.reshape(-1, *padded.shape[2:]) if gated else padded)
        return torch.stack(out)

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        gated = self.model == "gru" and name in _GATED
        out = []
        for row, task in zip(value.unbind(0), self.tasks):
            shape = self._shape(name, task.vocab_in, task.hidden, task.vocab_out)
            if gated:
                row = row.reshape(3, self.hidden, *row.shape[1:])
            own = row[tuple(slice(0, n) for n in shape)]
            out.append(own.reshape(-1, *own.shape[2:]) if gated else own)
        return out

    # -- the loss --------------------------------------------------------------------------------
    def _one_hot(self, tokens: Tensor, dtype) -> Tensor:
        return (tokens.unsqueeze(-1) == torch.arange(self.vocab_in,
                                                     device=tokens.device)).to(dtype)

    @staticmethod
    def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Task ``b``'s ``x_b W_bᵀ + β_b``: ``x`` ``(B, ..., in)``, ``weight`` ``(B, out, in)``."""
        out = torch.baddbmm(bias.unsqueeze(1), x.flatten(1, -2), weight.transpose(1, 2))
        return out.view(*x.shape[:-1], -1)

    def _gru(self, params: Mapping[str, Tensor], tokens: Tensor) -> Tensor:
        """``GRUModel.forward`` of every task: ``tokens`` ``(B, N, L)`` -> logits
        ``(B, N, L, V)``."""
        x = self._one_hot(tokens, params["input.weight"].dtype)
        gates_x = self._linear(x, params["input.weight"], params["input.bias"])
        h = x.new_zeros(*tokens.shape[:2], self.hidden)
        weight, bias = params["recurrent.weight"].transpose(1, 2), params["recurrent.bias"]
        two = 2 * self.hidden
        # the input halves of the gates, position by position, in two ops (per-position slices
        # would each add a full-size zero gradient to the backward passes)
        gx_rz, gx_n = gates_x[..., :two].unbind(2), gates_x[..., two:].unbind(2)
        outputs = []
        for t in range(tokens.shape[2]):  # GRUModel.forward, step for step
            gh = torch.baddbmm(bias.unsqueeze(1), h, weight)
            r, z = torch.sigmoid(gx_rz[t] + gh[..., :two]).chunk(2, dim=-1)
            n = torch.tanh(gx_n[t] + r * gh[..., two:])
            h = n + z * (h - n)
            outputs.append(h)
        return self._linear(torch.stack(outputs, dim=2), params["readout.weight"],
                            params["readout.bias"])

    def _causal_conv(self, x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
        """Task ``b``'s causal ``Conv1d(k=3, dilation)`` of ``x`` ``(B, N, L, C_in)`` (positions
        first): the windows ``x_{t−2d}, x_{t−d}, x_t`` (zeros before the start) times ``W_b``."""
        padded = F.pad(x, (0, 0, 2 * dilation, 0))
        windows = padded.unfold(2, 2 * dilation + 1, 1)[..., ::dilation]  # (B, N, L, C_in, 3)
        return torch.einsum("bnlck,bock->bnlo", windows, weight) + bias[:, None, None, :]

    def _conv(self, params: Mapping[str, Tensor], tokens: Tensor) -> Tensor:
        """``CausalConvModel.forward`` of every task: ``tokens`` ``(B, N, L)`` -> logits
        ``(B, N, L, V)``."""
        x = self._one_hot(tokens, params["conv1.weight"].dtype)
        for layer, dilation in (("conv1", 1), ("conv2", 2)):
            x = select_activation(self._causal_conv(x, params[f"{layer}.weight"],
                                                    params[f"{layer}.bias"], dilation),
                                  self.act, self.activations)
        return self._linear(x, params["readout.weight"].squeeze(-1), params["readout.bias"])

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        tokens, targets, mask = batch
        forward = self._gru if self.model == "gru" else self._conv
        logits = forward(params, tokens)                                 # (B, m, L, V)
        logits = logits.masked_fill(~self.out_mask[:, None, None, :], _MASKED_LOGIT)
        ce = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
        weights = mask.flatten(1).to(ce.dtype)
        return (ce.view_as(weights) * weights).sum(1) / weights.sum(1)

    # -- minibatches -----------------------------------------------------------------------------
    def _gather(self, split: str, indices) -> Batch:
        index, row_weights, rows = weighted_rows(indices, self.dtype, self.device)
        tokens, targets, mask = getattr(self, f"{split}_data").unbind(1)
        keep = (row_weights > 0).unsqueeze(-1)  # padded minibatch rows score nothing
        return tokens[rows, index], targets[rows, index], mask[rows, index].bool() & keep

    def _draw(self, split: str, generators) -> Batch:
        # TokenSequenceData's draws: minibatch(generator, n, batch_size) of the task's own set
        sizes = [int(getattr(t, f"{split}_data")[0].shape[0]) for t in self.tasks]
        return self._gather(split, draw_rows(self.tasks, generators, split, sizes))

    def train_batch(self, generators) -> Batch:
        return self._draw("train", generators)

    def test_batch(self, generators) -> Batch:
        return self._draw("test", generators)
