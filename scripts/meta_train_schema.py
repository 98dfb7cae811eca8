"""The schema of ``scripts/meta_train.py``'s configuration: one dataclass per section.

``MetaTrainConfig`` is the whole file (``task``, ``controller``, ``hybrid``, ``unroll``,
``meta_loss``, ``estimator``, ``outer``, ``validation``, ``evaluation``, ``wandb`` and the
top-level keys); OmegaConf merges the YAML and the ``key=value`` overrides into it, so an unknown
key or a value of the wrong type is refused by name (``scripts.meta_train_config.load_config``,
which also holds the checks a type cannot express). Each field's comment says what it means.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskConfig:
    name: str = "quadratic"  # a name from tasks.names()
    kwargs: dict[str, Any] = field(default_factory=dict)  # tasks.get(name, **kwargs)


@dataclass
class ControllerConfig:
    kind: str = "garo"  # garo | hybrid (switching policy) | hybrid_garo (policy + GARO jointly)
    hidden_size: int = 16
    num_step_frequencies: int = 3
    init_lr: float = 0.01  # the untrained controller is SGD(lr=init_lr) (the GARO specification:
    # untrained = plain SGD)
    init_momentum: float = 0.0
    init_weight_decay: float = 1.0e-8
    direction: str = "sgd"  # sgd | adam
    feature_gradients: bool = False  # differentiate through the controller's input features
    features: str = "seed"  # seed | relative (loss-scale invariant + training progress)
    scale: str = "none"  # none | distance | prodigy (lr_t multiplies DoG's / Prodigy's estimate)
    lr_schedule: str = "constant"  # constant | cosine (lr_t times cosine annealing over T)
    init_from: str | None = None  # a GARO checkpoint (name, file, dir) whose weights start the run


@dataclass
class HybridConfig:
    """The hybrid GD-ODE optimizer trained by controller.kind=hybrid|hybrid_garo
    (scripts/hybrid_train.py builds it; metaopt.hybrid.rule documents each key)."""
    gd: str = "sgd"  # sgd | adam | rmsprop (hybrid_garo: GARO's controller.direction instead)
    lr: float = 0.05  # the GD module's lr (hybrid); the ODE step is ode_lr
    momentum: float = 0.9
    weight_decay: float = 0.0
    ode: str = "rk4"  # a fixed tableau, bosh3/dopri5, gradient_flow, nesterov_flow
    ode_lr: float = 0.05
    ode_scale: float = 1.0  # hybrid_garo: h = ode_scale·a_t·ρ_t from GARO's step size a_t
    garo_features: bool = True  # hybrid_garo: the policy also reads GARO's momentum and lr
    train_garo: bool = True  # hybrid_garo: false trains the switch alone over a fixed GARO
    ode_cfl: float = 1.0  # ODE step capped at ode_cfl / curvature (0: off)
    min_dwell: int = 1  # hard decisions (ES / runtime): steps before the mode may change
    window: int = 10  # stagnation window
    policy_hidden: int = 16
    init_ode_probability: float = 0.05  # the untrained policy: (almost) plain GD
    gate: str = "auto"  # relaxed (blend by p) | straight_through (hard forward, dp backward) |
    # hard (ES/PES only) | auto (bptt: straight_through, es/pes: hard)
    compute_cost: float = 0.0  # meta-loss charge per extra gradient evaluation per step


@dataclass
class UnrollConfig:
    num_tasks: int = 4  # inner runs per meta-batch
    truncation_length: int = 20  # inner steps per meta-step (truncated BPTT / ES)
    schedule: str = "log_uniform"  # constant | log_uniform: total inner horizon of each run
    horizon: int = 100  # constant schedule
    min_horizon: int = 50  # log_uniform schedule
    max_horizon: int = 200
    second_order: bool = True  # backpropagate through the inner gradient (create_graph)
    engine: str = "loop"  # loop | vectorised (same-shape runs as one vmapped program)
    compile: bool = False  # vectorised: torch.compile the batched rule step (benchmark: meta)


@dataclass
class MetaLossConfig:
    kind: str = "mean"  # mean | final | log
    split: str = "train"  # train | test
    log_eps: float = 1.0e-6
    divergence_threshold: float = 1000.0  # normalised loss beyond this resets the inner run


@dataclass
class EstimatorConfig:
    name: str = "bptt"  # bptt | es
    num_pairs: int = 8  # es: antithetic pairs per meta-step
    sigma: float = 0.01  # es: perturbation scale


@dataclass
class OuterConfig:
    lr: float = 3.0e-3  # Adam on the controller weights
    clip_norm: float = 1.0  # meta-gradient global-norm clipping


@dataclass
class ValidationConfig:
    every: int = 50  # outer steps between held-out validations (and at the start and end)
    num_tasks: int = 8  # held-out task seeds 2**30 + i (training draws below 2**30)
    horizon: int = 100  # untruncated inner steps per held-out task
    kind: str = "mean"
    split: str = "test"
    # held-out validation and the final table on another family (tasks.get(task, **task_kwargs));
    # "" = the training family's held-out seeds
    task: str = ""
    task_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineConfig:
    name: str = "adam"  # a metaopt.evaluation optimizer name
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    tune_lr: bool = True  # lr tuned on the training distribution's tasks, never the held-out ones


@dataclass
class EvaluationConfig:
    enabled: bool = True  # the final table: learned vs untrained GARO vs baselines (harness)
    steps: int = 100
    num_tasks: int = 8  # the held-out validation seeds
    target: float = 0.01  # steps to reach this fraction of the initial optimality gap
    tuning_steps: int = 100
    tuning_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    baselines: list[BaselineConfig] = field(default_factory=lambda: [
        BaselineConfig("adam"), BaselineConfig("sgd_momentum", {"momentum": 0.9})])


@dataclass
class WandbConfig:
    mode: str = "offline"  # disabled | offline | online
    project: str = "metaopt"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class MetaTrainConfig:
    # "" = runs/<config file stem>[-<override>,...]: every experiment gets its own run directory
    out_dir: str = ""
    seed: int = 0
    steps: int = 200  # total outer iterations; raise it and re-run to train further
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint_every: int = 50
    num_threads: int = 0  # torch.set_num_threads when > 0
    progress: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)
    meta_loss: MetaLossConfig = field(default_factory=MetaLossConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
