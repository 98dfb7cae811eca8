"""Scale-free GARO (scale="distance"): the step size follows the task's distance to travel.

The untrained controller emits a constant multiplier, so the step is DoG's estimate alone:
``a_t = c·r̄_t/√(t+1)`` with ``r̄_t`` the largest RMS displacement so far. On ``½‖x − x*‖²`` with
``‖x*‖`` spanning six orders of magnitude, one configuration must reach the target every time,
where the absolute-lr GARO of the same controller (its lr fixed) cannot.
"""
from __future__ import annotations

import pytest
import torch

from metaopt.garo import GARO, GAROController


def _run(distance: float, scale: str, steps: int = 300) -> float:
    target = torch.full((10,), distance, dtype=torch.float64)
    x = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    controller = GAROController(hidden_size=4, features="relative", init_lr=0.1,
                                init_momentum=0.9).double()
    opt = GARO([x], controller=controller, direction="adam", scale=scale,
               num_training_steps=steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (x - target).square().sum()
        loss.backward()
        opt.step(loss=loss)
    return float((x.detach() - target).norm() / target.norm())


@pytest.mark.parametrize("distance", [1e-3, 1.0, 1e3])
def test_distance_scale_reaches_targets_at_any_distance(distance):
    assert _run(distance, "distance") < 0.05


def test_absolute_lr_cannot_cover_the_same_range():
    # lr 0.1 per step (Adam units): far too slow for 1e3 and too coarse for 1e-3
    errors = [_run(d, "none") for d in (1e-3, 1e3)]
    assert max(errors) > 0.5


def test_distance_state_is_the_running_max_displacement():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    controller = GAROController(hidden_size=4, features="relative", init_lr=0.1).double()
    opt = GARO([x], controller=controller, direction="adam", scale="distance")
    start = x.detach().clone()
    history = []
    for _ in range(5):
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        opt.step(loss=loss)
        history.append(float((x.detach() - start).norm() / 2 ** 0.5))
    state = opt.garo_state
    floor = 1e-4 * (1 + float(start.norm()) / 2 ** 0.5)
    # r̄ read at step t is the max over the displacements before that step (and the floor)
    assert float(state["distance_max"][0]) == pytest.approx(max([floor] + history[:-1]),
                                                            rel=1e-12)
    assert torch.allclose(opt.state[x]["displacement"], x.detach() - start, rtol=0, atol=1e-14)
