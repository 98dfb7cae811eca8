"""The hybrid's switch on host floats: what the GARO GD path (``metaopt.hybrid.garo_runtime``)
decides with.

Twins, on the host, of the switch's definitions (which stay the reference, with the formulas):

* ``host_features``: ``metaopt.hybrid.criteria``'s ``FEATURES`` (``switch_features``) with the
  relative progress ``π = (L_{t−W} − L_t)/(|L_{t−W}| + |L_t|)`` (``relative_progress``);
* ``host_garo_inputs``: GARO's emitted state ``x_garo = [μ_{t−1}, log(m_{t−1}/lr₀)]``
  (``metaopt.hybrid.garo_module.garo_features``) from GARO's host state (``HostState``);
* ``HostGate``: the gate ``p = P(ODE)`` — a stock ``SwitchingPolicy``
  ``p = sigmoid(w₂ᵀ tanh(W₁ clip((x − μ)/σ) + b₁) + b₂)`` in NumPy (float64, from the module's
  weights, cached while they stay), a ``ConstantSwitch`` as its constant, any other gate through
  its own ``gate`` on a tensor.

The host twins compute in float64 from values rounded to the reference's dtypes, so they agree
with the tensors up to rounding; a learned gate within ``MARGIN`` of 0.5 is left undecided (the
reference path decides it). ``tests/hybrid/test_garo_runtime.py`` proves the whole GD path equal
to the reference in float64.
"""
from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from ..garo.features import HOST_OPS, distance_step_size
from ..garo.host_state import HostState, round_to
from .criteria import _LOG_CLIP, _TINY, ConstantSwitch
from .garo_module import AugmentedGate
from .policy import PolicyGate, SwitchingPolicy

__all__ = ["MARGIN", "HostGate", "host_features", "host_garo_inputs", "host_progress"]

#: a learned gate this close to 0.5 is decided by the reference path (its own dtype)
MARGIN = 1e-4


def _clamp(x: float, low: float, high: float) -> float:
    return x if low <= x <= high else (low if x < low else high if x > high else x)  # NaN stays


def host_progress(losses: Sequence[float], seen: int) -> float:
    """``relative_progress`` of ``metaopt.hybrid.criteria`` on host floats."""
    if seen < len(losses):
        return 1.0
    newest, oldest = losses[-1], losses[0]
    value = (oldest - newest) / (abs(oldest) + abs(newest) + _TINY)
    return value if math.isfinite(value) else 1.0


def host_features(grad_norm: float, grad_norm0: float, curvature: float, stability_lr: float,
                  progress: float, mode: float, dwell: float) -> list[float]:
    """``switch_features`` of ``[log(‖g‖/‖g₀‖), log(lr·κ), π, mode, log1p(dwell)]``."""
    ratio = HOST_OPS.log(grad_norm + _TINY) - HOST_OPS.log(grad_norm0 + _TINY)
    stability = HOST_OPS.log(curvature * stability_lr + _TINY)
    return [_clamp(ratio, -_LOG_CLIP, _LOG_CLIP), _clamp(stability, -_LOG_CLIP, _LOG_CLIP),
            _clamp(progress, -1.0, 1.0), mode, math.log1p(dwell)]


def host_garo_inputs(host: HostState, scale: str, controller, names: Sequence[str]
                     ) -> list[float]:
    """``garo_features`` from GARO's host state, in the order of ``names``."""
    step = host.step
    size = host.lr[0]
    if scale == "distance":  # m = a/d, d = r̄/√t (the state's d of its last step)
        d = distance_step_size(1.0, host.distance_max[0], max(step - 1, 0), HOST_OPS)
        size = size / d if d > 0 else 0.0
    elif scale == "prodigy":
        d = host.prodigy_d[0]
        size = size / d if d > 0 else 0.0
    size = round_to(host.dtype, [size])[0]
    log_lr = HOST_OPS.log(max(size, 1e-30) / controller.init_lr)
    values = {"garo_momentum": host.momentum[0] if step > 0 else controller.init_momentum,
              "garo_log_lr": _clamp(log_lr, -30.0, 30.0) if step > 0 else 0.0}
    return [values[name] for name in names]


# SwitchingPolicy -> (the weights' identities and versions, their float64 host copies)
_POLICY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stock_policy(gate) -> SwitchingPolicy | None:
    module = getattr(gate, "module", None)
    if isinstance(gate, PolicyGate) and gate.weights is None and \
            type(module).forward is SwitchingPolicy.forward and \
            type(module).logit is SwitchingPolicy.logit:
        return module
    return None


_VERSION = operator.attrgetter("_version")  # a tensor's in-place version counter


def _weights(module: SwitchingPolicy) -> tuple:
    return (module.hidden.weight, module.hidden.bias, module.head.weight, module.head.bias,
            module.feature_mean, module.feature_std)


def _policy_arrays(module: SwitchingPolicy, tensors: tuple) -> tuple:
    """``(W₁, b₁, w₂, b₂, μ, σ, the weights' dtype)``, float64 on the host (``tensors``:
    ``_weights(module)``); read again when a weight changes in place (its version moves) or the
    module is moved or cast (new storage)."""
    key = (tensors[0].data_ptr(), tensors[2].data_ptr(), *map(_VERSION, tensors))
    cached = _POLICY.get(module)
    if cached is None or cached[0] != key:
        w1, b1, w2, b2, mean, std = (t.detach().to("cpu", torch.float64).numpy().copy()
                                     for t in tensors)
        cached = _POLICY[module] = (key, (w1, b1, w2[0], float(b2[0]), mean.tolist(),
                                          std.tolist(), tensors[2].dtype))
    return cached[1]


class HostGate:
    """The gate of ``opt.gate`` on host floats: ``p(features + extra)``, or None where a learned
    gate is within ``MARGIN`` of 0.5 (module docstring). ``dtype``/``device``: the features'
    (the parameters'), for a gate evaluated through its own ``gate``."""

    def __init__(self, gate, dtype: torch.dtype, device):
        self.gate, self.dtype, self.device = gate, dtype, device
        self.policy = _stock_policy(gate)
        self.tensors = _weights(self.policy) if self.policy is not None else ()

    def __call__(self, features: Sequence[float], extra: Sequence[float]) -> float | None:
        if isinstance(self.gate, ConstantSwitch):
            return float(self.gate.p)
        if self.policy is not None:
            if self.tensors[2] is not self.policy.head.weight:  # (replaced, e.g. assign=True)
                self.tensors = _weights(self.policy)
            w1, b1, w2, b2, mean, std, dtype = _policy_arrays(self.policy, self.tensors)
            x = round_to(dtype, round_to(self.dtype, [*features, *extra]))
            c = self.policy.feature_clip
            z = [_clamp((v - m) / s, -c, c) for v, m, s in zip(x, mean, std)]
            logit = float(w2 @ np.tanh(w1 @ z + b1)) + b2
            p = 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else \
                math.exp(logit) / (1.0 + math.exp(logit))
            return None if abs(p - 0.5) < MARGIN else p
        feats = torch.tensor(features, dtype=self.dtype, device=self.device)
        gate = self.gate
        if extra:
            gate = AugmentedGate(gate, torch.tensor(extra, dtype=self.dtype, device=self.device))
        return float(gate.gate(feats))
