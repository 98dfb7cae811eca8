"""Meta-training engine: differentiable truncated unrolls over a task distribution.

* ``unroll``: one inner segment on functional parameters through the shared rule code;
* ``inner_runs``: a meta-batch of truncated inner runs with resets on divergence;
* ``vectorised``: the same pool with same-shape runs advanced as one vmapped program
  (``batched_unroll``: one segment of stacked runs);
* ``truncation``: horizon schedules; ``meta_losses``: how segments are scored;
* ``estimators``: truncated BPTT, antithetic ES and persistent ES behind ``GradientEstimator``;
* ``trainer``: ``MetaTrainer`` (Adam on the controller, clipping, all-reduce, resumable state);
* ``distributed``: the meta-batch sharded over torch.distributed processes (torchrun), combined
  into the 1-process meta-gradient; ``training_state``: the resumable state file;
* ``validation``: held-out meta-loss of a controller.
"""
from .distributed import leave_process_group
from .estimators import (
                         ESTIMATORS,
                         AntitheticES,
                         GradientEstimator,
                         MetaGradient,
                         PersistentES,
                         TruncatedBPTT,
                         make_estimator,
)
from .hybrid_learned import HybridGAROLearnedRule, HybridLearnedRule
from .inner_runs import TRAIN_TASK_SEED_LIMIT, InnerRunPool
from .learned import GAROLearnedRule, LearnedRule, detach_state
from .meta_losses import META_LOSS_KINDS, SPLITS, MetaLoss
from .trainer import (
                         MetaTrainer,
                         all_reduce_mean,
                         distributed_world,
                         load_training_state,
                         save_training_state,
)
from .truncation import (
                         TRUNCATION_SCHEDULES,
                         ConstantHorizon,
                         LogUniformHorizon,
                         make_horizon,
                         segment_length,
)
from .unroll import SegmentResult, batch_generator, unroll_segment
from .validation import held_out_seeds, validate
from .vectorised import VectorisedPool

__all__ = [
    "ESTIMATORS", "META_LOSS_KINDS", "SPLITS", "TRAIN_TASK_SEED_LIMIT", "TRUNCATION_SCHEDULES",
    "AntitheticES", "ConstantHorizon", "GAROLearnedRule", "HybridGAROLearnedRule",
    "HybridLearnedRule", "GradientEstimator", "InnerRunPool",
    "LearnedRule", "LogUniformHorizon", "MetaGradient", "MetaLoss", "MetaTrainer", "PersistentES",
    "SegmentResult", "TruncatedBPTT", "VectorisedPool", "all_reduce_mean", "batch_generator",
    "detach_state", "distributed_world", "held_out_seeds", "leave_process_group",
    "load_training_state", "make_estimator", "make_horizon", "save_training_state",
    "segment_length", "unroll_segment", "validate",
]
