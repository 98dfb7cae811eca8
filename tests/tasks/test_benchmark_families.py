"""The held-out benchmark families: residual MLPs with normalisation, a one-layer causal
transformer, regression on sklearn's diabetes. Losses and gradients in float64 against
hand-written forwards; invariants (causality, least-squares optimality); training sanity."""

import math

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed

from .training import adam_trained

F64 = torch.float64


def _layernorm(h, g, b):
    mean = h.mean(-1, keepdim=True)
    var = ((h - mean) ** 2).mean(-1, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * g + b


def _batchnorm(h, g, b):
    mean = h.mean(0, keepdim=True)
    var = ((h - mean) ** 2).mean(0, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * g + b


def _residual_reference(task, p, x):
    norm = _layernorm if task.norm == "layernorm" else _batchnorm
    act = torch.relu if task.activation == "relu" else torch.nn.functional.gelu
    h = x @ p["input.weight"].T + p["input.bias"]
    for k in range(task.depth):
        z = norm(h, p[f"blocks.{k}.norm.weight"], p[f"blocks.{k}.norm.bias"])
        z = act(z @ p[f"blocks.{k}.inner.weight"].T + p[f"blocks.{k}.inner.bias"])
        h = h + z @ p[f"blocks.{k}.outer.weight"].T + p[f"blocks.{k}.outer.bias"]
    h = norm(h, p["norm.weight"], p["norm.bias"])
    return h @ p["output.weight"].T + p["output.bias"]


def _cross_entropy(logits, y):
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_residual_mlp_loss_and_gradient_match_a_hand_written_forward(norm):
    task = tasks.get("residual_mlp", norms=[norm], depth=[2, 2], dtype=F64).sample_seed(0)
    assert task.norm == norm and task.depth == 2
    canonical = task.init_params()
    assert torch.equal(canonical["blocks.0.norm.weight"], torch.ones(task.width, dtype=F64))
    assert torch.equal(canonical["norm.bias"], torch.zeros(task.width, dtype=F64))
    params = {k: (v + 0.1 * torch.randn(v.shape, generator=generator_from_seed(1), dtype=F64))
              .requires_grad_() for k, v in task.init_params(generator_from_seed(2)).items()}
    x, y = task.train_batch(generator_from_seed(3))
    ours = task.loss(params, (x, y))
    reference = _cross_entropy(_residual_reference(task, params, x), y)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    grads = torch.autograd.grad(ours, list(params.values()))
    expected = torch.autograd.grad(reference, list(params.values()))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert task.loss_scale == pytest.approx(math.log(10))


def test_batchnorm_uses_batch_statistics_so_a_per_feature_shift_vanishes():
    task = tasks.get("residual_mlp", norms=["batchnorm"], depth=[1, 1], dtype=F64).sample_seed(4)
    model = task.module()
    x, _ = task.eval_batch("train")
    h = model.input(x)
    shifted = model.blocks[0].norm(h + 3.0)
    torch.testing.assert_close(model.blocks[0].norm(h), shifted, rtol=1e-9, atol=1e-9)


def _attention_reference(task, p, tokens):
    n, length = tokens.shape
    heads, hd = task.heads, task.head_dim
    act = torch.relu if task.activation == "relu" else torch.nn.functional.gelu
    x = torch.nn.functional.one_hot(tokens, task.vocab).to(F64) @ p["embed.weight"].T
    x = x + p["position.weight"][:length]
    z = _layernorm(x, p["norm1.weight"], p["norm1.bias"])
    qkv = z @ p["qkv.weight"].T + p["qkv.bias"]
    width = heads * hd
    out = torch.zeros(n, length, width, dtype=F64)
    for h in range(heads):
        q = qkv[..., h * hd:(h + 1) * hd]
        k = qkv[..., width + h * hd:width + (h + 1) * hd]
        v = qkv[..., 2 * width + h * hd:2 * width + (h + 1) * hd]
        for t in range(length):  # query t attends to keys 0..t only
            scores = (q[:, t:t + 1] * k[:, :t + 1]).sum(-1) / math.sqrt(hd)
            attended = (scores.softmax(-1).unsqueeze(-1) * v[:, :t + 1]).sum(1)
            out[:, t, h * hd:(h + 1) * hd] = attended
    x = x + out @ p["proj.weight"].T + p["proj.bias"]
    z = _layernorm(x, p["norm2.weight"], p["norm2.bias"])
    x = x + act(z @ p["mlp_in.weight"].T + p["mlp_in.bias"]) @ p["mlp_out.weight"].T \
        + p["mlp_out.bias"]
    return _layernorm(x, p["norm_f.weight"], p["norm_f.bias"]) @ p["readout.weight"].T \
        + p["readout.bias"]


@pytest.mark.parametrize("kind", ["copy", "markov"])
def test_attention_loss_and_gradient_match_a_hand_written_transformer(kind):
    family = tasks.get("attention", kinds=[kind], heads=[2], num_train=64, num_test=16, dtype=F64)
    task = family.sample_seed(1)
    params = {k: v.clone().requires_grad_() for k, v in task.init_params().items()}
    tokens, targets, mask = task.train_batch(generator_from_seed(0))
    ours = task.loss(params, (tokens, targets, mask))
    logits = _attention_reference(task, params, tokens)
    per_token = torch.logsumexp(logits, -1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    reference = per_token[mask].mean()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    for g, e in zip(torch.autograd.grad(ours, list(params.values())),
                    torch.autograd.grad(reference, list(params.values())), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert task.loss_scale == pytest.approx(math.log(task.vocab))


def test_attention_is_causal():
    task = tasks.get("attention", kinds=["copy"], dtype=F64).sample_seed(2)
    model = task.module()
    tokens = task.eval_batch("test")[0][:4]
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % task.vocab
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_attention_learns_to_copy():
    task = tasks.get("attention", kinds=["copy"], heads=[1]).sample_seed(0)
    _, final = adam_trained(task, lr=1e-2, steps=200)
    assert final < 0.3, final


def test_diabetes_regression_loss_and_closed_form_minimum():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LinearRegression

    task = tasks.get("tabular_regression", models=["linear"], dtype=F64).sample_seed(0)
    x, y = task.eval_batch("train")
    assert x.shape[1] == 10 and float(y.mean()) == pytest.approx(0.0, abs=1e-12)
    assert task.loss_scale == pytest.approx(0.5, rel=1e-12)  # standardised target
    p = task.init_params(generator_from_seed(1))
    expected = 0.5 * ((x @ p["weight"].T + p["bias"]).squeeze(1) - y).pow(2).mean()
    assert float(task.loss(p, (x, y))) == pytest.approx(float(expected), rel=1e-12)
    fit = LinearRegression().fit(x.numpy(), y.numpy())  # the independent oracle
    best = {"weight": torch.tensor(fit.coef_, dtype=F64).reshape(1, -1),
            "bias": torch.tensor([fit.intercept_], dtype=F64)}
    assert float(task.loss(best, (x, y))) == pytest.approx(task.minimum_value, rel=1e-10)
    torch.testing.assert_close(task.minimizers[0]["weight"], best["weight"], rtol=1e-8, atol=1e-8)


def test_diabetes_mlp_trains_below_the_mean_predictor():
    task = tasks.get("tabular_regression", models=["mlp"]).sample_seed(0)
    module = task.module()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    generator = generator_from_seed(0)
    for _ in range(150):
        optimizer.zero_grad()
        task.module_loss(module, task.train_batch(generator)).backward()
        optimizer.step()
    with torch.no_grad():
        final = float(task.module_loss(module, task.eval_batch("train"))) / task.loss_scale
    assert final < 0.7, final


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("residual_mlp", {"norms": ["groupnorm"]}, "norms"),
    ("residual_mlp", {"datasets": ["mnist"]}, "datasets"),
    ("residual_mlp", {"depth": (0, 2)}, "depth"),
    ("attention", {"kinds": ["sort"]}, "kinds"),
    ("attention", {"heads": [0]}, "heads"),
    ("tabular_regression", {"datasets": ["boston"]}, "datasets"),
    ("tabular_regression", {"models": ["tree"]}, "models"),
])
def test_bad_arguments_are_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.get(name, **kwargs)
