"""A character-level MLP language model on Python source text (a held-out benchmark family).

Text: the source of a fixed list of Python standard-library modules (``inspect.getsource``, so it
is deterministic for a given Python version and needs no download), each module split into its
first 90 % (training text) and last 10 % (test text). Characters are mapped to 97 symbols:
printable ASCII (32..126), newline, and one "other" symbol.

Model (Bengio et al. 2003): the previous ``context`` characters are embedded (``embed`` dims
each), concatenated, passed through ``Linear -> tanh`` (``hidden`` units) and a linear read-out to
next-character logits. Loss: mean cross-entropy. With the defaults (context 10, embed 8, hidden 96)
the model has 17,961 parameters; batches have 64 windows. Normaliser: ``log 97`` (uniform guess).

``eval_batch`` is a fixed set of ``eval_windows`` windows per split (drawn once from the task's
seed): the full text has ~10⁵ windows, too many to evaluate at every measurement.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaopt.task import (
    Batch,
    ModuleTask,
    TaskFamily,
    generator_from_seed,
)

__all__ = ["SOURCE_MODULES", "VOCAB_SIZE", "CharMLPFamily", "CharMLPTask", "encode", "source_text"]

SOURCE_MODULES = ("textwrap", "string", "heapq", "bisect", "fnmatch", "colorsys", "json.decoder",
                  "json.encoder", "calendar", "queue", "sched", "graphlib")
NEWLINE, OTHER = 95, 96
VOCAB_SIZE = 97
TEST_FRACTION = 0.1


def encode(text: str) -> Tensor:
    """int64 ids: ``ord(c) − 32`` for printable ASCII, 95 for newline, 96 for anything else."""
    codes = torch.tensor([ord(c) for c in text], dtype=torch.long)
    ids = codes - 32
    ids = torch.where(codes == 10, torch.full_like(ids, NEWLINE), ids)
    return torch.where((codes == 10) | ((codes >= 32) & (codes < 127)), ids,
                       torch.full_like(ids, OTHER))


@functools.cache
def source_text(modules: tuple[str, ...] = SOURCE_MODULES) -> tuple[Tensor, Tensor]:
    """Encoded (train, test) text: per module, the first 90 % of its source to train, the rest to
    test (CPU int64; cached, do not mutate)."""
    train, test = [], []
    for name in modules:
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError) as error:
            raise ValueError(f"modules: cannot read the source of {name!r}: {error}") from error
        ids = encode(source)
        cut = int(len(ids) * (1 - TEST_FRACTION))
        train.append(ids[:cut])
        test.append(ids[cut:])
    return torch.cat(train), torch.cat(test)


class CharMLP(nn.Module):
    def __init__(self, context: int, embed: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, embed)
        self.hidden = nn.Linear(context * embed, hidden)
        self.readout = nn.Linear(hidden, VOCAB_SIZE)

    def forward(self, windows: Tensor) -> Tensor:
        x = self.embedding(windows).flatten(1)
        return self.readout(torch.tanh(self.hidden(x)))


class CharMLPTask(ModuleTask):
    """Next-character prediction from ``context`` previous characters (module docstring)."""

    name = "char_mlp"
    is_classification = True

    def __init__(self, train_text: Tensor, test_text: Tensor, *, context: int, embed: int,
                 hidden: int, batch_size: int, eval_windows: int, init_seed: int, device=None,
                 dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.context, self.embed, self.hidden = int(context), int(embed), int(hidden)
        self.batch_size, self.init_seed = int(batch_size), int(init_seed)
        self.train_text, self.test_text = self._to(train_text), self._to(test_text)
        offsets = torch.arange(self.context + 1, device=self.device)
        self._offsets = offsets
        evaluation = generator_from_seed(self.init_seed + 1)
        self._eval = {split: self._windows(text, self._starts(text, eval_windows, evaluation))
                      for split, text in (("train", self.train_text), ("test", self.test_text))}

    def _starts(self, text: Tensor, count: int, generator: torch.Generator) -> Tensor:
        return torch.randint(len(text) - self.context, (count,),
                             generator=generator).to(self.device)

    def _windows(self, text: Tensor, starts: Tensor) -> Batch:
        windows = text[starts[:, None] + self._offsets]
        return windows[:, :-1], windows[:, -1]

    def build_module(self) -> nn.Module:
        return CharMLP(self.context, self.embed, self.hidden)

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(module(x), y)

    def train_batch(self, generator: torch.Generator) -> Batch:
        return self._windows(self.train_text,
                             self._starts(self.train_text, self.batch_size, generator))

    def test_batch(self, generator: torch.Generator | None = None) -> Batch:
        if generator is None:
            return self._eval["test"]
        return self._windows(self.test_text,
                             self._starts(self.test_text, self.batch_size, generator))

    def eval_batch(self, split: str = "test") -> Batch:
        if split not in self._eval:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return self._eval[split]

    def accuracy(self, params, batch: Batch) -> Tensor:
        x, y = batch
        logits = torch.func.functional_call(self._template().model, dict(params), (x,))
        return (logits.argmax(dim=1) == y).to(self.dtype).mean()

    @property
    def loss_scale(self) -> float:
        return math.log(VOCAB_SIZE)

    def describe(self) -> str:
        return (f"char_mlp(context={self.context}, embed={self.embed}, hidden={self.hidden}, "
                f"bs={self.batch_size})")


class CharMLPFamily(TaskFamily):
    """Fixed architecture and text; each seed draws the initialisation and the evaluation windows
    (the benchmark's seeds). ``modules`` chooses the source text."""

    name = "char_mlp"

    def __init__(self, context: int = 10, embed: int = 8, hidden: int = 96, batch_size: int = 64,
                 eval_windows: int = 4096, modules=SOURCE_MODULES, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        if min(context, embed, hidden, batch_size, eval_windows) < 1:
            raise ValueError(f"context, embed, hidden, batch_size, eval_windows must be >= 1, got "
                             f"{context}, {embed}, {hidden}, {batch_size}, {eval_windows}")
        self.context, self.embed, self.hidden = int(context), int(embed), int(hidden)
        self.batch_size, self.eval_windows = int(batch_size), int(eval_windows)
        self.modules = (modules,) if isinstance(modules, str) else tuple(modules)
        if not self.modules:
            raise ValueError("modules: need at least one module name")

    def sample(self, generator: torch.Generator) -> CharMLPTask:
        train, test = source_text(self.modules)
        return CharMLPTask(train, test, context=self.context, embed=self.embed, hidden=self.hidden,
                           batch_size=self.batch_size, eval_windows=self.eval_windows,
                           init_seed=int(torch.randint(2**31 - 1, (), generator=generator)),
                           **self._task_kwargs())
