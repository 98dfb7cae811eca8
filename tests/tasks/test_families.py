"""Generic properties of every registered family: reproducible sampling from a seed, variation
across seeds, explicit-generator randomness only, dtype/device handling, the normaliser."""

import math

import pytest
import torch

from metaopt.task import Task, generator_from_seed

from .conftest import FAMILY_NAMES, fast_family


def _snapshot(task: Task):
    params = task.init_params()
    batch = task.train_batch(generator_from_seed(123))
    return task.describe(), params, batch, float(task.loss(params, batch))


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_same_seed_same_task(name):
    family = fast_family(name)
    first, second = _snapshot(family.sample_seed(7)), _snapshot(family.sample_seed(7))
    assert _equal(first, second)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_different_seeds_give_different_tasks(name):
    family = fast_family(name)
    snapshots = [_snapshot(family.sample_seed(seed)) for seed in range(4)]
    # some pair among 4 seeds must differ in description, initial point, batch or loss
    assert not all(_equal(snapshots[0], other) for other in snapshots[1:])
    assert len({s[3] for s in snapshots}) > 1


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_global_rng_untouched(name):
    state = torch.get_rng_state()
    task = fast_family(name).sample_seed(0)
    task.module()
    task.init_params(generator_from_seed(1))
    task.train_batch(generator_from_seed(2))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_float64_and_normaliser(name):
    task = fast_family(name, dtype=torch.float64).sample_seed(3)
    params = task.init_params()
    assert all(p.dtype == torch.float64 for p in params.values())
    assert all(p.dtype == torch.float64 for p in task.module().parameters())
    assert task.loss_scale > 0 and math.isfinite(task.loss_scale)
    loss = task.loss(params, task.eval_batch("train"))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert math.isfinite(float(task.normalized_loss(loss)))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_module_params_equal_init_params(name):
    task = fast_family(name).sample_seed(0)
    module = task.module()
    params = task.init_params()
    named = dict(module.named_parameters())
    assert named.keys() == params.keys()
    assert all(torch.equal(named[k].detach(), params[k]) for k in params)
    fresh = task.init_params(generator_from_seed(99))
    assert fresh.keys() == params.keys()


def test_generator_init_differs_from_canonical():
    task = fast_family("mlp").sample_seed(0)
    canonical, fresh = task.init_params(), task.init_params(generator_from_seed(5))
    assert not all(torch.equal(canonical[k], fresh[k]) for k in canonical)


def test_fixed_rosenbrock_start():
    family = fast_family("rosenbrock", initial_point=(-1.5, 2.0), dtype=torch.float64)
    for seed in range(3):
        task = family.sample_seed(seed)
        assert task.init_params()["x"].tolist() == [-1.5, 2.0]
        # f(-1.5, 2) = 2.5^2 + 100 (2 - 2.25)^2 = 12.5
        assert float(task.loss(task.init_params(), None)) == pytest.approx(12.5, abs=1e-12)


def test_sampled_variations_cover_their_ranges():
    mlp = fast_family("mlp", width=(8, 128), depth=(1, 3))
    tasks_ = [mlp.sample_seed(s) for s in range(30)]
    assert {t.depth for t in tasks_} == {1, 2, 3}
    assert {t.activation for t in tasks_} == {"tanh", "relu", "gelu"}
    assert min(t.width for t in tasks_) >= 8 and max(t.width for t in tasks_) <= 128
    assert len({t.batch_size for t in tasks_}) > 1
    quad = fast_family("quadratic", dim=(2, 30), condition_number=(1, 1e4))
    kappas = [quad.sample_seed(s).condition_number for s in range(20)]
    assert min(kappas) >= 1 and max(kappas) <= 1e4 and max(kappas) / min(kappas) > 10


def test_real_datasets_are_standardised_with_train_statistics():
    task = fast_family("logistic_regression", datasets=("wine",),
                       dtype=torch.float64).sample_seed(0)
    assert torch.allclose(task.x_train.mean(0), torch.zeros(task.num_features, dtype=torch.float64),
                          atol=1e-10)
    assert torch.allclose(task.x_train.std(0, unbiased=False),
                          torch.ones(task.num_features, dtype=torch.float64), atol=1e-10)
    # test statistics are not forced to 0/1 (they were not used)
    assert not torch.allclose(task.x_test.mean(0),
                              torch.zeros(task.num_features, dtype=torch.float64), atol=1e-6)
    assert task.num_train + task.x_test.shape[0] == 178 and task.num_classes == 3


def test_noisy_quadratic_gradient_is_unbiased_and_test_loss_exact():
    task = fast_family("noisy_quadratic", dim=(5, 5), noise_std=(0.5, 0.5),
                       dtype=torch.float64).sample_seed(0)
    x = task.init_params()["x"].requires_grad_()
    generator = generator_from_seed(0)
    grads = torch.stack([torch.autograd.grad(task.loss({"x": x}, task.train_batch(generator)), x)[0]
                         for _ in range(4000)])
    exact = task.hessian @ (x.detach() - task.x_star)
    assert torch.allclose(grads.mean(0), exact, atol=4 * 0.5 / math.sqrt(4000))
    assert grads.std(0).mean().item() == pytest.approx(0.5, rel=0.1)
    assert task.test_batch() is None
