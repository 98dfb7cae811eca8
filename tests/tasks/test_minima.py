"""Known minimisers are minimisers: value and zero gradient in float64, checked against
independent oracles (published minima, closed forms, scikit-learn solvers, dense grids)."""

import math

import pytest
import torch

import tasks
from tasks.test_functions import TEST_FUNCTIONS_2D

from .conftest import fast_family

F64 = torch.float64
MINIMISABLE_2D = [n for n, f in TEST_FUNCTIONS_2D.items() if f.minimum_value is not None]

# literature values (e.g. Jamil & Yang 2013, "A literature survey of benchmark functions")
PUBLISHED_MINIMUM = {"rosenbrock": 0.0, "beale": 0.0, "himmelblau": 0.0, "rastrigin": 0.0,
                     "ackley": 0.0, "six_hump_camel": -1.0316, "styblinski_tang": -78.332}


def _value_and_grad(task, params, batch=None):
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    value = task.loss(params, batch)
    grads = torch.autograd.grad(value, list(params.values()))
    return float(value.detach()), torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("name", MINIMISABLE_2D)
def test_2d_minimisers_have_known_value_and_zero_gradient(name):
    task = tasks.get(name, dtype=F64).sample_seed(0)
    assert task.minimum_value == pytest.approx(PUBLISHED_MINIMUM[name], abs=1e-3)
    assert len(task.minimizers) == {"himmelblau": 4, "six_hump_camel": 2}.get(name, 1)
    for minimiser in task.minimizers:
        value, grad = _value_and_grad(task, minimiser)
        assert value == pytest.approx(task.minimum_value, abs=1e-12)
        assert grad.abs().max().item() < 1e-10


@pytest.mark.parametrize("name", MINIMISABLE_2D)
def test_2d_minimum_is_global_on_a_dense_grid(name):
    task = tasks.get(name, dtype=F64).sample_seed(0)
    low, high = TEST_FUNCTIONS_2D[name].init_box
    axis = torch.linspace(low, high, 301, dtype=F64)
    grid = torch.cartesian_prod(axis, axis)
    values = torch.vmap(lambda x: task.loss({"x": x}, None))(grid)
    assert values.min().item() >= task.minimum_value - 1e-12
    # and the grid gets close to it (the minimiser is inside the box)
    assert (values.min().item() - task.minimum_value
            < 0.2 * (values.max().item() - task.minimum_value))


@pytest.mark.parametrize("name", ["saddle", "monkey_saddle"])
def test_saddles_are_critical_points_but_not_minima(name):
    task = tasks.get(name, dtype=F64).sample_seed(0)
    assert task.minimizers == () and task.minimum_value is None
    (point,) = task.critical_points
    value, grad = _value_and_grad(task, {"x": point})
    assert value == 0.0 and grad.abs().max().item() == 0.0
    hessian = torch.func.hessian(lambda x: task.loss({"x": x}, None))(point)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    if name == "saddle":  # x^2 - y^2: Hessian diag(2, -2), a strict saddle
        assert torch.allclose(eigenvalues, torch.tensor([-2.0, 2.0], dtype=F64))
    else:  # monkey saddle: Hessian vanishes, yet a descent direction exists
        assert torch.allclose(eigenvalues, torch.zeros(2, dtype=F64))
    nearby = [torch.tensor(p, dtype=F64) for p in ([-1e-2, 0.0], [0.0, 1e-2])]
    assert min(float(task.loss({"x": p}, None)) for p in nearby) < 0.0


@pytest.mark.parametrize("name,argmin", [("rosenbrock_nd", 1.0), ("rastrigin_nd", 0.0)])
def test_nd_minimisers(name, argmin):
    family = tasks.get(name, dim=(2, 12), dtype=F64)
    for seed in range(3):
        task = family.sample_seed(seed)
        (minimiser,) = task.minimizers
        assert torch.equal(minimiser["x"], torch.full((task.dim,), argmin, dtype=F64))
        value, grad = _value_and_grad(task, minimiser)
        assert value == 0.0 and grad.abs().max().item() < 1e-12
        perturbed = {"x": minimiser["x"] + 1e-3 * torch.randn(
            task.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)}
        assert float(task.loss(perturbed, None)) > 0.0


