"""MetaTrainer: learning on quadratics, divergence resets, skipped updates, exact state round
trip."""
from __future__ import annotations

import math

import torch

from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import (
    GAROLearnedRule,
    InnerRunPool,
    MetaLoss,
    MetaTrainer,
    TruncatedBPTT,
    held_out_seeds,
    make_horizon,
    validate,
)
from metaopt.task import TaskFamily
from tasks.quadratic import QuadraticTask

from .helpers import quadratic_family


def _trainer(family, seed=0, num_runs=2, lr=3e-3, dtype=torch.float32):
    learned = GAROLearnedRule(GAROController(hidden_size=8).to(dtype), GARORule())
    runs = InnerRunPool(learned, family, num_runs, 10, make_horizon("log_uniform", 20, 20, 60),
                        MetaLoss("mean", "train"))
    return learned, MetaTrainer(learned, runs, TruncatedBPTT(), outer_lr=lr, seed=seed)


def test_meta_training_reduces_held_out_meta_loss():
    family = quadratic_family(dtype=torch.float32, dim=(2, 10), condition_number=(1.0, 30.0))
    learned, trainer = _trainer(family, lr=1e-2)
    held_out = MetaLoss("mean", "test")
    before = validate(learned, learned.meta_parameters(), family, held_out_seeds(4), 50,
                      held_out)["meta_loss"]
    for _ in range(40):
        metrics = trainer.step()
        assert math.isfinite(metrics["meta_grad_norm"])
    after = validate(learned, learned.meta_parameters(), family, held_out_seeds(4), 50,
                     held_out)["meta_loss"]
    assert after < 0.6 * before, (before, after)


class _NaNQuadratic(QuadraticTask):
    """A quadratic whose loss is NaN everywhere (a broken task in the distribution)."""

    def objective(self, x, batch):
        return super().objective(x, batch) * float("nan")


class _SometimesBroken(TaskFamily):
    """Odd task seeds give a NaN task, even seeds an exploding one (curvature 1e4 > 2/lr)."""

    name = "sometimes_broken"

    def sample(self, generator):
        seed = int(torch.randint(2 ** 30, (), generator=generator))
        dim = 3
        x0 = torch.randn(dim, generator=generator, dtype=torch.float64)
        if seed % 2:
            return _NaNQuadratic(torch.eye(dim, dtype=torch.float64), torch.zeros(dim), x0)
        return QuadraticTask(1e4 * torch.eye(dim, dtype=torch.float64), torch.zeros(dim), x0)


def test_diverging_tasks_are_reset_and_counted_never_a_non_finite_update():
    learned, trainer = _trainer(_SometimesBroken(), num_runs=3)
    start = {k: v.detach().clone() for k, v in learned.meta_parameters().items()}
    for _ in range(4):
        metrics = trainer.step()
        assert metrics["live_runs"] == 0  # every task diverges or is NaN
    assert metrics["resets"] == 12 and metrics["skipped_updates"] == 4
    for name, value in learned.meta_parameters().items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, start[name])  # no update came from a diverged run


def test_mixed_divergence_keeps_training_finite():
    healthy = quadratic_family(dtype=torch.float32)

    class Mixed(TaskFamily):
        def sample(self, generator):
            if float(torch.rand((), generator=generator)) < 0.3:
                return _SometimesBroken().sample(generator)
            return healthy.sample(generator)

    learned, trainer = _trainer(Mixed(), num_runs=4)
    for _ in range(6):
        metrics = trainer.step()
        assert math.isfinite(metrics["meta_loss"]) and math.isfinite(metrics["meta_grad_norm"])
    assert metrics["resets"] > 0
    assert all(torch.isfinite(v).all() for v in learned.meta_parameters().values())


def test_state_dict_round_trip_continues_bit_exactly():
    family = quadratic_family(dtype=torch.float32)
    learned_a, a = _trainer(family, seed=3)
    for _ in range(5):
        a.step()
    _, b = _trainer(family, seed=3)
    for _ in range(3):
        b.step()
    state = b.state_dict()
    learned_c, c = _trainer(family, seed=99)  # different seed: everything comes from the state
    c.load_state_dict(state)
    for _ in range(2):
        c.step()
    for (name, x), y in zip(learned_a.module.state_dict().items(),
                            learned_c.module.state_dict().values()):
        assert torch.equal(x, y), name
