"""The hybrid's switch on host floats: what the GARO GD path (``metaopt.hybrid.garo_runtime``)
decides with.

Twins, on the host, of the switch's definitions (which stay the reference, with the formulas):

* ``host_features``: ``metaopt.hybrid.criteria``'s ``FEATURES`` (``switch_features``) with the
  relative progress ``π = (L_{t−W} − L_t)/(|L_{t−W}| + |L_t|)`` (``relative_progress``);
* ``host_garo_inputs``: GARO's emitted state ``x_garo = [μ_{t−1}, log(m_{t−1}/lr₀)]``
  (``metaopt.hybrid.garo_module.garo_features``) from GARO's host state (``HostState``);
* ``HostGate``: the gate ``p = P(ODE)`` — a stock ``SwitchingPolicy``
  ``p = sigmoid(w₂ᵀ tanh(W₁ clip((x − μ)/σ) + b₁) + b₂)`` in float64 in NumPy (from the module's
  weights, cached while they stay), a ``ConstantSwitch`` as its constant, any other gate through
  its own ``gate`` on a tensor;
* ``SwitchDecision``: ``host_apply``'s ``switch`` for one GD step of the GARO path — the extra
  read ‖g − g_prev‖ and the decision from the features, the gate and the step's bounds (their
  derivation in ``metaopt.hybrid.garo_runtime``).

The host twins compute in float64 from the state's values (rounded to its dtypes), so they
agree with the tensors up to rounding; a learned gate within ``MARGIN`` of 0.5 is left
undecided (the reference path decides it). ``tests/hybrid/test_garo_runtime.py`` proves the
whole GD path equal to the reference in float64.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..garo.features import HOST_OPS, distance_step_size
from ..garo.host_state import HostState, round_to
from ..garo.runtime import SwitchReads
from .criteria import _LOG_CLIP, _TINY, ConstantSwitch
from .garo_module import AugmentedGate
from .gd_passes import CHUNK as _CHUNK
from .gd_passes import chunked_norm as _chunked_norm
from .gd_passes import chunks as _chunks
from .policy import PolicyGate, SwitchingPolicy
from .stability import GD_STABILITY_BOUND, SAFETY

__all__ = ["MARGIN", "HostGate", "SwitchDecision", "host_features", "host_garo_inputs",
           "host_progress", "norm_of"]

#: a learned gate this close to 0.5 is decided by the reference path (its own dtype)
MARGIN = 1e-4
_SLACK = 1e-4  # relative slack of the bounds against rounding
_GD_LIMIT = SAFETY * GD_STABILITY_BOUND
_LIMITS: dict = {}  # dtype -> a quarter of its largest finite value (the overflow bound)


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
    log_lr = HOST_OPS.log(max(size, 1e-30) / controller.init_lr)
    values = {"garo_momentum": host.momentum[0] if step > 0 else controller.init_momentum,
              "garo_log_lr": _clamp(log_lr, -30.0, 30.0) if step > 0 else 0.0}
    return [values[name] for name in names]


_VERSION = operator.attrgetter("_version")  # a tensor's in-place version counter


def _stock_policy(gate) -> SwitchingPolicy | None:
    module = getattr(gate, "module", None)
    if isinstance(gate, PolicyGate) and gate.weights is None and \
            type(module).forward is SwitchingPolicy.forward and \
            type(module).logit is SwitchingPolicy.logit:
        return module
    return None


def _weights(module: SwitchingPolicy) -> tuple:
    return (module.hidden.weight, module.hidden.bias, module.head.weight, module.head.bias,
            module.feature_mean, module.feature_std)


class HostGate:
    """The gate of ``opt.gate`` on host floats: ``p(features + extra)``, or None where a learned
    gate is within ``MARGIN`` of 0.5 or not finite (module docstring). ``dtype``/``device``:
    the features' (the parameters'), for a gate evaluated through its own ``gate``.

    A stock ``SwitchingPolicy`` runs in NumPy on float64 copies of its weights, read again when
    a weight changes in place (its version moves) or the module is moved or cast (new storage);
    where no input reaches the clip, its normalisation is folded into the first layer,
    ``W₁ (x − μ)/σ + b₁ = (W₁/σ) x + (b₁ − (W₁/σ) μ)``."""

    def __init__(self, gate, dtype: torch.dtype, device):
        self.gate, self.dtype, self.device = gate, dtype, device
        self.policy = _stock_policy(gate)
        self.tensors = _weights(self.policy) if self.policy is not None else ()
        self.key: tuple | None = None
        self.arrays: tuple = ()

    def _arrays(self) -> tuple:
        tensors = self.tensors  # (replaced, e.g. by a load with assign=True: read them again)
        if tensors[2] is not self.policy._modules["head"]._parameters["weight"]:
            tensors = self.tensors = _weights(self.policy)
        key = (tensors[2].data_ptr(), *map(_VERSION, tensors))  # (a cast moves every storage)
        if key != self.key:
            w1, b1, w2, b2, mean, std = (t.detach().to("cpu", torch.float64).numpy().copy()
                                         for t in tensors)
            clip = self.policy.feature_clip
            folded = w1 / std
            self.arrays = (folded, b1 - folded @ mean, w1, b1, w2[0], float(b2[0]), mean.tolist(),
                           std.tolist(), clip, (mean - clip * std).tolist(),
                           (mean + clip * std).tolist())
            self.key = key
        return self.arrays

    def __call__(self, features: Sequence[float], extra: Sequence[float]) -> float | None:
        if isinstance(self.gate, ConstantSwitch):
            return float(self.gate.p)
        if self.policy is not None:
            folded, folded_bias, w1, b1, w2, b2, mean, std, clip, low, high = self._arrays()
            x = [*features, *extra]
            if not (all(map(operator.le, low, x)) and all(map(operator.le, x, high))):
                x = [_clamp((v - m) / s, -clip, clip) for v, m, s in zip(x, mean, std)]
                folded, folded_bias = w1, b1
            logit = float(w2 @ np.tanh(folded @ np.array(x) + folded_bias)) + b2
            if not math.isfinite(logit):
                return None
            p = 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else \
                math.exp(logit) / (1.0 + math.exp(logit))
            return None if abs(p - 0.5) < MARGIN else p
        feats = torch.tensor(features, dtype=self.dtype, device=self.device)
        gate = self.gate
        if extra:
            gate = AugmentedGate(gate, torch.tensor(extra, dtype=self.dtype, device=self.device))
        return float(gate.gate(feats))


def norm_of(dtype, values) -> float:
    """√Σv², rounded to ``dtype``."""
    return round_to(dtype, [math.sqrt(sum(v * v for v in values))])[0]


class SwitchDecision:
    """``host_apply``'s ``switch`` for one step of ``metaopt.hybrid.garo_runtime``: the extra
    read and the decision (that module's docstring)."""

    def __init__(self, runtime, opt, params, grads, prev, flat_prev, loss,
                 lr_scale, decays, numel: int):
        self.runtime, self.opt, self.params, self.grads, self.prev = runtime, opt, params, grads, \
            prev
        self.flat_prev, self.loss, self.lr_scale, self.decays = flat_prev, loss, lr_scale, decays
        self.numel = numel
        self.r_grads: list[Tensor] = []
        self.whole_prev = False
        self.need_buffers = False

    def reads(self, r_grads: list[Tensor]) -> list[Tensor]:
        """‖g − g_prev‖ over the flat gradients, else ⟨g, g_prev⟩ (the rule's identity
        ‖g − g_prev‖² = ‖g‖² + ‖g_prev‖² − 2⟨g, g_prev⟩, ``criteria.difference_norm``: one
        read of g and g_prev, no temporary); and, for the sgd direction's guard when GARO does
        not read them, ‖b‖ of the momentum buffers."""
        self.r_grads = r_grads
        out = []
        if self.flat_prev is not None and len(r_grads) == 1 and \
                r_grads[0].numel() == self.flat_prev.numel():
            self.whole_prev = True
            out.append(torch.dist(r_grads[0], self.flat_prev))
        else:
            out.append(torch.stack([torch.dot(g.reshape(-1), p.reshape(-1))
                                    for g, p in zip(self.grads, self.prev)]).sum())
        rule = self.opt.rule.gd.rule
        if rule.direction == "sgd" and self.runtime.garo.pending is None:
            self.need_buffers = True
            bufs = [self.opt.state[p]["gd.momentum_buffer"] for p in self.params]
            out.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(bufs))))
        return out

    def _difference_norm(self) -> Tensor:
        """Exact ‖g − g_prev‖; large CPU tensors a cache-sized chunk at a time."""
        grads, prev, rt = self.grads, self.prev, self.runtime
        chunks = _chunks(grads) if all(t.is_contiguous() for t in grads + prev) else []
        big = {i for i, _, _ in chunks}
        small = [i for i in range(len(grads)) if i not in big]
        norms = list(torch._foreach_norm(torch._foreach_sub([grads[i] for i in small],
                                                            [prev[i] for i in small]))) \
            if small else []
        if chunks:
            if rt.scratch is None or rt.scratch.dtype != grads[0].dtype:
                rt.scratch = grads[0].new_empty(_CHUNK)
            dots = []
            for i, a, b in chunks:
                s = rt.scratch[:b - a]
                torch.sub(grads[i].view(-1)[a:b], prev[i].view(-1)[a:b], out=s)
                dots.append(torch.dot(s, s))
            norms.append(_chunked_norm(dots))
        return torch.linalg.vector_norm(torch.stack(norms))

    def decide(self, reads: SwitchReads) -> bool:
        """The features, the gate and the bounds (module docstring): True for a GD step here."""
        rt, opt = self.runtime, self.opt
        sw, host, rule, module = rt.switch, rt.garo, opt.rule, opt.rule.gd
        dtype = sw.dtype
        v = sw.values
        gnorm, diff = reads.grad_norms[0], reads.extra[0]
        if not self.whole_prev:  # ⟨g, g_prev⟩: exact where the identity would cancel (<3%)
            total = gnorm * gnorm + v["prev_grad_norm"] ** 2
            square = max(total - 2 * diff, 0.0)
            diff = math.sqrt(square) if square >= 1e-3 * total else \
                float(self._difference_norm())
        disp = v["displacement_norm"] if reads.prev_update_norms is None else \
            norm_of(dtype, reads.prev_update_norms)
        if disp is None or not math.isfinite(diff + gnorm):
            return False
        kappa = diff / disp if disp > 0 else 0.0
        numel = self.numel
        flow = 1.0
        if module.rule.direction == "adam":  # ρ = √n/‖g_prev‖ (metaopt.hybrid.garo_module)
            prev_norm = v["prev_grad_norm"]
            flow = math.sqrt(numel) / prev_norm if prev_norm > 0 else 0.0
        stability_lr = host.lr[0] * flow
        losses, seen = sw.losses, min(sw.step, rule.window)
        if self.loss is not None:
            losses = [*losses[1:], self.loss]
            seen += 1
        progress = host_progress(losses, seen if self.loss is not None else 0)
        features = host_features(gnorm, v["grad_norm0"], kappa, stability_lr, progress,
                                 v["mode"], v["dwell"])
        extra = opt.policy_module.extra_features if opt.policy_module is not None else ()
        p = rt.gate(features, host_garo_inputs(host, module.rule.scale, module.controller,
                                               extra) if extra else [])
        if p is None:
            return False
        locked = v["dwell"] < rule.min_dwell
        if (v["mode"] if locked else float(p > 0.5)) > 0.5:
            return False  # an ODE step
        a = reads.step_sizes[0] * max(self.lr_scale)
        mu, wd = reads.out.momentum[0], reads.out.weight_decay[0] * max(self.decays)
        pnorm = reads.param_norms[0]
        limit = _LIMITS.get(dtype) or _LIMITS.setdefault(dtype, torch.finfo(dtype).max / 4)
        if module.rule.direction == "sgd":
            bufs = reads.extra[1] if self.need_buffers else math.sqrt(
                sum(b * b for b in reads.prev_direction_norms or [math.nan]))
            step_bound = a * (abs(mu) * bufs + gnorm + wd * pnorm) * (1 + _SLACK)
            eta = stability_lr if not gnorm > 0 else max(
                stability_lr, (1 - min(max(host.momentum[0], 0.0), 1.0)) * step_bound / gnorm)
            gd_kappa = max(kappa, v["stage_curvature"])
            if not eta * gd_kappa * (1 + _SLACK) <= _GD_LIMIT:
                return False  # the guard may shorten this step (or a bound is not finite)
        else:  # |Δθ_i| ≤ a·(|m_new,i| + λ‖θ‖), |m_new,i| ≤ (t + 2)/√(1 − β₂)
            step_bound = a * ((host.step + 2) / math.sqrt(1 - module.rule.beta2) + wd * pnorm)
        if not pnorm + step_bound < limit:  # (NaN fails too)
            return False
        # what the state holds, rounded to its dtype at once (as the rule's tensors hold it)
        kept = round_to(dtype, [v["dwell"] + 1, p, v["evaluations"] + 1, kappa, gnorm,
                                losses[-1], *features])
        self.values = dict(v, mode=0.0, dwell=kept[0], gate=0.0, probability=kept[1],
                           evaluations=kept[2], curvature=kept[3], prev_grad_norm=kept[4],
                           stage_curvature=0.0)
        self.losses, self.features = [*losses[:-1], kept[5]], kept[6:]
        return True