def test_rosenbrock_nd_in_2d_matches_2d_rosenbrock():
    task_nd = tasks.get("rosenbrock_nd", dim=(2, 2), dtype=F64).sample_seed(0)
    task_2d = tasks.get("rosenbrock", dtype=F64).sample_seed(0)
    x = torch.tensor([-1.5, 2.0], dtype=F64)
    assert float(task_nd.loss({"x": x}, None)) == float(task_2d.loss({"x": x}, None)) == 12.5


def test_quadratic_minimiser_and_spectrum():
    task = tasks.get("quadratic", dim=(6, 6), condition_number=(50, 50), dtype=F64).sample_seed(0)
    value, grad = _value_and_grad(task, task.minimizers[0])
    assert value == 0.0 and grad.abs().max().item() < 1e-14
    hessian = torch.func.hessian(lambda x: task.loss({"x": x}, None))(task.init_params()["x"])
    eigenvalues = torch.linalg.eigvalsh(hessian)
    expected = torch.logspace(-math.log10(50), 0, 6, dtype=F64)  # log-spaced in [1/kappa, 1]
    assert torch.allclose(eigenvalues, expected, atol=1e-12)
    assert torch.allclose(hessian, hessian.T, atol=1e-15)


def test_least_squares_minimiser_is_the_lstsq_solution():
    task = fast_family("least_squares", dtype=F64).sample_seed(1)
    x, y = task.eval_batch("train")
    design = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
    # independent oracle: the normal equations X^T X w = X^T y
    solution = torch.linalg.solve(design.T @ design, design.T @ y)
    (minimiser,) = task.minimizers
    assert torch.allclose(torch.cat([minimiser["weight"].reshape(-1), minimiser["bias"]]), solution,
                          atol=1e-9)
    value, grad = _value_and_grad(task, minimiser, task.eval_batch("train"))
    assert value == pytest.approx(task.minimum_value, abs=1e-12) and grad.abs().max().item() < 1e-10


def test_lasso_loss_matches_sklearn_and_its_solution_is_optimal():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    task = fast_family("lasso", dtype=F64).sample_seed(2)
    x, y = task.eval_batch("train")
    model = sklearn_linear.Lasso(alpha=task.l1, tol=1e-12, max_iter=100_000).fit(x.numpy(),
                                                                                 y.numpy())
    params = {"weight": torch.tensor(model.coef_, dtype=F64).reshape(1, -1),
              "bias": torch.tensor([model.intercept_], dtype=F64)}
    # same objective: (1/2n)||y - Xw - b||^2 + alpha ||w||_1
    residual = y - x @ params["weight"].reshape(-1) - params["bias"]
    expected = 0.5 * residual.pow(2).mean() + task.l1 * params["weight"].abs().sum()
    value = float(task.loss(params, (x, y)))
    assert value == pytest.approx(float(expected), rel=1e-12)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # the sklearn solution is a (global, convex) minimiser of our loss
        step = {k: v + 1e-4 * torch.randn(v.shape, generator=generator, dtype=F64)
                for k, v in params.items()}
        assert float(task.loss(step, (x, y))) >= value - 1e-12


@pytest.mark.parametrize("dataset", ["digits", "wine"])
def test_logistic_regression_minimiser_matches_sklearn(dataset):
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    task = fast_family("logistic_regression", datasets=(dataset,), l2=(1e-2, 1e-2),
                       dtype=F64).sample_seed(0)
    x, y = task.eval_batch("train")
    # sklearn minimises C * sum CE + 1/2 ||W||^2 = C n * (mean CE + 1/(2 C n) ||W||^2)
    model = sklearn_linear.LogisticRegression(C=1.0 / (task.l2 * task.num_train), tol=1e-10,
                                              max_iter=10_000)
    model.fit(x.numpy(), y.numpy())
    params = {"weight": torch.tensor(model.coef_, dtype=F64),
              "bias": torch.tensor(model.intercept_, dtype=F64)}
    # sklearn's multinomial solution is determined up to a shift of the biases; ours too
    _, grad = _value_and_grad(task, params, (x, y))
    assert grad.abs().max().item() < 1e-5
    _, init_grad = _value_and_grad(task, task.init_params(), (x, y))
    assert init_grad.abs().max().item() > 1e-2
