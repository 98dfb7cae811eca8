"""The optimizer registry and learning-rate tuning."""

import math

import pytest
import torch

import tasks
from metaopt.evaluation import BASELINES, log_grid, make_optimizer, optimizer_names, tune_lr


def test_baselines_are_registered_with_their_defaults():
    assert {"sgd", "sgd_momentum", "nesterov", "adam", "adamw", "rmsprop"} <= set(optimizer_names())
    param = torch.nn.Parameter(torch.zeros(2))
    nesterov = make_optimizer("nesterov")([param])
    assert isinstance(nesterov, torch.optim.SGD)
    assert nesterov.defaults["nesterov"] and nesterov.defaults["momentum"] == 0.9
    assert isinstance(make_optimizer("adamw", lr=0.3)([param]), torch.optim.AdamW)
    assert make_optimizer("adamw", lr=0.3).hyperparameters["lr"] == 0.3
    assert BASELINES["sgd"][1]["lr"] == 0.01  # overrides do not mutate the registry


def test_torch_optim_by_qualified_name():
    assert make_optimizer("torch.optim.Adagrad", lr=0.1).cls is torch.optim.Adagrad


def test_unknown_optimizer_and_hyperparameter_are_named():
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        make_optimizer("adamm")
    with pytest.raises(ValueError, match="NoSuchOptimizer"):
        make_optimizer("metaopt.optim.NoSuchOptimizer")
    with pytest.raises(ValueError, match=r"\['betta'\]"):
        make_optimizer("adam", betta=0.9)


def test_log_grid():
    grid = log_grid(1e-3, 1.0, 4)
    assert grid == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ValueError):
        log_grid(0.0, 1.0, 3)


def test_tune_lr_picks_the_fastest_stable_rate_on_a_quadratic():
    """Oracle: for GD on eigenvalues in [1/kappa, 1] the error contracts by max|1 - lr*lambda| per
    step; among {0.01, 0.1, 1, 3}: lr=3 diverges (|1-3| = 2 > 1) and lr=1 contracts fastest."""
    family = tasks.get("quadratic", dim=(4, 8), condition_number=(2, 5), dtype=torch.float64)
    result = tune_lr(make_optimizer("sgd"), family, 40, lrs=[3.0, 0.01, 1.0, 0.1], eval_every=40)
    assert result.best_lr == 1.0
    assert math.isinf(result.scores[3.0])
    assert result.scores[0.01] > result.scores[0.1] > result.scores[1.0]
    assert result.task_seeds == (10_000, 10_001)  # held out from the default evaluation seeds
    assert result.to_dict()["scores"]["3.0"] is None


def test_tune_lr_ties_go_to_the_smaller_rate_and_criteria_are_checked():
    family = tasks.get("quadratic", dim=(2, 2), dtype=torch.float64)
    # every rate diverges: the smallest one is reported with an infinite score
    result = tune_lr(make_optimizer("sgd"), family, 20, lrs=[10.0, 5.0], eval_every=20)
    assert result.best_lr == 5.0 and math.isinf(result.best_score)
    with pytest.raises(ValueError, match="criterion"):
        tune_lr(make_optimizer("sgd"), family, 5, criterion="vibes")
    area = tune_lr(make_optimizer("sgd"), family, 20, lrs=[0.1, 1.0], criterion="mean_train_loss",
                   eval_every=20)
    assert area.best_lr == 1.0
