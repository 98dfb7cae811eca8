"""A one-layer causal transformer on synthetic sequence tasks (a held-out benchmark family: never
in a meta-training mixture).

Data: ``make_sequences`` of the sequence family (``copy``: predict the token ``d`` positions back,
which one attention head solves exactly; ``markov``: next token of a random Markov chain;
``parity``: the running parity).

Model (``D = heads · head_dim``, pre-LN as in Xiong et al. 2020, attention of Vaswani et al. 2017):

    x_t  = E onehot(token_t) + P_t                      (token and learned position embeddings)
    x   += W_o concat_h softmax_causal(Q_h K_hᵀ / √head_dim) V_h,   [Q K V] = W_qkv LN_1(x)
    x   += W_2 σ(W_1 LN_2(x))                             (MLP of width 2D)
    logits_t = W_out LN_f(x_t)

``softmax_causal`` masks keys after the query position. Loss: mean softmax cross-entropy over the
scored positions; normaliser ``log V`` (the uniform prediction). Linear layers start at the
fan-in-uniform initialisation, norms at scale 1 / shift 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metaopt.task import Batch, ModuleTask, Params, TaskFamily, sample_choice

from .mlp import ACTIVATIONS
from .residual import init_norms
from .sequence import (
    SEQUENCE_KINDS,
    TokenSequenceData,
    make_sequences,
    masked_token_loss,
    one_hot,
)

__all__ = ["AttentionFamily", "AttentionTask", "TinyTransformer", "self_attention"]


def self_attention(qkv: nn.Linear, proj: nn.Linear, x: Tensor, heads: int, head_dim: int, *,
                   causal: bool) -> Tensor:
    """Multi-head scaled dot-product self-attention (Vaswani et al. 2017) of ``x`` (N, L, D):
    ``W_o concat_h softmax(Q_h K_hᵀ / √head_dim [+ causal mask]) V_h`` with ``[Q K V] = qkv(x)``.
    Written out (not ``scaled_dot_product_attention``) so the unroll can differentiate it twice
    on every backend."""
    n, length, _ = x.shape
    q, k, v = qkv(x).view(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # (N, H, L, L)
    if causal:
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return proj((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, -1))


class TinyTransformer(nn.Module):
    """One pre-LN transformer block over one-hot tokens (module docstring)."""

    def __init__(self, vocab: int, length: int, heads: int, head_dim: int, activation: str):
        super().__init__()
        width = heads * head_dim
        self.vocab, self.heads, self.head_dim = vocab, heads, head_dim
        self.embed = nn.Linear(vocab, width, bias=False)
        self.position = nn.Embedding(length, width)
        self.norm1, self.norm2, self.norm_f = (nn.LayerNorm(width) for _ in range(3))
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp_in, self.mlp_out = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.act = ACTIVATIONS[activation]()
        self.readout = nn.Linear(width, vocab)

    def attention(self, x: Tensor) -> Tensor:
        return self_attention(self.qkv, self.proj, x, self.heads, self.head_dim, causal=True)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(one_hot(tokens, self.vocab, self.embed.weight.dtype))
        x = x + self.position(positions)
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp_out(self.act(self.mlp_in(self.norm2(x))))
        return self.readout(self.norm_f(x))


class AttentionTask(TokenSequenceData, ModuleTask):
    """A ``TinyTransformer`` on generated ``(tokens, targets, mask)`` sequences."""

    is_classification = False

    def __init__(self, train: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor],
                 *, kind: str, vocab: int, heads: int, head_dim: int, activation: str,
                 batch_size: int, init_seed: int, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.name = f"attention_{kind}"
        self.kind, self.vocab, self.activation = kind, int(vocab), activation
        self.heads, self.head_dim = int(heads), int(head_dim)
        self.batch_size, self.init_seed = int(batch_size), int(init_seed)
        self.train_data = tuple(self._to(t) for t in train)
        self.test_data = tuple(self._to(t) for t in test)
        self.length = int(train[0].shape[1])

    def build_module(self) -> nn.Module:
        return TinyTransformer(self.vocab, self.length, self.heads, self.head_dim, self.activation)

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        return init_norms(self._template().model, super().init_params(generator))

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        tokens, targets, mask = batch
        return masked_token_loss(module(tokens), targets, mask)

    @property
    def loss_scale(self) -> float:
        return math.log(self.vocab)

    def describe(self) -> str:
        return (f"{self.name}(V={self.vocab}, L={self.length}, heads={self.heads}x{self.head_dim}, "
                f"act={self.activation}, bs={self.batch_size})")


class AttentionFamily(TaskFamily):
    """Samples the kind, vocabulary (uniform in ``vocab``; parity has 2), length, heads, the
    activation, the Markov temperature, the copy delay (1..3) and the batch size."""

    name = "attention"

    def __init__(self, kinds: Sequence[str] = ("copy", "markov"), vocab: tuple[int, int] = (4, 8),
                 length: tuple[int, int] = (8, 12), heads: Sequence[int] = (1, 2),
                 head_dim: int = 8, activations: Sequence[str] = ("relu", "gelu"),
                 temperature: tuple[float, float] = (1.0, 3.0), batch_sizes: Sequence[int] = (32,),
                 num_train: int = 512, num_test: int = 128, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        activations = (activations,) if isinstance(activations, str) else tuple(activations)
        for key, values, allowed in (("kinds", kinds, SEQUENCE_KINDS),
                                     ("activations", activations, tuple(ACTIVATIONS))):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{key}: unknown {bad}; choose from {allowed}")
        heads = (heads,) if isinstance(heads, int) else tuple(map(int, heads))
        if not 2 <= vocab[0] <= vocab[1] or not 4 <= length[0] <= length[1] or min(heads) < 1 \
                or head_dim < 1:
            raise ValueError(f"need 2 <= vocab, 4 <= length (low <= high), heads >= 1, "
                             f"head_dim >= 1; got vocab={vocab}, length={length}, heads={heads}, "
                             f"head_dim={head_dim}")
        if num_train < 1 or num_test < 1:
            raise ValueError(f"num_train/num_test: must be >= 1, got {num_train}, {num_test}")
        self.kinds, self.activations = kinds, activations
        self.heads, self.head_dim = heads, head_dim
        self.vocab, self.length = tuple(map(int, vocab)), tuple(map(int, length))
        self.temperature, self.batch_sizes = tuple(map(float, temperature)), tuple(batch_sizes)
        self.num_train, self.num_test = int(num_train), int(num_test)

    def sample(self, generator: torch.Generator) -> AttentionTask:
        kind = sample_choice(generator, self.kinds)
        vocab = 2 if kind == "parity" else int(
            torch.randint(self.vocab[0], self.vocab[1] + 1, (), generator=generator))
        length = int(torch.randint(self.length[0], self.length[1] + 1, (), generator=generator))
        low, high = self.temperature
        temperature = low + (high - low) * float(torch.rand((), generator=generator,
                                                            dtype=torch.float64))
        logits = temperature * torch.randn(vocab, vocab, generator=generator, dtype=torch.float64)
        transitions = torch.softmax(logits, dim=1)
        delay = int(torch.randint(1, 4, (), generator=generator))
        data = [make_sequences(kind, generator, n, length, vocab, transitions=transitions,
                               delay=delay) for n in (self.num_train, self.num_test)]
        return AttentionTask(
            data[0], data[1], kind=kind, vocab=vocab, heads=sample_choice(generator, self.heads),
            head_dim=self.head_dim, activation=sample_choice(generator, self.activations),
            batch_size=sample_choice(generator, self.batch_sizes),
            init_seed=int(torch.randint(2**31 - 1, (), generator=generator)), **self._task_kwargs())
