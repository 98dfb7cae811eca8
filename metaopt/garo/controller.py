"""The GARO controller: a GRU that turns global gradient features into ``lr_t, mom_t, wd_t``.

GARO (Global Adaptive Recurrent Optimizer). Per step ``t`` and segment
``s`` (one segment for GARO's original global controller; one per group / tensor for its "layer-wise
recurrence" next step)::

    z_t  = clip(normalise(x_t; running EMA statistics), ±clip)    (masked where x_t is unavailable)
    h_t  = GRUCell([z_t, valid_t, step_embedding(t)], h_{t-1})
    lr_t  = softplus(W_lr  h_t + b_lr) · c_t
    mom_t = tanh    (W_mom h_t + b_mom)
    wd_t  = softplus(W_wd  h_t + b_wd)

The heads are exactly GARO's original ones. They start with zero weights and biases
``b_lr = softplus⁻¹(init_lr)``, ``b_mom = atanh(init_momentum)``,
``b_wd = softplus⁻¹(init_weight_decay)`` (defaults 0.01, 0 and 1e-8, i.e. ``b_wd ≈ −18.42``), so
the untrained controller emits exactly those constants whatever it reads: plain SGD with lr 0.01,
no momentum and a negligible decay, as GARO's initialisation asks. The weight-decay bias is pushed
that far down so ``lr·wd ≈ 1e-10`` cannot move a float32 parameter, yet its gradient
(sigmoid(b_wd) ≈ 1e-8) stays non-zero for meta-training.

The raw signal features (computed by ``metaopt.garo.rule``) are, per segment, ``SIGNAL_FEATURES``:
log gradient norm, its change, symlog loss (``sign(L)·log1p|L|``), its change, and the log ratio
of the previous update's norm to the parameter norm. Their running EMA mean/variance are recurrent
state (``feature_mean``, ``feature_var``) that start from the buffers ``init_feature_mean`` /
``init_feature_var``; those buffers are saved in checkpoints, so a meta-trainer can store the
statistics it saw and a deployed optimizer starts from them.

``features="relative"`` (the general checkpoint's choice) feeds the same five signals
measured relative to the run's start — ``log ‖g_t‖ − log ‖g_0‖`` and ``symlog(L_t / |L_0|)`` — so a
loss multiplied by any ``c > 0`` gives the controller identical inputs, and adds the training
progress ``(min(t/T, 1), [T known])`` (VeLO's ``num_training_steps`` input) next to the step
embedding, un-normalised, so the controller can learn to anneal.

``lr_schedule="cosine"`` (relative features only) multiplies lr_t by a fixed cosine annealing
over the known horizon, ``c_t = ½(1 + cos(π·min(t/T, 1)))`` (``metaopt.garo.features.lr_prior``;
``c_t = 1`` for the default ``"constant"`` and whenever T is unknown): the untrained controller is
then the base optimizer under ``CosineAnnealingLR(T_max=T)``, and meta-training learns
corrections to that schedule.

The module is pure: ``forward`` reads only its arguments, weights and buffers, and returns the new
recurrent state instead of keeping it, so ``torch.func.functional_call`` can swap its weights
(the weights are data, the optimizer is built from them: learned_optimization's
``theta`` / ``opt_fn`` split).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import (
    FEATURE_SETS,
    LR_SCHEDULES,
    NUM_PROGRESS_INPUTS,
    NUM_SIGNAL_FEATURES,
    SIGNAL_FEATURES,
    TENSOR_OPS,
    ema_normalise,
    lr_prior,
    step_frequencies,
)

__all__ = ["GAROController", "BoundController", "ControllerOutput", "inverse_softplus",
           "SIGNAL_FEATURES", "NUM_SIGNAL_FEATURES", "FEATURE_SETS"]


def inverse_softplus(y: float) -> float:
    """softplus⁻¹(y) = log(expm1(y)), exact for small y (where log(exp(y) − 1) cancels)."""
    if y <= 0:
        raise ValueError(f"softplus only reaches positive values, got {y!r}")
    return y + math.log(-math.expm1(-y))


class ControllerOutput(NamedTuple):
    """One controller step. Every tensor has a leading segment dimension ``S``."""
    lr: Tensor            # (S,)  softplus(W_lr h + b_lr)
    momentum: Tensor      # (S,)  tanh(W_mom h + b_mom)
    weight_decay: Tensor  # (S,)  softplus(W_wd h + b_wd)
    hidden: Tensor        # (S, H)
    feature_mean: Tensor  # (S, NUM_SIGNAL_FEATURES)
    feature_var: Tensor   # (S, NUM_SIGNAL_FEATURES)


class GAROController(nn.Module):
    """GRU hyperparameter controller (seed "Implementation Details").

    Args:
        hidden_size: GRU width ``H``.
        num_step_frequencies: ``K``; the step embedding is ``sin/cos(ω_k·log1p(t))``,
            ``ω_k = 2^-k``.
        init_lr, init_momentum, init_weight_decay: the constant outputs of the untrained controller.
        feature_decay: EMA decay ``β`` of the running feature statistics.
        feature_clip: normalised features are clipped to ``±feature_clip``.
        features: ``"seed"`` (raw features, the seed) or ``"relative"`` (loss-scale invariant
            features plus training progress; module docstring).
        generator: the source of the GRU's initial weights (default: a fresh one seeded with 0,
            so two untrained controllers are identical).
    """

    def __init__(self, hidden_size: int = 32, num_step_frequencies: int = 3,
                 init_lr: float = 0.01, init_momentum: float = 0.0,
                 init_weight_decay: float = 1e-8, feature_decay: float = 0.99,
                 feature_clip: float = 5.0, features: str = "seed",
                 lr_schedule: str = "constant", generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size: must be an int >= 1, got {hidden_size!r}")
        if not isinstance(num_step_frequencies, int) or num_step_frequencies < 0:
            raise ValueError(f"num_step_frequencies: must be an int >= 0, "
                             f"got {num_step_frequencies!r}")
        if not 0 < init_lr < math.inf:
            raise ValueError(f"init_lr: must be finite and > 0, got {init_lr!r}")
        if not -1 < init_momentum < 1:
            raise ValueError(f"init_momentum: must lie in (-1, 1), got {init_momentum!r}")
        if not 0 < init_weight_decay < math.inf:
            raise ValueError(f"init_weight_decay: must be > 0 (softplus never reaches 0), "
                             f"got {init_weight_decay!r}")
        if not 0 <= feature_decay < 1:
            raise ValueError(f"feature_decay: must lie in [0, 1), got {feature_decay!r}")
        if not feature_clip > 0 or not math.isfinite(feature_clip):
            raise ValueError(f"feature_clip: must be finite and > 0, got {feature_clip!r}")
        if features not in FEATURE_SETS:
            raise ValueError(f"features: must be one of {FEATURE_SETS}, got {features!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if lr_schedule != "constant" and features != "relative":
            raise ValueError(f"lr_schedule={lr_schedule!r} reads the training progress: it needs "
                             "features='relative'")
        self.hidden_size = hidden_size
        self.num_step_frequencies = num_step_frequencies
        self.init_lr, self.init_momentum = float(init_lr), float(init_momentum)
        self.init_weight_decay = float(init_weight_decay)
        self.feature_decay, self.feature_clip = float(feature_decay), float(feature_clip)
        self.features, self.lr_schedule = features, lr_schedule
        # input = normalised signals, their validity mask, the step embedding (, the progress)
        self.input_size = 2 * NUM_SIGNAL_FEATURES + 2 * num_step_frequencies \
            + (NUM_PROGRESS_INPUTS if features == "relative" else 0)
        self.cell = nn.GRUCell(self.input_size, hidden_size)
        self.head_lr = nn.Linear(hidden_size, 1)
        self.head_momentum = nn.Linear(hidden_size, 1)
        self.head_weight_decay = nn.Linear(hidden_size, 1)
        self.register_buffer("init_feature_mean", torch.zeros(NUM_SIGNAL_FEATURES))
        self.register_buffer("init_feature_var", torch.ones(NUM_SIGNAL_FEATURES))
        self.register_buffer("step_frequencies",
                             torch.tensor(step_frequencies(num_step_frequencies),
                                          dtype=torch.float32),
                             persistent=False)
        self.reset_parameters(generator)
        # moves, casts and loads bump this; the runtime's host copy of the weights
        # (metaopt.garo.controller_host) follows it and the weights' version counters
        self.weights_generation = 0

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GRU weights ~ U(±1/√H) (PyTorch's GRUCell rule, from an explicit generator); SGD
        heads."""
        if self.head_lr.weight.is_meta:  # a shape-only twin (checkpoint checks): no values, and
            return                         # meta arithmetic would import torch._dynamo (~2 s)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.cell.parameters():
            w.copy_(torch.rand(w.shape, generator=generator, dtype=w.dtype) * 2 * bound - bound)
        for head in (self.head_lr, self.head_momentum, self.head_weight_decay):
            head.weight.zero_()
        self.head_lr.bias.fill_(inverse_softplus(self.init_lr))
        self.head_momentum.bias.fill_(math.atanh(self.init_momentum))
        self.head_weight_decay.bias.fill_(inverse_softplus(self.init_weight_decay))

    def _apply(self, fn, recurse: bool = True):  # .to(), .double(), .cuda(): new tensors
        self.weights_generation = getattr(self, "weights_generation", 0) + 1
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.weights_generation += 1  # (assign=True replaces the parameters)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (JSON-serialisable)."""
        return dict(hidden_size=self.hidden_size, num_step_frequencies=self.num_step_frequencies,
                    init_lr=self.init_lr, init_momentum=self.init_momentum,
                    init_weight_decay=self.init_weight_decay, feature_decay=self.feature_decay,
                    feature_clip=self.feature_clip, features=self.features,
                    # (only when set: checkpoints without the key load as "constant")
                    **({} if self.lr_schedule == "constant" else
                       {"lr_schedule": self.lr_schedule}))

    def initial_state(self, num_segments: int = 1, device=None) -> dict[str, Tensor]:
        """Recurrent state before step 0: ``h = 0`` and the stored feature statistics."""
        ref = self.head_lr.weight
        device = ref.device if device is None else device
        return {
            "hidden": torch.zeros(num_segments, self.hidden_size, dtype=ref.dtype, device=device),
            "feature_mean": self.init_feature_mean.to(device=device, dtype=ref.dtype)
            .expand(num_segments, -1).clone(),
            "feature_var": self.init_feature_var.to(device=device, dtype=ref.dtype)
            .expand(num_segments, -1).clone(),
        }

    def step_embedding(self, step: Tensor, num_segments: int) -> Tensor:
        """``[sin(ω_k log1p t), cos(ω_k log1p t)]_k``: bounded, resolves early steps finely.
        ``step``: one count (0-d), or one per segment (``(S,)``: stacked runs, one segment each,
        ``metaopt.garo.stacked``)."""
        phase = torch.log1p(step.to(self.step_frequencies.dtype))
        phase = (phase.unsqueeze(-1) if phase.dim() else phase) * self.step_frequencies
        emb = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)
        return emb.to(self.head_lr.weight.dtype).expand(num_segments, -1)

    def forward(self, signal: Tensor, valid: Tensor, step: Tensor, hidden: Tensor,
                feature_mean: Tensor, feature_var: Tensor,
                progress: Tensor | None = None) -> ControllerOutput:
        """One recurrent step.

        Args:
            signal: (S, NUM_SIGNAL_FEATURES) raw features, in ``SIGNAL_FEATURES`` order.
            valid: (S, NUM_SIGNAL_FEATURES) 1 where the feature exists this step (no loss without a
                closure, no change at the first step); invalid features neither update the
                statistics nor reach the GRU (they enter as 0, flagged by the mask).
            step: the number of steps taken before this one: a 0-d tensor, or ``(S,)`` one per
                segment (stacked runs of one segment each).
            hidden, feature_mean, feature_var: the previous recurrent state.
            progress: (S, NUM_PROGRESS_INPUTS) ``[min(t/T, 1), T known]``; required (and only
                read) with ``features="relative"``.
        """
        dtype = self.head_lr.weight.dtype
        signal, valid = signal.to(dtype), valid.to(dtype)
        mask = valid > 0
        x = torch.where(mask, signal, torch.zeros_like(signal))
        z, new_mean, new_var = ema_normalise(x, feature_mean, feature_var, self.feature_decay,
                                             self.feature_clip, TENSOR_OPS)
        # the statistics are frozen, and the input 0, where the feature is missing
        new_mean = torch.where(mask, new_mean, feature_mean)
        new_var = torch.where(mask, new_var, feature_var)
        z = torch.where(mask, z, torch.zeros_like(z))
        parts = [z, valid, self.step_embedding(step, signal.shape[0])]
        if self.features == "relative":
            if progress is None:
                raise ValueError("progress: required by a controller with features='relative'")
            parts.append(progress.to(dtype))
        inputs = torch.cat(parts, dim=1)
        h = self.cell(inputs, hidden)
        lr = F.softplus(self.head_lr(h)).squeeze(1)
        if self.lr_schedule != "constant":
            progress = progress.to(dtype)
            lr = lr * lr_prior(self.lr_schedule, progress[:, 0], progress[:, 1], TENSOR_OPS)
        return ControllerOutput(
            lr=lr,
            momentum=torch.tanh(self.head_momentum(h)).squeeze(1),
            weight_decay=F.softplus(self.head_weight_decay(h)).squeeze(1),
            hidden=h, feature_mean=new_mean, feature_var=new_var)


class BoundController:
    """A controller module evaluated with other weights: ``functional_call`` behind the same API.

    ``BoundController(module, weights)(…)`` is ``torch.func.functional_call(module, weights, …)``;
    ``initial_state`` reads the feature-statistics buffers from ``weights`` when they are there.
    This is how a meta-trainer drives ``GARORule`` with meta-parameters ``θ`` it owns.
    """

    def __init__(self, module: GAROController, weights: dict[str, Tensor]):
        self.module, self.weights = module, weights

    def __call__(self, *args) -> ControllerOutput:
        return torch.func.functional_call(self.module, self.weights, args)

    @property
    def features(self) -> str:
        return self.module.features

    @property
    def init_lr(self) -> float:
        return self.module.init_lr

    def initial_state(self, num_segments: int = 1, device=None) -> dict[str, Tensor]:
        state = self.module.initial_state(num_segments, device)
        for key in ("feature_mean", "feature_var"):
            if f"init_{key}" in self.weights:
                state[key] = self.weights[f"init_{key}"].to(state[key]) \
                    .expand(num_segments, -1).clone()
        ref = self.weights.get("head_lr.weight")
        if ref is not None:
            state = {k: v.to(ref.dtype) for k, v in state.items()}
        return state
