"""Small sequence models on synthetic sequence tasks generated from the family's generator.

Data (``num_train`` / ``num_test`` sequences of length ``L``, drawn once per task):

* ``markov``: tokens of a random first-order Markov chain over ``V`` symbols (transition rows
  ``softmax(temperature · N(0, I))``, uniform start); the target at ``t`` is the token at ``t+1``
  (next-token prediction; the best loss is the chain's entropy rate, not 0);
* ``parity``: random bits; the target at ``t`` is the parity of bits ``0..t`` (needs memory of the
  whole prefix);
* ``copy``: uniform tokens; the target at ``t`` is the input at ``t − d`` (delay ``d``), scored
  only for ``t ≥ d``.

Models (inputs one-hot, outputs logits at every position, causal):

* ``gru``: a GRU (Cho et al. 2014) written out with ``nn.Linear`` so every weight is a plain tensor
  the functional loss can differentiate twice,
  ``r, z = σ(W_r x + U_r h), σ(W_z x + U_z h);  n = tanh(W_n x + r ⊙ (U_n h));  h ← (1−z) n + z h``;
* ``conv``: two causal dilated 1-D convolutions (kernel 3, dilations 1 and 2: receptive field 7)
  with a sampled activation, then a 1x1 read-out.

Loss: mean softmax cross-entropy over scored positions. Normaliser: ``log V_out`` (the uniform
prediction), as for classification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import (
    Batch,
    ModuleTask,
    TaskFamily,
    sample_choice,
    sample_int_log_uniform,
)
from metaopt.task_batch import TaskBatch

from .data import minibatch
from .mlp import ACTIVATIONS
from .sequence_batch import PaddedSequenceBatch

__all__ = ["SEQUENCE_KINDS", "SEQUENCE_MODELS", "SequenceFamily", "SequenceTask",
           "make_sequences", "one_hot"]

SEQUENCE_KINDS = ("markov", "parity", "copy")
SEQUENCE_MODELS = ("gru", "conv")


def make_sequences(kind: str, generator: torch.Generator, num: int, length: int, vocab: int,
                   *, transitions: Tensor | None = None,
                   delay: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """``(inputs, targets, mask)`` of shape ``(num, length)``: int64 tokens and a bool mask of the
    scored positions (see the module docstring for each kind)."""
    if kind == "markov":
        tokens = torch.empty(num, length + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(vocab, (num,), generator=generator)
        for t in range(length):
            tokens[:, t + 1] = torch.multinomial(transitions[tokens[:, t]], 1,
                                                 generator=generator)[:, 0]
        return tokens[:, :-1], tokens[:, 1:], torch.ones(num, length, dtype=torch.bool)
    if kind == "parity":
        bits = torch.randint(2, (num, length), generator=generator)
        return bits, bits.cumsum(1) % 2, torch.ones(num, length, dtype=torch.bool)
    if kind == "copy":
        tokens = torch.randint(vocab, (num, length), generator=generator)
        targets = torch.zeros_like(tokens)
        targets[:, delay:] = tokens[:, :-delay]
        mask = torch.arange(length).expand(num, length) >= delay
        return tokens, targets, mask
    raise ValueError(f"unknown sequence kind {kind!r}; choose from {SEQUENCE_KINDS}")


def one_hot(tokens: Tensor, vocab: int, dtype: torch.dtype) -> Tensor:
    """``F.one_hot(tokens, vocab)`` as a comparison (``F.one_hot`` checks its values on the host,
    which ``torch.func.vmap`` — the vectorised meta-batches — cannot do)."""
    return (tokens.unsqueeze(-1) == torch.arange(vocab, device=tokens.device)).to(dtype)


class GRUModel(nn.Module):
    """One-hot tokens -> GRU (explicit gates) -> per-position logits."""

    def __init__(self, vocab_in: int, hidden: int, vocab_out: int):
        super().__init__()
        self.vocab_in, self.hidden = vocab_in, hidden
        self.input = nn.Linear(vocab_in, 3 * hidden)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.readout = nn.Linear(hidden, vocab_out)

    def forward(self, tokens: Tensor) -> Tensor:
        x = one_hot(tokens, self.vocab_in, self.input.weight.dtype)
        gates_x = self.input(x)  # (N, L, 3H): the input half of every gate, for all steps at once
        h = x.new_zeros(tokens.shape[0], self.hidden)
        weight, bias, two = self.recurrent.weight, self.recurrent.bias, 2 * self.hidden
        outputs = []
        for t in range(tokens.shape[1]):  # few ops per step: the loop dominates the task's cost
            gx, gh = gates_x[:, t], F.linear(h, weight, bias)
            r, z = torch.sigmoid(gx[:, :two] + gh[:, :two]).chunk(2, dim=1)
            n = torch.tanh(gx[:, two:] + r * gh[:, two:])
            h = n + z * (h - n)  # = (1 − z) n + z h
            outputs.append(h)
        return self.readout(torch.stack(outputs, dim=1))


class CausalConvModel(nn.Module):
    """One-hot tokens -> causal Conv1d(k=3, dilation 1) -> act -> causal Conv1d(k=3, dilation 2)
    -> act -> Conv1d(k=1) logits. Left padding keeps position ``t`` blind to inputs after ``t``."""

    def __init__(self, vocab_in: int, channels: int, vocab_out: int, activation: str):
        super().__init__()
        self.vocab_in = vocab_in
        self.conv1 = nn.Conv1d(vocab_in, channels, 3)
        self.conv2 = nn.Conv1d(channels, channels, 3, dilation=2)
        self.readout = nn.Conv1d(channels, vocab_out, 1)
        self.act = ACTIVATIONS[activation]()

    def forward(self, tokens: Tensor) -> Tensor:
        x = one_hot(tokens, self.vocab_in, self.conv1.weight.dtype).transpose(1, 2)
        x = self.act(self.conv1(F.pad(x, (2, 0))))
        x = self.act(self.conv2(F.pad(x, (4, 0))))
        return self.readout(x).transpose(1, 2)  # (N, L, V_out)


def masked_token_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy over the positions the mask scores (weights 1/0), averaged over them."""
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             reduction="none")
    weights = mask.reshape(-1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum()


class TokenSequenceData:
    """Minibatches of ``(tokens, targets, mask)`` tensors held in ``train_data`` / ``test_data``
    (a mixin of the sequence-model tasks: needs ``batch_size`` and ``device``)."""

    def _select(self, data, generator: torch.Generator) -> Batch:
        index = minibatch(generator, int(data[0].shape[0]), self.batch_size).to(self.device)
        return tuple(t[index] for t in data)

    def train_batch(self, generator: torch.Generator) -> Batch:
        return self._select(self.train_data, generator)

    def eval_batch(self, split: str = "test") -> Batch:
        if split == "train":
            return self.train_data
        if split == "test":
            return self.test_data
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def test_batch(self, generator: torch.Generator | None = None) -> Batch:
        return self.test_data if generator is None else self._select(self.test_data, generator)


class SequenceTask(TokenSequenceData, ModuleTask):
    """A sequence model (``model``: "gru" / "conv") on generated ``(inputs, targets, mask)``."""

    def __init__(self, train: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor], *,
                 kind: str, model: str, vocab_in: int, vocab_out: int, hidden: int, activation: str,
                 batch_size: int, init_seed: int, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        if model not in SEQUENCE_MODELS:
            raise ValueError(f"unknown sequence model {model!r}; choose from {SEQUENCE_MODELS}")
        self.name = f"sequence_{kind}_{model}"
        self.kind, self.model_name, self.activation = kind, model, activation
        self.vocab_in, self.vocab_out, self.hidden = int(vocab_in), int(vocab_out), int(hidden)
        self.batch_size, self.init_seed = int(batch_size), int(init_seed)
        self.train_data = tuple(self._to(t) for t in train)
        self.test_data = tuple(self._to(t) for t in test)
        self.length = int(train[0].shape[1])

    def build_module(self) -> nn.Module:
        if self.model_name == "gru":
            return GRUModel(self.vocab_in, self.hidden, self.vocab_out)
        return CausalConvModel(self.vocab_in, self.hidden, self.vocab_out, self.activation)

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        tokens, targets, mask = batch
        return masked_token_loss(module(tokens), targets, mask)

    @property
    def loss_scale(self) -> float:
        return math.log(self.vocab_out)

    # -- vectorised meta-batches: tasks of one architecture and data shape differ only in data -----
    def batch_key(self):
        """Every sequence task of one model type, whatever its kind, vocabulary, length, width,
        activation and batch size (``tasks.sequence_batch.PaddedSequenceBatch`` pads them)."""
        return ("sequence", self.model_name, self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[SequenceTask]) -> TaskBatch:
        return PaddedSequenceBatch(tasks)

    def describe(self) -> str:
        return (f"{self.name}(V={self.vocab_in}->{self.vocab_out}, L={self.length}, "
                f"hidden={self.hidden}, bs={self.batch_size})")


class SequenceFamily(TaskFamily):
    """Samples the kind, the model, vocabulary ``V`` (log-uniform in ``vocab``; parity has 2),
    length, hidden width / channels (log-uniform in ``hidden``), the conv activation, the Markov
    temperature, the copy delay (1..3) and the batch size."""

    name = "sequence"

    def __init__(self, kinds: Sequence[str] = SEQUENCE_KINDS,
                 models: Sequence[str] = SEQUENCE_MODELS,
                 vocab: tuple[int, int] = (3, 8), length: tuple[int, int] = (8, 16),
                 hidden: tuple[int, int] = (8, 32),
                 activations: Sequence[str] = ("tanh", "relu", "gelu"),
                 temperature: tuple[float, float] = (1.0, 3.0),
                 batch_sizes: Sequence[int] = (32, 64),
                 num_train: int = 512, num_test: int = 128, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        kinds, models = (kinds,) if isinstance(kinds, str) else tuple(kinds), \
            (models,) if isinstance(models, str) else tuple(models)
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        for key, values, allowed in (("kinds", kinds, SEQUENCE_KINDS),
                                     ("models", models, SEQUENCE_MODELS),
                                     ("activations", activations, tuple(ACTIVATIONS))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{key}: unknown {bad}; choose from {allowed}")
        if (not 2 <= vocab[0] <= vocab[1] or not 4 <= length[0] <= length[1]
                or not 1 <= hidden[0] <= hidden[1]):
            raise ValueError(f"need 2 <= vocab, 4 <= length, 1 <= hidden (low <= high); got "
                             f"vocab={vocab}, length={length}, hidden={hidden}")
        if num_train < 1 or num_test < 1:
            raise ValueError(f"num_train/num_test: must be >= 1, got {num_train}, {num_test}")
        self.kinds, self.models, self.activations = kinds, models, activations
        self.vocab, self.length = tuple(map(int, vocab)), tuple(map(int, length))
        self.hidden, self.temperature = tuple(map(int, hidden)), tuple(map(float, temperature))
        self.batch_sizes, self.num_train, self.num_test = (tuple(batch_sizes), int(num_train),
                                                           int(num_test))

    def sample(self, generator: torch.Generator) -> SequenceTask:
        kind, model = sample_choice(generator, self.kinds), sample_choice(generator, self.models)
        vocab = 2 if kind == "parity" else sample_int_log_uniform(generator, *self.vocab)
        length = int(torch.randint(self.length[0], self.length[1] + 1, (), generator=generator))
        low, high = self.temperature
        temperature = low + (high - low) * (
            float(torch.rand((), generator=generator, dtype=torch.float64)))
        transitions = torch.softmax(
            temperature * torch.randn(vocab, vocab, generator=generator, dtype=torch.float64),
            dim=1)
        delay = int(torch.randint(1, 4, (), generator=generator))
        data = [make_sequences(kind, generator, n, length, vocab, transitions=transitions,
                               delay=delay)
                for n in (self.num_train, self.num_test)]
        return SequenceTask(
            data[0], data[1], kind=kind, model=model, vocab_in=vocab, vocab_out=vocab,
            hidden=sample_int_log_uniform(generator, *self.hidden),
            activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)), **self._task_kwargs())
