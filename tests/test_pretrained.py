"""The shipped GARO checkpoints: listed and described, loadable by name, better than their
initialisation; garo_general's guarantees (no divergence, loss-scale invariance)."""
from __future__ import annotations

import math

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
    assert list(described) == metaopt.list_pretrained()
    for name, line in described.items():
        assert line and "\n" not in line, name
    assert "quadratic" in described["garo_quadratics"] or "mixture" in described["garo_quadratics"]


def test_list_pretrained_leads_with_what_a_user_should_pick():
    names = metaopt.list_pretrained()
    assert names[0] == "garo_general"
    assert names[-1] == "garo_quadratics"  # the pipeline fixture comes last, marked as one
    line = metaopt.list_pretrained(describe=True)["garo_quadratics"]
    assert line.startswith("PIPELINE FIXTURE") and "garo_general" in line
    assert "FIXTURE" not in metaopt.list_pretrained(describe=True)["garo_general"]


def test_the_fixture_s_model_card_says_it_is_one(tmp_path):
    metaopt.hub.save_pretrained("garo_quadratics", tmp_path / "fixture")
    assert "PIPELINE FIXTURE" in (tmp_path / "fixture" / "README.md").read_text()
    metaopt.hub.save_pretrained("garo_general", tmp_path / "general")
    assert "FIXTURE" not in (tmp_path / "general" / "README.md").read_text()


def _rosenbrock_run(opt_factory, steps):
    task = tasks.get("rosenbrock", initial_point=(-1.5, 2.0)).sample_seed(0)
    module = task.module()
    opt = opt_factory(module.parameters())
    losses = []
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = task.module_loss(module, None)
            loss.backward()
            return loss
        losses.append(float(opt.step(closure).detach()))
    return losses


def test_garo_general_is_scale_invariant_adam_direction_with_progress():
    opt = metaopt.load_optimizer("garo_general", [torch.nn.Parameter(torch.zeros(3))],
                                 num_training_steps=10)
    assert opt.rule.direction == "adam" and opt.controller.features == "relative"
    # meta-training wrote the feature statistics it saw (not the 0 / 1 of an untrained one)
    assert not torch.equal(opt.controller.init_feature_mean, torch.zeros(5))


def test_garo_general_does_not_diverge_on_rosenbrock_where_garo_quadratics_does():
    # garo_quadratics steps lr_t ≈ 1.3 from step 0 whatever ‖g‖ (≈ 155 here) and overflows at
    # step 2; the general controller reads scale-free features and moves by Adam-normalised steps.
    losses = _rosenbrock_run(  # the first 300 of a 2,000-step run (12.5 -> 4.5 by 100)
        lambda ps: metaopt.load_optimizer("garo_general", ps, num_training_steps=2000), 300)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]  # slow (2.94 after all 2,000 steps), but no blow-up
    quadratics = _rosenbrock_run(lambda ps: metaopt.load_optimizer("garo_quadratics", ps), 3)
    assert not all(math.isfinite(v) and v < 1e3 for v in quadratics)  # the defect it replaces


def test_garo_general_trajectory_is_the_same_at_every_loss_scale():
    family = tasks.get("mlp", datasets=["digits"], width=(32, 32), depth=(1, 1),
                       batch_sizes=(64,))
    task = family.sample_seed(2 ** 30)

    def run(scale):
        module = task.module()
        opt = metaopt.load_optimizer("garo_general", module.parameters(), num_training_steps=60)
        g = generator_from_seed(0)
        for _ in range(60):
            batch = task.train_batch(g)

            def closure():
                opt.zero_grad()
                loss = scale * task.module_loss(module, batch)
                loss.backward()
                return loss
            opt.step(closure)
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    reference = run(1.0)
    for scale in (0.01, 10.0, 100.0):
        difference = (run(scale) - reference).abs().max() / reference.abs().max()
        assert difference < 1e-3, (scale, float(difference))
