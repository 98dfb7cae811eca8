"""The functional loss (``torch.func.functional_call``) is differentiable and agrees with the
ordinary nn.Module path; second-order graphs work (meta-training unrolls use create_graph=True)."""

import pytest
import torch
import torch.nn.functional as F

import tasks
from metaopt.task import generator_from_seed

from .conftest import FAMILY_NAMES, fast_family

F64 = torch.float64


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_functional_gradient_matches_module_gradient(name):
    task = fast_family(name, dtype=F64).sample_seed(4)
    batch = task.train_batch(generator_from_seed(0))
    params = {k: v.requires_grad_() for k, v in task.init_params().items()}
    functional_loss = task.loss(params, batch)
    functional_grads = torch.autograd.grad(functional_loss, list(params.values()))

    module = task.module()
    module_loss = task.module_loss(module, batch)
    module_loss.backward()
    assert float(functional_loss) == pytest.approx(float(module_loss), rel=1e-12, abs=1e-12)
    for (name_, parameter), grad in zip(module.named_parameters(), functional_grads):
        assert torch.allclose(parameter.grad, grad, rtol=1e-10, atol=1e-12), name_


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock", "mlp", "logistic_regression",
                                  "cnn_digits", "augmented", "sequence", "char_mlp",
                                  "autoencoder_digits"])
def test_second_order_gradient_through_an_unrolled_step(name):
    """The meta-gradient of F(theta) = L(theta - lr * grad L(theta)) w.r.t. theta (which needs
    create_graph=True: it contains the Hessian) matches a central finite difference of F."""
    task = fast_family(name, dtype=F64).sample_seed(1)
    batch = task.train_batch(generator_from_seed(0))
    lr = 1e-2

    def unrolled(params):
        grads = torch.autograd.grad(task.loss(params, batch), list(params.values()),
                                    create_graph=True)
        return task.loss({k: v - lr * g for (k, v), g in zip(params.items(), grads)}, batch)

    params = {k: v.requires_grad_() for k, v in task.init_params().items()}
    meta_grads = torch.autograd.grad(unrolled(params), list(params.values()))
    generator = generator_from_seed(1)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=F64) for k, v in params.items()}
    eps = 1e-6

    def shifted(sign):
        return {k: (v.detach() + sign * eps * direction[k]).requires_grad_()
                for k, v in params.items()}

    finite_difference = (float(unrolled(shifted(1))) - float(unrolled(shifted(-1)))) / (2 * eps)
    analytic = sum(float((g * direction[k]).sum()) for k, g in zip(params, meta_grads))
    assert analytic == pytest.approx(finite_difference, rel=1e-5, abs=1e-7)


def test_logistic_loss_matches_a_hand_written_formula():
    task = fast_family("logistic_regression", datasets=("wine",), dtype=F64).sample_seed(0)
    params = task.init_params(generator_from_seed(3))
    x, y = task.eval_batch("train")
    logits = x @ params["weight"].T + params["bias"]
    expected = (-logits.log_softmax(1)[torch.arange(len(y)), y].mean()
                + 0.5 * task.l2 * params["weight"].pow(2).sum())
    assert float(task.loss(params, (x, y))) == pytest.approx(float(expected), rel=1e-12)
    accuracy = (logits.argmax(1) == y).double().mean()
    assert float(task.accuracy(params, (x, y))) == pytest.approx(float(accuracy))


def test_mlp_matches_a_hand_written_forward_pass():
    task = fast_family("mlp", depth=(2, 2), activations=("tanh",), dtype=F64).sample_seed(0)
    params = task.init_params()
    x, y = task.train_batch(generator_from_seed(1))
    hidden = torch.tanh(x @ params["0.weight"].T + params["0.bias"])
    hidden = torch.tanh(hidden @ params["2.weight"].T + params["2.bias"])
    logits = hidden @ params["4.weight"].T + params["4.bias"]
    assert float(task.loss(params, (x, y))) == pytest.approx(float(F.cross_entropy(logits, y)),
                                                             rel=1e-12)


def test_default_init_has_the_pytorch_fan_in_bound():
    task = fast_family("mlp", width=(64, 64), depth=(1, 1)).sample_seed(0)
    params = task.init_params()
    bound = 1 / task.num_features**0.5
    assert params["0.weight"].abs().max() <= bound
    assert params["0.weight"].abs().max() > 0.9 * bound  # uses the whole range


def test_cnn_input_is_image_shaped():
    task = tasks.get("cnn_digits", channels=(3, 3)).sample_seed(0)
    x, y = task.train_batch(generator_from_seed(0))
    assert x.shape[1:] == (1, 8, 8) and x.shape[0] == len(y) == task.batch_size
