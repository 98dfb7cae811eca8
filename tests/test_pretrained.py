"""The shipped GARO checkpoint: listed, loadable by name, and better than its initialisation."""
from __future__ import annotations

import torch

import metaopt
import tasks
from metaopt.optim import GARO
from metaopt.task import generator_from_seed


def final_loss(task, make_optimizer, steps=100):
    module = task.module()
    opt = make_optimizer(module.parameters())
    g = generator_from_seed(0)
    for _ in range(steps):
        batch = task.train_batch(g)

        def closure():
            opt.zero_grad()
            loss = task.module_loss(module, batch)
            loss.backward()
            return loss
        opt.step(closure)
    with torch.no_grad():
        return float(task.module_loss(module, task.eval_batch("test")))


def test_shipped_checkpoint_is_listed_and_loads_by_name():
    assert "garo_quadratics" in metaopt.list_pretrained()
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = metaopt.load_optimizer("garo_quadratics", params)
    assert isinstance(opt, GARO)


def test_shipped_checkpoint_beats_the_untrained_controller_on_held_out_quadratics():
    family = tasks.get("quadratic", dim=(2, 20), condition_number=(1, 100))
    wins = 0
    for seed in range(10_000, 10_005):  # seeds the quick run never trained on
        task = family.sample(generator_from_seed(seed))
        learned = final_loss(task, lambda ps: metaopt.load_optimizer("garo_quadratics", ps))
        untrained = final_loss(task, lambda ps: GARO(ps))
        wins += learned < 0.5 * untrained
    assert wins >= 4


def test_list_pretrained_describes_every_checkpoint_in_one_line():
    described = metaopt.list_pretrained(describe=True)
    assert sorted(described) == metaopt.list_pretrained()
    for name, line in described.items():
        assert line and "\n" not in line, name
    assert "quadratic" in described["garo_quadratics"] or "mixture" in described["garo_quadratics"]
