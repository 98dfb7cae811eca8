"""What a ``MetaTrainConfig`` builds for ``scripts/meta_train.py``: the held-out task family,
the learned rule (GARO's controller, or the hybrid's via ``scripts/hybrid_train.py``) and the
``MetaTrainer`` over this process's share of the meta-batch. Config objects stop here: the
library gets plain arguments, and a library ``ValueError`` comes back as a ``ConfigError``
naming the full config key.
"""
from __future__ import annotations

import functools

import torch
from omegaconf import OmegaConf

import tasks
from metaopt.evaluation import make_optimizer
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import (
    GAROLearnedRule,
    InnerRunPool,
    MetaLoss,
    MetaTrainer,
    distributed_world,
    make_estimator,
    make_horizon,
)
from metaopt.meta.vectorised import VectorisedPool
from metaopt.meta.warm_start import load_controller_weights
from scripts import hybrid_train
from scripts.meta_train_config import ConfigError, MetaTrainConfig


def _key_error(section: str, error: Exception, names) -> ConfigError:
    """A library error as a ConfigError naming ``section.<argument>`` when its message starts
    with one of ``names`` (library ValueErrors read "argument: why"), else ``section``."""
    head = str(error).split(":", 1)[0].strip()
    key = f"{section}.{head}" if head in list(names) else section
    return ConfigError(f"invalid config key {key!r}: {error}")


def build(cfg: MetaTrainConfig, device: str | None = None,
          shard: tuple[int, int] | None = None):
    """Validation family, learned rule and trainer from the config (plain arguments below).

    The training family lives in the trainer's pool; the returned family is the one validation
    and the final table use (``validation.task``, else the training family's held-out seeds).
    ``shard=(rank, world)``: the pool holds that rank's share of the meta-batch (default: this
    process's place in ``torch.distributed``, the whole meta-batch outside it).
    """
    kwargs = OmegaConf.to_container(cfg.task.kwargs, resolve=True)
    device = device or cfg.device
    try:
        family = tasks.get(cfg.task.name, device=device, dtype=cfg.dtype, **kwargs)
    except (TypeError, ValueError) as error:  # TypeError: an unknown keyword
        section = "task.name" if cfg.task.name not in tasks.names() else "task.kwargs"
        raise _key_error(section, error, kwargs) from error
    held_out = family
    if cfg.validation.task:  # families never seen in training (held-out validation)
        try:
            held_out = tasks.get(cfg.validation.task, device=device, dtype=cfg.dtype,
                                 **OmegaConf.to_container(cfg.validation.task_kwargs,
                                                          resolve=True))
        except (TypeError, ValueError) as error:
            raise _key_error("validation.task", error, ()) from error
    c = cfg.controller
    # Library constructors validate their own arguments; their ValueErrors name the argument,
    # and the section is added here so the message names the full config key.
    try:
        controller = GAROController(
            hidden_size=c.hidden_size, num_step_frequencies=c.num_step_frequencies,
            init_lr=c.init_lr, init_momentum=c.init_momentum,
            init_weight_decay=c.init_weight_decay, features=c.features,
            lr_schedule=c.lr_schedule, generator=torch.Generator().manual_seed(cfg.seed),
        ).to(device=device, dtype=getattr(torch, cfg.dtype))
        rule = GARORule(direction=c.direction, feature_gradients=c.feature_gradients,
                        scale=c.scale)
    except ValueError as error:
        raise _key_error("controller", error, c) from error
    if c.init_from is not None:  # fine-tuning (a resume then loads its own weights over these)
        try:
            load_controller_weights(controller, rule, c.init_from)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"invalid config key 'controller.init_from': {error}") from error
    if c.kind == "garo":
        learned = GAROLearnedRule(controller, rule)
    else:  # the GD/ODE switching policy, alone or with GARO (scripts/hybrid_train.py)
        try:
            learned = hybrid_train.build_learned(cfg, controller, rule, device,
                                                 getattr(torch, cfg.dtype))
        except ValueError as error:
            raise _key_error("hybrid", error, cfg.hybrid) from error
    u, m = cfg.unroll, cfg.meta_loss
    try:
        meta_loss = MetaLoss(m.kind, m.split, m.log_eps, m.divergence_threshold)
    except ValueError as error:
        raise _key_error("meta_loss", error, m) from error
    for i, spec in enumerate(cfg.evaluation.baselines):  # fail now, not after training
        try:
            make_optimizer(spec.name, **OmegaConf.to_container(spec.hyperparameters))
        except (TypeError, ValueError) as error:
            raise _key_error(f"evaluation.baselines[{i}].hyperparameters", error,
                             spec.hyperparameters) from error
    horizon = make_horizon(u.schedule, u.horizon, u.min_horizon, u.max_horizon)
    engine = {"vectorised": functools.partial(VectorisedPool, compile=u.compile)}.get(
        u.engine, InnerRunPool)  # same runs and numbers; vectorised: one program per task shape
    try:
        pool = engine(learned, family, u.num_tasks, u.truncation_length, horizon, meta_loss,
                      second_order=u.second_order, shard=shard or distributed_world())
    except ValueError as error:  # fewer runs than processes
        raise ConfigError(f"invalid config key 'unroll.num_tasks': {error}") from error
    estimator = make_estimator(cfg.estimator.name, cfg.estimator.num_pairs, cfg.estimator.sigma)
    trainer = MetaTrainer(learned, pool, estimator, outer_lr=cfg.outer.lr,
                          clip_norm=cfg.outer.clip_norm, seed=cfg.seed)
    return held_out, learned, trainer
