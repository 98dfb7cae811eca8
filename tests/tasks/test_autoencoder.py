"""The held-out MLP autoencoder on sklearn digits."""

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed

from .training import adam_trained

F64 = torch.float64


def test_loss_is_the_mse_of_a_hand_written_forward_and_targets_are_inputs():
    task = tasks.get("autoencoder_digits", activations=["tanh"], dtype=F64).sample_seed(0)
    x, target = task.train_batch(generator_from_seed(1))
    assert torch.equal(x, target) and x.shape == (64, 64)
    p = task.init_params(generator_from_seed(2))
    h = torch.tanh(x @ p["0.weight"].T + p["0.bias"])
    code = torch.tanh(h @ p["2.weight"].T + p["2.bias"])
    h = torch.tanh(code @ p["4.weight"].T + p["4.bias"])
    reconstruction = h @ p["6.weight"].T + p["6.bias"]
    assert code.shape[1] == task.bottleneck
    expected = (reconstruction - x).pow(2).mean()
    assert float(task.loss(p, (x, target))) == pytest.approx(float(expected), rel=1e-12)
    # normaliser: the error of reconstructing every pixel as its training mean (0)
    x_train, _ = task.eval_batch("train")
    assert task.loss_scale == pytest.approx(float(x_train.pow(2).mean()), rel=1e-12)
    zero = float(task.normalized_loss(
        torch.nn.functional.mse_loss(torch.zeros_like(x_train), x_train)))
    assert zero == pytest.approx(1.0, rel=1e-12)


def test_adam_reconstructs_better_than_the_mean():
    task = tasks.get("autoencoder_digits").sample_seed(0)
    _, final = adam_trained(task, lr=1e-2, steps=150)
    assert final < 0.7, final


def test_family_ranges_and_errors():
    family = tasks.get("autoencoder_digits", hidden=(32, 64), bottleneck=(4, 16))
    sampled = [family.sample_seed(s) for s in range(12)]
    assert all(32 <= t.hidden <= 64 and 4 <= t.bottleneck <= 16 for t in sampled)
    assert len({t.activation for t in sampled}) > 1
    with pytest.raises(ValueError, match="activation"):
        tasks.get("autoencoder_digits", activations=["swish"])
    with pytest.raises(ValueError, match="bottleneck"):
        tasks.get("autoencoder_digits", bottleneck=(0, 4))
