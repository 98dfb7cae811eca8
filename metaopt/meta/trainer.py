"""The outer loop: Adam on the controller's weights from an estimator's meta-gradients.

One ``MetaTrainer.step``::

    pool.refresh(φ, generator)                      # new tasks where runs finished or were reset
    ĝ = estimator.estimate(pool, φ, generator)      # advances every run one truncation
    ĝ ← Σ_r |L_r|·ĝ_r / Σ_r |L_r|                   # under torch.distributed (torchrun):
                                                    # live-run-weighted over the ranks
    ĝ ← ĝ · min(1, clip_norm / ‖ĝ‖)                 # meta-gradient clipping
    φ ← Adam(φ, ĝ)                                  # skipped if ‖ĝ‖ is not finite
                                                    # or every inner run diverged

Under torch.distributed with a sharded pool (``InnerRunPool(..., shard=(rank, world))``, what
``scripts/meta_train.py`` builds under torchrun) every rank seeds the same generator and unrolls
its share of one meta-batch: the combined meta-gradient is the 1-process one of the same runs
(``metaopt.meta.distributed``). With an unsharded pool each process draws its own tasks (its
generator is seeded with ``seed + 1_000_003·rank``). Either way all ranks apply the same update,
so their controllers stay identical. ``state_dict`` holds everything a bit-exact resume needs:
controller weights, Adam state, the generator's state, the in-flight inner runs (this rank's),
the estimator's own state (PES particles) and the counters.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .distributed import all_reduce_mean, distributed_world, reduce_estimate
from .estimators import GradientEstimator
from .inner_runs import InnerRunPool
from .learned import LearnedRule
from .outer_adam import OuterAdam
from .training_state import load_training_state, save_training_state  # noqa: F401 (re-export)

__all__ = ["MetaTrainer", "all_reduce_mean", "distributed_world", "load_training_state",
           "save_training_state"]


class MetaTrainer:
    """Meta-trains ``learned.module`` on ``pool`` with ``estimator`` (see module docstring).

    Args:
        learned: the learned rule whose ``module`` parameters are trained.
        pool: the truncated inner runs.
        estimator: a ``GradientEstimator``.
        outer_lr: Adam's learning rate on ``φ``.
        clip_norm: the meta-gradient's global 2-norm is clipped to this (``inf``: no clipping).
        seed: seeds the trainer's generator (tasks, horizons, batch seeds, ES noise).
        statistics_decay: per-step EMA decay of the feature statistics written into the
            controller's initial-statistics buffers (``_absorb_feature_statistics``).
    """

    def __init__(self, learned: LearnedRule, pool: InnerRunPool, estimator: GradientEstimator,
                 *, outer_lr: float = 1e-3, clip_norm: float = 1.0, seed: int = 0,
                 betas: tuple[float, float] = (0.9, 0.999), statistics_decay: float = 0.99):
        if not outer_lr > 0:
            raise ValueError(f"outer_lr: must be > 0, got {outer_lr!r}")
        if not clip_norm > 0:
            raise ValueError(f"clip_norm: must be > 0, got {clip_norm!r}")
        self.learned, self.pool, self.estimator = learned, pool, estimator
        self.clip_norm = float(clip_norm)
        rank, world = distributed_world()
        shard = getattr(pool, "shard", (0, 1))
        if world > 1 and shard[1] > 1 and tuple(shard) != (rank, world):
            raise ValueError(f"pool: sharded as rank {shard[0]} of {shard[1]}, but this process "
                             f"is rank {rank} of {world}")
        # a sharded meta-batch is drawn by every rank alike; unsharded pools draw their own tasks
        offset = 0 if shard[1] > 1 else 1_000_003 * rank
        self.generator = torch.Generator().manual_seed(int(seed) + offset)
        self.optimizer = OuterAdam(  # (a frozen part of the module is not trained)
            [p for p in learned.module.parameters() if p.requires_grad], lr=outer_lr, betas=betas)
        self.statistics_decay = float(statistics_decay)
        self.step_count, self.resets, self.skipped_updates = 0, 0, 0

    def step(self) -> dict[str, Any]:
        """One meta-iteration; returns its metrics (floats and ints)."""
        weights = self.learned.meta_parameters()
        started = self.pool.refresh(weights, self.generator)
        estimate = self.estimator.estimate(self.pool, weights, self.generator)
        total = reduce_estimate(estimate.grads, estimate.live_runs, estimate.loss,
                                estimate.resets, started, estimate.traces)
        grads = total["grads"]
        params = {name: p for name, p in self.learned.module.named_parameters()
                  if p.requires_grad}
        for name, p in params.items():
            p.grad = grads[name].detach().clone().to(p.dtype)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), self.clip_norm)
        finite = bool(torch.isfinite(norm))
        if finite and total["live_runs"] > 0:  # the same on every rank
            self._guarded_update(params)
        else:  # a non-finite meta-gradient (or one from no surviving run) never reaches φ or Adam
            self.skipped_updates += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._absorb_feature_statistics()
        self.step_count += 1
        self.resets += total["resets"]
        metrics = {"step": self.step_count, "meta_loss": total["loss"],
                   "meta_grad_norm": float(norm) if finite else math.inf,
                   "resets": self.resets, "skipped_updates": self.skipped_updates,
                   "live_runs": total["live_runs"], "new_runs": total["new_runs"]}
        metrics.update({f"{k}_t": v for k, v in total["traces"].items()})
        return metrics

    @torch.no_grad()
    def _absorb_feature_statistics(self) -> None:
        """EMA (decay ``statistics_decay``) of the live runs' feature statistics into the
        controller's initial-statistics buffers (``LearnedRule.feature_statistics``)."""
        collect = getattr(self.learned, "feature_statistics", None)
        live = getattr(self.pool, "live_states", None)
        if collect is None or live is None:
            return
        sums = all_reduce_mean(collect(live()))
        count = float(sums.pop("count"))
        if count == 0:
            return
        buffers = dict(self.learned.module.named_buffers())
        for name, total in sums.items():
            mean = total / count
            if bool(torch.isfinite(mean).all()):
                buffers[name].lerp_(mean.to(buffers[name]), 1 - self.statistics_decay)

    def _guarded_update(self, params: Mapping[str, Tensor]) -> None:
        """Adam's step, undone (weights and Adam state) and counted as skipped when it leaves a
        non-finite weight: a finite gradient can still overflow (a huge lr, a corrupted state)."""
        before = {name: p.detach().clone() for name, p in params.items()}
        state = {p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
                 for p, s in self.optimizer.state.items()}
        self.optimizer.step()
        if all(bool(torch.isfinite(p).all()) for p in params.values()):
            return
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(before[name])
        self.optimizer.state.clear()
        self.optimizer.state.update(state)
        self.skipped_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "resets": self.resets,
                "skipped_updates": self.skipped_updates,
                "controller": {k: v.clone() for k, v in self.learned.module.state_dict().items()},
                "outer_optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "pool": self.pool.state_dict(),
                "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.learned.module.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["outer_optimizer"])
        self.generator.set_state(state["generator"])
        self.pool.load_state_dict(state["pool"])
        self.estimator.load_state_dict(state.get("estimator", {}))  # absent in older states
        self.step_count = int(state["step"])
        self.resets, self.skipped_updates = int(state["resets"]), int(state["skipped_updates"])
