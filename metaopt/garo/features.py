"""GARO's controller inputs and recurrent state, defined once for every path that computes them.

The meta path (``rule``: tensors with a graph, under ``vmap``) and the runtime path (``runtime``
and ``controller_host``: host floats) both build the controller's inputs from the functions
here, given their own elementary operations (``TENSOR_OPS`` or ``HOST_OPS``), and both lay out
the recurrent state by ``GLOBAL_STATE``. Adding a controller input is a change to this module
(``SIGNAL_FEATURES``, ``signal_row``, ``validity``) plus its test; the controller's input size
follows from ``NUM_SIGNAL_FEATURES``.

Per segment ``s`` the raw signals, in ``SIGNAL_FEATURES`` order, are::

    log ‖g‖_s − ref,  Δ log ‖g‖_s,  symlog L,  Δ symlog L,  log(‖Δθ_{t−1}‖_s / ‖θ_{t−1}‖_s)

with ``symlog L = sign(L)·log1p|L|``; ``ref`` is 0 for the original features and ``log ‖g_0‖_s`` for
``features="relative"``, which also divides ``L`` by ``|L_0|`` (so a loss ``c·L`` gives the same
inputs) and adds the training progress ``[min(t/T, 1), T known]`` (VeLO's input). The controller
normalises each signal by West's running (EMA) mean and variance, frozen where it is missing
(``ema_normalise``), and appends the step embedding ``sin/cos(2^-k·log1p t)``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch

SIGNAL_FEATURES = ("log_grad_norm", "delta_log_grad_norm", "symlog_loss", "delta_symlog_loss",
                   "log_update_ratio")
NUM_SIGNAL_FEATURES = len(SIGNAL_FEATURES)
#: ``"seed"``: the raw features; ``"relative"``: invariant to the loss's scale, plus progress
FEATURE_SETS = ("seed", "relative")
#: the fixed schedule the controller's lr_t is multiplied by (``lr_prior``)
LR_SCHEDULES = ("constant", "cosine")
NUM_PROGRESS_INPUTS = 2  # [min(t/T, 1), 1 if T is known]
TINY = 1e-12  # keeps log-norms finite at zero gradients / parameters
TINY_LOSS = 1e-30  # |L_0| guard of the relative loss feature (a loss of exactly 0)
VARIANCE_GUARD = 1e-8  # added to the running variance before its square root
DISTANCE_FLOOR = 1e-4  # DoG's r_ε = 1e-4·(1 + ‖θ_0‖), per coordinate
TINY_L1 = 1e-30  # ‖s‖₁ guard of Prodigy's ratio (s = 0 only where r = 0 too)

#: The recurrent state's global entries and their shapes (``S`` segments, ``F`` signals, ``H``
#: hidden units); ``step`` is an int64 count, everything else is in the controller's dtype.
GLOBAL_STATE = {
    "hidden": "(S, H)", "feature_mean": "(S, F)", "feature_var": "(S, F)",
    "step": "()", "loss_seen": "()",
    "prev_log_grad_norm": "(S,)", "prev_symlog_loss": "(S,)", "prev_update_ratio": "(S,)",
    "lr": "(S,)", "momentum": "(S,)", "weight_decay": "(S,)",
    # features="relative" only: log ‖g_0‖_s, |L_0|, the horizon T (0: unknown)
    "ref_log_grad_norm": "(S,)", "ref_loss": "()", "horizon": "()",
    # scale="distance" only: r̄_t, the running max displacement (metaopt.garo.rule)
    "distance_max": "(S,)",
    # scale="prodigy" only: d_t used by the last step and Prodigy's numerator r_t
    "prodigy_d": "(S,)", "prodigy_numerator": "(S,)",
}
#: Entries ``GARORule.init`` adds that never change during a run: each tensor's element count
#: (``N`` tensors; scale-free rules), read where the step size needs n_s, so that a vectorised
#: meta-batch that pads the run's tensors with zeros leaves its step unchanged. The runtime
#: counts its tensors' elements itself and keeps them out of its host state.
RUN_CONSTANTS = {"tensor_numel": "(N,)"}
RELATIVE_KEYS = ("ref_log_grad_norm", "ref_loss", "horizon")
#: the global entries each step-size scale adds (``metaopt.garo.rule.SCALES``)
SCALE_KEYS = {"none": (), "distance": ("distance_max",),
              "prodigy": ("prodigy_d", "prodigy_numerator")}
#: the per-tensor buffers each scale adds: the displacement θ − θ_0, Prodigy's weighted Σ g
SCALE_BUFFERS = {"none": (), "distance": ("displacement",),
                 "prodigy": ("displacement", "prodigy_sum")}
OPTIONAL_KEYS = RELATIVE_KEYS + tuple(k for keys in SCALE_KEYS.values() for k in keys)
#: the entries holding one float per segment that every configuration has
SEGMENT_KEYS = tuple(k for k, shape in GLOBAL_STATE.items()
                     if shape == "(S,)" and k not in OPTIONAL_KEYS)


def state_keys(relative: bool, scale: str) -> tuple[str, ...]:
    """The global entries of a state for these options, in ``GLOBAL_STATE`` order."""
    others = {k for name, keys in SCALE_KEYS.items() if name != scale for k in keys}
    return tuple(k for k in GLOBAL_STATE if (relative or k not in RELATIVE_KEYS)
                 and k not in others)


def _host_log(x: float) -> float:
    """``math.log`` that, like ``torch.log``, returns NaN / ±inf instead of raising."""
    if 0 < x < math.inf:
        return math.log(x)
    return math.nan if x != x or x < 0 else (math.inf if x > 0 else -math.inf)


def _host_clamp(x: float, low=None, high=None) -> float:
    x = x if low is None else max(x, low)
    return x if high is None else min(x, high)


#: the elementary operations of each path: tensors (with graphs, under vmap) and host floats
TENSOR_OPS = SimpleNamespace(log=torch.log, log1p=torch.log1p, sqrt=torch.sqrt, cos=torch.cos,
                             clamp=lambda x, low=None, high=None: x.clamp(low, high),
                             maximum=torch.maximum)
HOST_OPS = SimpleNamespace(log=_host_log, log1p=math.log1p, sqrt=math.sqrt, cos=math.cos,
                           clamp=_host_clamp, maximum=max)


def signal_row(log_grad_norm, ref_log_grad_norm, prev_log_grad_norm, symlog_loss,
               prev_symlog_loss, prev_update_ratio, ops) -> list:
    """The raw signals of one step, in ``SIGNAL_FEATURES`` order (module docstring)."""
    return [log_grad_norm - ref_log_grad_norm, log_grad_norm - prev_log_grad_norm, symlog_loss,
            symlog_loss - prev_symlog_loss, ops.log(prev_update_ratio + TINY)]


def validity(one, started, has_loss, had_loss) -> list:
    """Which signals exist this step (``SIGNAL_FEATURES`` order): a change needs a previous
    step, the loss signals a loss (a closure or ``step(loss=...)``)."""
    return [one, started, has_loss, has_loss * had_loss, started]


def progress(step, horizon, known, ops) -> list:
    """``[min(t/T, 1), T known]``: the training progress input of relative features."""
    return [ops.clamp(step / ops.clamp(horizon, 1.0), high=1.0) * known, known]


def lr_prior(schedule: str, fraction, known, ops):
    """The schedule the controller's lr_t is multiplied by, from the progress input
    ``[p, known] = [min(t/T, 1), T known]``: 1 for ``"constant"``; for ``"cosine"``::

        c_t = ½(1 + cos(π·p))   when T is known,   1 when it is not

    SGDR's annealing without restarts (Loshchilov & Hutter 2017): what
    ``CosineAnnealingLR(T_max=T)`` does to a learning rate, and what turns Prodigy into the
    strongest tuning-free baseline of the benchmark. The learned lr_t then corrects a schedule
    that is already sound instead of discovering one."""
    if schedule == "constant":
        return 1.0
    return 1 - known * (1 - ops.cos(math.pi * fraction)) / 2


def symlog(x, ops=TENSOR_OPS):
    """sign(x)·log1p|x|: a log scale that accepts the negative losses of likelihood objectives."""
    if ops is HOST_OPS:
        return math.copysign(math.log1p(abs(x)), x)
    return torch.sign(x) * torch.log1p(x.abs())


def step_frequencies(num_frequencies: int) -> list[float]:
    """``ω_k = 2^-k``: the step embedding is ``sin/cos(ω_k·log1p t)``, bounded and fine early."""
    return [2.0 ** -k for k in range(num_frequencies)]


def ema_normalise(x, mean, var, beta: float, clip: float, ops):
    """West's EMA of mean and variance updated by ``x``, and ``x`` normalised by them:
    ``(clip((x − m') / √(v' + 1e-8), ±clip), m', v')``. Callers freeze the statistics (and zero
    the output) where ``x`` is missing."""
    delta = x - mean
    new_mean = mean + (1 - beta) * delta
    new_var = beta * (var + (1 - beta) * delta * delta)
    z = ops.clamp((x - new_mean) / ops.sqrt(new_var + VARIANCE_GUARD), -clip, clip)
    return z, new_mean, new_var


def distance_floor(param_rms):
    """DoG's ``r_ε = 10⁻⁴·(1 + ‖θ_0‖)``, per coordinate: ``r̄_0`` of scale-free GARO."""
    return DISTANCE_FLOOR * (1 + param_rms)


