"""The held-out character-level MLP language model on Python source text."""

import inspect
import json.decoder
import math
import textwrap

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed
from tasks.char_mlp import NEWLINE, OTHER, VOCAB_SIZE, encode, source_text

from .training import adam_trained

F64 = torch.float64


def test_encoding_and_text_are_the_module_sources():
    assert encode("a\n é").tolist() == [ord("a") - 32, NEWLINE, 0, OTHER]
    train, test = source_text(("textwrap", "json.decoder"))
    sources = [inspect.getsource(textwrap), inspect.getsource(json.decoder)]
    assert len(train) + len(test) == sum(len(s) for s in sources)
    first = sources[0][: int(len(sources[0]) * 0.9)]
    assert torch.equal(train[: len(first)], encode(first))
    assert int(train.max()) < VOCAB_SIZE and int(train.min()) >= 0


def test_defaults_have_about_18k_parameters_and_batches_of_64():
    task = tasks.get("char_mlp").sample_seed(0)
    params = task.init_params()
    # 97·8 embedding + (10·8·96 + 96) hidden + (96·97 + 97) read-out
    assert sum(p.numel() for p in params.values()) == 97 * 8 + 80 * 96 + 96 + 96 * 97 + 97 == 17961
    x, y = task.train_batch(generator_from_seed(0))
    assert x.shape == (64, 10) and y.shape == (64,)


def test_targets_are_the_next_character_and_the_loss_a_hand_written_forward():
    task = tasks.get("char_mlp", dtype=F64).sample_seed(1)
    x, y = task.train_batch(generator_from_seed(3))
    text = task.train_text
    for window, target in zip(x[:8], y[:8]):
        hits = (text.unfold(0, 11, 1) == torch.cat([window, target[None]])).all(1)
        assert hits.any()
    params = task.init_params()
    one_hot = torch.nn.functional.one_hot(x, VOCAB_SIZE).to(F64)
    embedded = (one_hot @ params["embedding.weight"]).flatten(1)
    hidden = torch.tanh(embedded @ params["hidden.weight"].T + params["hidden.bias"])
    logits = hidden @ params["readout.weight"].T + params["readout.bias"]
    expected = -logits.log_softmax(1)[torch.arange(len(y)), y].mean()
    assert float(task.loss(params, (x, y))) == pytest.approx(float(expected), rel=1e-12)
    assert task.loss_scale == pytest.approx(math.log(VOCAB_SIZE))


def test_adam_learns_character_statistics():
    task = tasks.get("char_mlp", hidden=32, eval_windows=1024).sample_seed(0)
    before, after = adam_trained(task, lr=1e-2, steps=100)
    assert before == pytest.approx(1.0, abs=0.05) and after < 0.75, (before, after)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="modules"):
        tasks.get("char_mlp", modules=["no_such_module_xyz"]).sample_seed(0)
    with pytest.raises(ValueError, match="context"):
        tasks.get("char_mlp", context=0)
