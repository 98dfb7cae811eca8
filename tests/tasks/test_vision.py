"""The mixture's image networks with normalisation: a pre-activation residual CNN and a patch
transformer on the digits. Losses and gradients in float64 against hand-written forwards
(``torch.nn.functional`` convolutions and ``scaled_dot_product_attention`` as oracles);
normalisation and pooling invariants; training sanity."""

import math

import pytest
import torch
import torch.nn.functional as F

import tasks
from metaopt.task import generator_from_seed

F64 = torch.float64


def _perturbed(task, seed=1):
    noise = generator_from_seed(seed)
    return {k: (v + 0.1 * torch.randn(v.shape, generator=noise, dtype=F64)).requires_grad_()
            for k, v in task.init_params(generator_from_seed(2)).items()}


def _assert_matches(task, params, reference_logits):
    x, y = task.train_batch(generator_from_seed(3))
    ours = task.loss(params, (x, y))
    reference = F.cross_entropy(reference_logits(params, x), y)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    for g, e in zip(torch.autograd.grad(ours, list(params.values())),
                    torch.autograd.grad(reference, list(params.values())), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def _image_norm(task, h, p, prefix):
    if task.norm == "batchnorm":
        mean = h.mean((0, 2, 3), keepdim=True)
        var = ((h - mean) ** 2).mean((0, 2, 3), keepdim=True)
        z = (h - mean) / torch.sqrt(var + 1e-5)
    else:
        groups = math.gcd(task.channels, 4)
        g = h.reshape(h.shape[0], groups, -1)
        mean = g.mean(-1, keepdim=True)
        var = ((g - mean) ** 2).mean(-1, keepdim=True)
        z = ((g - mean) / torch.sqrt(var + 1e-5)).reshape(h.shape)
    return z * p[prefix + ".weight"][:, None, None] + p[prefix + ".bias"][:, None, None]


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm"])
def test_resnet_digits_matches_a_hand_written_preactivation_resnet(norm):
    task = tasks.get("resnet_digits", norms=[norm], depth=[2, 2], channels=[6, 6],
                     dtype=F64).sample_seed(0)
    assert (task.norm, task.depth, task.channels) == (norm, 2, 6)
    canonical = task.init_params()
    assert torch.equal(canonical["blocks.1.norm2.weight"], torch.ones(6, dtype=F64))
    act = torch.relu if task.activation == "relu" else F.gelu

    def logits(p, x):
        h = F.conv2d(x, p["stem.weight"], p["stem.bias"], padding=1)
        for k in range(task.depth):
            z = F.conv2d(act(_image_norm(task, h, p, f"blocks.{k}.norm1")),
                         p[f"blocks.{k}.conv1.weight"], p[f"blocks.{k}.conv1.bias"], padding=1)
            h = h + F.conv2d(act(_image_norm(task, z, p, f"blocks.{k}.norm2")),
                             p[f"blocks.{k}.conv2.weight"], p[f"blocks.{k}.conv2.bias"], padding=1)
        h = act(_image_norm(task, h, p, "norm"))
        pooled = h.reshape(h.shape[0], task.channels, 4, 2, 4, 2).mean((3, 5)).flatten(1)
        return pooled @ p["output.weight"].T + p["output.bias"]

    _assert_matches(task, _perturbed(task), logits)
    assert task.loss_scale == pytest.approx(math.log(10))


@pytest.mark.parametrize("patch", [2, 4])
def test_vit_digits_matches_a_hand_written_vision_transformer(patch):
    task = tasks.get("vit_digits", patches=[patch], heads=[2], depth=[2, 2], head_dim=4,
                     dtype=F64).sample_seed(1)
    assert (task.patch, task.heads, task.depth) == (patch, 2, 2)
    act = torch.relu if task.activation == "relu" else F.gelu

    def layernorm(h, p, prefix):
        return F.layer_norm(h, h.shape[-1:], p[prefix + ".weight"], p[prefix + ".bias"])

    def logits(p, x):
        n, side = x.shape[0], 8 // patch
        # patch (i, j) holds pixels [i*patch:(i+1)*patch, j*patch:(j+1)*patch], row-major
        tokens = x.reshape(n, side, patch, side, patch).permute(0, 1, 3, 2, 4)
        h = tokens.reshape(n, side * side, patch * patch) @ p["embed.weight"].T
        h = h + p["embed.bias"] + p["position.weight"]
        for k in range(task.depth):
            z = layernorm(h, p, f"blocks.{k}.norm1")
            q, key, v = (z @ p[f"blocks.{k}.qkv.weight"].T + p[f"blocks.{k}.qkv.bias"]).chunk(3, -1)
            heads = [t.reshape(n, -1, 2, 4).transpose(1, 2) for t in (q, key, v)]
            att = F.scaled_dot_product_attention(*heads)  # bidirectional: no mask
            att = att.transpose(1, 2).reshape(n, -1, 8)
            h = h + att @ p[f"blocks.{k}.proj.weight"].T + p[f"blocks.{k}.proj.bias"]
            z = layernorm(h, p, f"blocks.{k}.norm2")
            z = act(z @ p[f"blocks.{k}.mlp_in.weight"].T + p[f"blocks.{k}.mlp_in.bias"])
            h = h + z @ p[f"blocks.{k}.mlp_out.weight"].T + p[f"blocks.{k}.mlp_out.bias"]
        h = layernorm(h.mean(1), p, "norm_f")
        return h @ p["readout.weight"].T + p["readout.bias"]

    _assert_matches(task, _perturbed(task), logits)


def test_vit_is_invariant_to_permuting_patches_once_positions_are_permuted_alike():
    task = tasks.get("vit_digits", patches=[2], dtype=F64).sample_seed(2)
    model = task.module()
    x, _ = task.eval_batch("train")
    permutation = torch.randperm(16, generator=generator_from_seed(5))
    with torch.no_grad():
        out = model(x)
        model.position.weight.copy_(model.position.weight[permutation])
        shuffled = model.patches(x)[:, permutation].reshape(-1, 4, 4, 2, 2)
        images = shuffled.permute(0, 1, 3, 2, 4).reshape(-1, 1, 8, 8)
        torch.testing.assert_close(model(images), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["resnet_digits", "vit_digits"])
def test_adam_trains_the_image_networks_well_below_chance(name):
    torch.manual_seed(0)
    task = tasks.get(name, channels=[4, 4], batch_sizes=[64]) if name == "resnet_digits" \
        else tasks.get(name, patches=[4], batch_sizes=[64])
    task = task.sample_seed(3)
    params = {k: v.clone().requires_grad_() for k, v in task.init_params().items()}
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    generator = generator_from_seed(4)
    for _ in range(150):
        optimizer.zero_grad()
        task.loss(params, task.train_batch(generator)).backward()
        optimizer.step()
    with torch.no_grad():
        assert task.loss(params, task.eval_batch("train")).item() < 0.5 * math.log(10)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("resnet_digits", {"norms": ["layernorm"]}, "norms"),
    ("resnet_digits", {"channels": [0, 4]}, "channels"),
    ("vit_digits", {"patches": [3]}, "patches"),
    ("vit_digits", {"heads": [0]}, "heads"),
])
def test_bad_arguments_are_refused_naming_the_key(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.get(name, **kwargs)