def distance_step_size(lr_t, distance_max, step, ops):
    """Scale-free GARO's step size ``lr_t · d_t`` with DoG's ``d_t = r̄_t / √(t + 1)``."""
    return lr_t * distance_max / ops.sqrt(step + 1)


def prodigy_beta(beta2: float) -> float:
    """Prodigy's β₃ = √β₂: the decay of its numerator ``r`` and of its weighted sum ``s``."""
    return math.sqrt(beta2)


def prodigy_estimate(d_prev, numerator, l1_norm, ops):
    """Prodigy's (Mishchenko & Defazio 2023) ``d_t = max(d_{t−1}, r_{t−1} / ‖s_{t−1}‖₁)``, the
    lower bound on the distance to the solution that D-Adaptation introduced, per coordinate.

    With ``λ_k = a_k·d_k`` (the step size taken times the scale it used) and β₃ = √β₂::

        r_k = β₃ r_{k−1} + λ_k ⟨g_k, θ_0 − θ_k⟩,     s_k = β₃ s_{k−1} + λ_k g_k

    While gradients keep their direction ``⟨g_k, θ_0 − θ_k⟩ ≈ ‖g_k‖₁·Σ_j a_j``, so ``d`` grows
    by a factor ``1 + lr_t`` a step; it stops growing once the iterates pass the minimiser.
    """
    return ops.maximum(d_prev, numerator / (l1_norm + TINY_L1))
