"""Basin maps against known minima, the functions' symmetries and single torch.optim runs."""
from __future__ import annotations

import pytest
import torch

from metaopt.analysis.basins import (
    DIVERGED,
    UNCONVERGED,
    basin_map,
    classify_points,
    find_minima,
    grid_starts,
)
from metaopt.analysis.batched import BatchedOptimizer
from tasks.test_functions import TEST_FUNCTIONS_2D

HIMMELBLAU = TEST_FUNCTIONS_2D["himmelblau"]
CAMEL = TEST_FUNCTIONS_2D["six_hump_camel"]


def test_grid_layout_is_indexed_y_then_x():
    xs, ys, starts = grid_starts((-1.0, 1.0, 10.0, 12.0), 3)
    grid = starts.view(3, 3, 2)
    assert torch.equal(grid[2, 0], torch.stack([xs[0], ys[2]]))
    assert torch.equal(grid[0, 1], torch.stack([xs[1], ys[0]]))
    with pytest.raises(ValueError, match="bounds"):
        grid_starts((1.0, -1.0, 0.0, 1.0), 3)


def test_classify_points():
    mins = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    points = torch.tensor([[0.001, 0.0], [1.0, 0.999], [0.5, 0.5], [float("nan"), 0.0],
                           [float("inf"), 1.0]], dtype=torch.float64)
    assert classify_points(points, mins, 0.01).tolist() == [0, 1, UNCONVERGED, DIVERGED, DIVERGED]


@pytest.fixture(scope="module")
def himmelblau_map():
    optimizers = {"gd": BatchedOptimizer("sgd", {"lr": 0.01}),
                  "adam": BatchedOptimizer("adam", {"lr": 0.05}),
                  "sgd_big_lr": BatchedOptimizer("sgd", {"lr": 0.2})}
    return basin_map(HIMMELBLAU.function, HIMMELBLAU.minimizers, optimizers,
                     bounds=(-5.0, 5.0, -5.0, 5.0), resolution=21, steps=400, tolerance=1e-3)


def test_gradient_descent_reaches_a_known_minimum_from_every_start(himmelblau_map):
    labels = himmelblau_map.labels["gd"]
    assert (labels >= 0).all()
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]
    final = himmelblau_map.final["gd"].reshape(-1, 2)
    values = torch.func.vmap(HIMMELBLAU.function)(final)
    assert values.max() < 1e-6  # every minimum of Himmelblau has value 0
    shares = himmelblau_map.fractions("gd")
    assert sum(shares.values()) == pytest.approx(1.0)
    arrival = himmelblau_map.arrival["gd"]
    assert (arrival >= 0).all() and (arrival <= 400).all()
    assert (arrival == 0).sum() == 1  # the grid point (3, 2) is a minimiser: arrived at step 0
    # a start next to a minimiser lands in that minimiser's basin
    xs, ys = himmelblau_map.xs, himmelblau_map.ys
    for index, (mx, my) in enumerate(HIMMELBLAU.minimizers):
        j, i = int((xs - mx).abs().argmin()), int((ys - my).abs().argmin())
        assert int(labels[i, j]) == index


def test_a_too_large_step_diverges_and_is_labelled(himmelblau_map):
    shares = himmelblau_map.fractions("sgd_big_lr")
    assert shares["diverged"] > 0.5
    assert 0 < himmelblau_map.agreement("gd", "adam") < 1


def test_six_hump_camel_map_is_point_symmetric():
    # f(x, y) = f(−x, −y) and the minimisers are each other's reflection: gradient descent's map
    # must be the reflected map with the two labels swapped.
    result = basin_map(CAMEL.function, CAMEL.minimizers,
                       {"gd": BatchedOptimizer("sgd", {"lr": 0.02})},
                       bounds=(-2.0, 2.0, -1.0, 1.0), resolution=17, steps=500, tolerance=1e-3)
    labels = result.labels["gd"]
    swapped = torch.where(labels >= 0, 1 - labels, labels)
    assert (labels >= 0).float().mean() > 0.5  # the rest reach the four local minima
    assert (labels == swapped.flip(0).flip(1)).float().mean() > 0.97


def test_map_labels_equal_single_torch_optim_runs(himmelblau_map):
    starts = grid_starts((-5.0, 5.0, -5.0, 5.0), 21)[2]
    labels = himmelblau_map.labels["adam"].reshape(-1)
    mins = torch.tensor(HIMMELBLAU.minimizers, dtype=torch.float64)
    for k in (0, 97, 220, 440):
        x = torch.nn.Parameter(starts[k].clone())
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            HIMMELBLAU.function(x).backward()
            opt.step()
        assert int(classify_points(x.detach()[None], mins, 1e-3)) == int(labels[k])
        torch.testing.assert_close(x.detach(), himmelblau_map.final["adam"].reshape(-1, 2)[k],
                                   rtol=1e-12, atol=1e-12)


def test_find_minima_adds_exactly_the_local_minima():
    lo, hi = HIMMELBLAU.init_box
    assert find_minima(HIMMELBLAU.function, (lo, hi, lo, hi), known=HIMMELBLAU.minimizers,
                       resolution=8, steps=500) == list(HIMMELBLAU.minimizers)
    lo, hi = CAMEL.init_box
    found = find_minima(CAMEL.function, (lo, hi, lo, hi), known=CAMEL.minimizers, resolution=10,
                        steps=800)
    assert found[:2] == list(CAMEL.minimizers) and len(found) == 6
    points = torch.tensor(found[2:], dtype=torch.float64)
    values = sorted(torch.func.vmap(CAMEL.function)(points).tolist())
    # the camel's local minima come in point-symmetric pairs: f = −0.21546 and 2.10425
    assert values == pytest.approx([-0.2154638, -0.2154638, 2.1042503, 2.1042503], abs=1e-6)
    grads = torch.func.vmap(torch.func.grad(CAMEL.function))(points)
    assert grads.abs().max() < 1e-9
