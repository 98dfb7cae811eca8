"""The held-out checks of ``scripts/meta_train.py``: the validation meta-loss (at the start, every
``validation.every`` meta-steps and at the end) and the closing evaluation table of the learned
optimizer against the untrained one and the lr-tuned baselines (``metaopt.evaluation``)."""
from __future__ import annotations

import copy

from omegaconf import OmegaConf

from metaopt.evaluation import evaluate, make_optimizer, summarize, tune_lr
from metaopt.garo.controller import GAROController
from metaopt.garo.optimizer import GARO
from metaopt.garo.rule import GARORule
from metaopt.meta import MetaLoss, held_out_seeds, validate
from scripts import hybrid_train
from scripts.meta_train_config import MetaTrainConfig

EVAL_COLUMNS = ("optimizer", "runs", "diverged", "final_norm_loss_median", "final_test_loss_mean",
                "reached_target", "steps_to_target_median", "ms_per_step")


def run_validation(cfg: MetaTrainConfig, learned, family, weights=None) -> dict:
    v = cfg.validation
    return validate(learned, weights if weights is not None else learned.meta_parameters(),
                    family, held_out_seeds(v.num_tasks), v.horizon,
                    MetaLoss(v.kind, v.split, cfg.meta_loss.log_eps,
                             cfg.meta_loss.divergence_threshold))


def garo_factory(controller: GAROController, rule: GARORule, label: str):
    """A harness factory: a fresh ``GARO`` on a private copy of ``controller`` per run."""
    def factory(params):
        return GARO(params, controller=copy.deepcopy(controller), direction=rule.direction,
                    scale=rule.scale)
    factory.label = label
    return factory


def evaluation_table(cfg: MetaTrainConfig, learned, family, untrained: GAROController):
    """Learned vs untrained GARO vs tuned baselines on the held-out tasks, via the harness."""
    e = cfg.evaluation
    optimizers = {"garo_learned": garo_factory(learned.module, learned.rule,
                                               "garo_learned"),
                  "garo_untrained": garo_factory(untrained, learned.rule,
                                                 "garo_untrained")} \
        if cfg.controller.kind == "garo" else \
        hybrid_train.evaluation_factories(cfg, learned, untrained)
    for spec in e.baselines:
        factory = make_optimizer(spec.name, **OmegaConf.to_container(spec.hyperparameters))
        label = spec.name
        if spec.tune_lr:
            tuned = tune_lr(factory, family, e.tuning_steps, lrs=list(e.tuning_lrs))
            factory, label = factory.with_hyperparameters(lr=tuned.best_lr), \
                f"{spec.name}(lr={tuned.best_lr:.3g})"
        optimizers[label] = factory
    results = evaluate({family.name: family}, optimizers, e.steps,
                       task_seeds=held_out_seeds(e.num_tasks), track_memory=False,
                       target=e.target, target_kind="relative")
    return summarize(results)
