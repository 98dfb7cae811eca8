"""The hybrid GD–ODE optimizer's runtime GD step with GARO as its GD module, in place.

``metaopt.hybrid.rule`` stays the reference (the pure path of meta-training). In GD mode with
``GAROModule`` as the GD module (``gd="garo"``) that step is (``metaopt.hybrid.garo_module``)::

    features:  r = log‖g‖ − log‖g₀‖,  κ = ‖g − g_prev‖/‖Δθ_prev‖,  s = log(a_{t−1}ρ_{t−1}·κ),
               progress, mode, dwell, and GARO's emitted state x_garo = [μ_{t−1}, log m_{t−1}/lr₀]
    gate:      p = policy(features) > 0.5 (kept while dwell < min_dwell)
    GD:        GARO's own step (``metaopt.garo.rule``)
    guard:     the sgd direction: shorten the step when η·κ̂ > 1.9 (the adam direction is
               normalised and never shortened; ``metaopt.hybrid.stability``)
    refusal:   loss, gradient or new θ not finite → nothing changes

Here it is GARO's own runtime step, ``metaopt.garo.runtime.host_apply`` (the same code as
``metaopt.optim.GARO``: its state on the host, one host read, the controller in NumPy, fused and
flat updates), with the switch riding along (``switch`` there): its one extra read, ‖g − g_prev‖
(the exact difference; one kernel over the flat gradient on a small model), joins GARO's norm
read; ‖g‖ and ‖Δθ_prev‖ are GARO's own reads (the motion is GARO's update norm ‖a·u‖, read with
the next step's norms); the features, the gate (``metaopt.hybrid.switch_host``) and the guard
are host floats, decided after GARO's controller and before anything moves. Where the gate says
ODE, a learned gate is within rounding of 0.5, the guard's bound cannot clear it, a value is not
finite, or the new θ's bound nears overflow, nothing has moved and the optimizer takes the
reference path, which decides exactly; so does a step whose set of parameters with gradients
differs from the last step's (the rule's secant then reads ‖g_prev‖ of the whole last step,
which the exact difference here would not). After the update g is copied into the previous-gradient
buffer (flat, one kernel, on a small model).

The switch's memories and GARO's recurrent state stay on the host between fast steps (floats
rounded to their tensors' dtypes): ``HybridGDODE.hybrid_state`` turns them into the rule's
tensors when read (``settle``: the reference path, ``state_dict``, traces), so a state saved
after fast steps is the rule's, and a run resumed from it decides and computes alike.

Bounds (no reads): the sgd direction's ‖Δθ_gd‖ ≤ a_t·(μ_t‖b‖ + ‖g‖ + λ_t‖θ‖) (triangle
inequality, the largest per-group multipliers); the adam direction's coordinates
|u_i| ≤ 1/√(1 − β₂) (v_i ≥ (1 − β₂)g_i²), so |m_i| ≤ (t + 1)/√(1 − β₂) for |μ| ≤ 1 (tanh) and
|θ_new,i| ≤ ‖θ‖(1 + a_tλ_t) + a_t·|m_new,i|.

It equals the reference up to rounding (``tests/hybrid/test_garo_runtime.py``, float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import is_

import torch
from torch import Tensor

from ..garo.controller import GAROController
from ..garo.flat import FlatBuffers
from ..garo.host_state import HostState, round_to
from ..garo.hyper import GAROHyper
from ..garo.pending import settle
from ..garo.runtime import SwitchReads, host_apply
from .garo_module import GAROModule
from .runtime import _CHUNK, _chunked_norm, _chunks, split_state
from .stability import GD_STABILITY_BOUND, SAFETY
from .switch_host import HostGate, host_features, host_garo_inputs, host_progress

__all__ = ["GARORuntime", "garo_applies"]

_SCALARS = ("mode", "dwell", "gate", "probability", "evaluations", "displacement_norm",
            "grad_norm0", "prev_grad_norm", "curvature", "stage_curvature")
_MARGIN = 1e-4  # relative slack of the bounds against rounding
_GD_LIMIT = SAFETY * GD_STABILITY_BOUND
_LIMITS: dict = {}  # dtype -> a quarter of its largest finite value (the overflow bound)


def garo_applies(rule, gate) -> bool:
    """Whether this path can take the rule's GD steps: a stock GARO controller as the GD module,
    the secant, one run, a hard gate, an ODE module whose state a GD step does not change."""
    ode_keys = split_state({"ode": rule.ode.init([torch.zeros(1)])})[0]
    gd = rule.gd
    return (isinstance(gd, GAROModule) and type(gd.controller) is GAROController
            and not gd.rule.feature_gradients and rule.curvature == "secant"
            and not rule.batched and not rule.branchless and not rule.feature_gradients
            and bool(getattr(gate, "hard", False))
            and not getattr(gate, "straight_through", False)
            and not {"ode.velocity", "ode.time"} & set(ode_keys))


@dataclass
class _Switch:
    """The switch's memories on the host (``HybridRule.init``'s scalars, the loss window and
    the features), rounded to their tensors' dtype; ``displacement_norm`` None while GARO's
    update norm of the last step is pending."""
    dtype: torch.dtype
    device: torch.device
    step: int
    values: dict[str, float | None]
    losses: list[float]
    features: list[float] = field(default_factory=list)


class GARORuntime:
    """The GARO GD path's host copies (GARO's ``HostState`` and the switch's ``_Switch``: the
    state while ``dirty``) and caches (flat buffers, the gate twin). ``fast_steps`` counts the
    steps taken here."""

    def __init__(self):
        self.garo: HostState | None = None
        self.switch: _Switch | None = None
        self.dirty = False  # the host copies are ahead of the optimizer's tensors
        self.flat: FlatBuffers | None = None
        self.layout: tuple | None = None  # (params, ids of their state entries, flat prev)
        self.hyper: GAROHyper | None = None
        self.gate: HostGate | None = None
        self.scratch: Tensor | None = None
        self.keys: tuple[str, ...] | None = None
        self.last_params: list[Tensor] | None = None  # those of the last step, on either path
        self.fast_steps = 0

    # -- the state ---------------------------------------------------------------------------
    def forget(self) -> None:
        """The optimizer's state was replaced: the host copies are stale."""
        self.garo, self.switch, self.dirty = None, None, False

    def settle(self, hybrid_state: dict) -> dict:
        """``hybrid_state`` with the host copies written in (the rule's tensors)."""
        if not self.dirty:
            return hybrid_state
        sw = self.switch
        if sw.values["displacement_norm"] is None:  # GARO's pending update norm, read now
            self.garo = settle(self.garo)
            sw.values["displacement_norm"] = _norm(sw.dtype, self.garo.update_norm)
        out = dict(hybrid_state)
        out.update({f"gd.{k}": v for k, v in self.garo.to_tensors().items()})
        def tensor(v):
            return torch.tensor(v, dtype=sw.dtype, device=sw.device)
        out.update({k: tensor(v) for k, v in sw.values.items()})
        out.update(step=sw.step, losses=tensor(sw.losses), features=tensor(sw.features))
        self.dirty = False
        return out

    def _load(self, hs: dict) -> bool:
        """The host copies from the optimizer's tensors (after a reference step or a load)."""
        if "losses" not in hs or not all(k in hs for k in _SCALARS) or "gd.hidden" not in hs:
            return False
        if hs["step"] < 1 or float(hs["mode"]) > 0.5:
            return False  # the first step sets the references; an ODE phase likely goes on
        self.garo = HostState.from_tensors({k[3:]: v for k, v in hs.items()
                                            if k.startswith("gd.") and isinstance(v, Tensor)})
        ref = hs["mode"]
        self.switch = _Switch(ref.dtype, ref.device, int(hs["step"]),
                              {k: float(hs[k]) for k in _SCALARS}, hs["losses"].tolist(),
                              hs["features"].tolist())
        return True

    def _keys(self, rule) -> tuple[str, ...]:
        """The per-parameter state entries this path reads and writes."""
        if self.keys is None:
            self.keys = tuple(f"gd.{k}" for k in rule.per_tensor_keys) + ("prev_grads",)
        return self.keys

    def _buffers(self, opt, params: list[Tensor], keys) -> tuple | None:
        """GARO's per-tensor buffers (flat on a small adam model, as GARO's own) and the
        previous gradients (flat with them)."""
        states = [opt.state[p] for p in params]
        try:
            ids = [id(s[k]) for k in keys for s in states]
        except KeyError:
            return None
        cached = self.layout
        if cached is None or cached[1] != ids or len(cached[0]) != len(params) or \
                not all(map(is_, params, cached[0])):
            proxies = [{k: s[k] for k in keys} for s in states]
            rule = opt.rule.gd.rule
            self.flat = FlatBuffers.build(rule, params, [{k[3:]: v for k, v in p.items()
                                                          if k != "prev_grads"} for p in proxies])
            flat_prev = None
            if self.flat.flat is not None:
                for s, views in zip(states, zip(*[self.flat.views[k] for k in rule.per_tensor_keys
                                                  ])):
                    s.update({f"gd.{k}": v for k, v in zip(rule.per_tensor_keys, views)})
                flat_prev = torch.cat([s["prev_grads"].reshape(-1) for s in states])
                for s, v, p in zip(states, flat_prev.split([p.numel() for p in params]), params):
                    s["prev_grads"] = v.view_as(p)
            cached = self.layout = (params, [id(s[k]) for k in keys for s in states], flat_prev,
                                    sum(p.numel() for p in params))
        flat = self.flat if self.flat.flat is not None else None
        buffers = flat.views if flat is not None else \
            {k[3:]: [s[k] for s in states] for k in keys if k != "prev_grads"}
        return flat, buffers, [s["prev_grads"] for s in states], cached[2], cached[3]

    # -- the step ----------------------------------------------------------------------------
    def step(self, opt, params: list[Tensor], grads: list[Tensor], loss: Tensor | float | None,
             lrs: list[float], moms: list[float], decays: list[float]) -> bool:
        """One GD step in place (called under ``torch.no_grad``); False (nothing changed) where
        the reference path must run. ``loss``: the closure's, or None."""
        last, self.last_params = self.last_params, params
        if last is not None and (len(last) != len(params) or not all(map(is_, params, last))):
            return False  # the set of parameters with gradients changed (module docstring)
        if self.switch is None and not self._load(opt._hybrid_state):
            return False
        sw, module = self.switch, opt.rule.gd
        if sw.values["mode"] > 0.5:
            return False
        if params[0].dtype != sw.dtype or any(p.shape != g.shape for p, g in zip(params, grads)):
            return False
        found = self._buffers(opt, params, self._keys(module.rule))
        if found is None:
            return False
        flat, buffers, prev, flat_prev, numel = found
        base = module.controller.init_lr
        lr_scale = [lr / base for lr in lrs]
        if self.hyper is None or self.hyper.controller is not module.controller or \
                self.hyper.lr_scale != lr_scale or self.hyper.weight_decay_scale != decays:
            self.hyper = GAROHyper(module.controller, lr_scale=lr_scale,
                                   weight_decay_scale=list(decays))
        if self.gate is None or self.gate.gate is not opt.gate or self.gate.dtype != sw.dtype:
            self.gate = HostGate(opt.gate, sw.dtype, sw.device)
        loss = None if loss is None else float(loss)
        decision = _Decision(self, opt, params, grads, prev, flat_prev, loss, lr_scale, decays,
                             numel)
        new = host_apply(module.rule, params, grads, buffers, self.garo, self.hyper, loss,
                         flat=flat, switch=decision)
        if new is None:
            return False
        if decision.whole_prev:  # g_prev ← g
            flat_prev.copy_(decision.r_grads[0])
        else:
            torch._foreach_copy_(prev, grads)
        self.garo, self.dirty = new, True
        values = decision.values
        values["displacement_norm"] = None if new.pending is not None else \
            _norm(sw.dtype, new.update_norm)
        sw.step += 1
        sw.values, sw.losses, sw.features = values, decision.losses, decision.features
        self.fast_steps += 1
        return True


def _norm(dtype, values) -> float:
    return round_to(dtype, [math.sqrt(sum(v * v for v in values))])[0]


class _Decision:
    """``host_apply``'s ``switch`` for one step: the extra read and the decision."""

    def __init__(self, runtime: GARORuntime, opt, params, grads, prev, flat_prev, loss,
                 lr_scale, decays, numel: int):
        self.runtime, self.opt, self.params, self.grads, self.prev = runtime, opt, params, grads, \
            prev
        self.flat_prev, self.loss, self.lr_scale, self.decays = flat_prev, loss, lr_scale, decays
        self.numel = numel
        self.r_grads: list[Tensor] = []
        self.whole_prev = False
        self.need_buffers = False

    def reads(self, r_grads: list[Tensor]) -> list[Tensor]:
        """‖g − g_prev‖ (and, for the sgd direction's guard when GARO does not read them,
        ‖b‖ of the momentum buffers)."""
        self.r_grads = r_grads
        out = []
        if self.flat_prev is not None and len(r_grads) == 1 and \
                r_grads[0].numel() == self.flat_prev.numel():
            self.whole_prev = True
            out.append(torch.dist(r_grads[0], self.flat_prev))
        else:
            out.append(self._difference_norm())
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
        disp = v["displacement_norm"] if reads.prev_update_norms is None else \
            _norm(dtype, reads.prev_update_norms)
        if disp is None or not math.isfinite(diff + gnorm):
            return False
        kappa = round_to(dtype, [diff / disp if disp > 0 else 0.0])[0]
        numel = self.numel
        flow = 1.0
        if module.rule.direction == "adam":  # ρ = √n/‖g_prev‖ (metaopt.hybrid.garo_module)
            prev_norm = v["prev_grad_norm"]
            flow = math.sqrt(numel) / prev_norm if prev_norm > 0 else 0.0
        stability_lr = host.lr[0] * flow
        losses, seen = sw.losses, min(sw.step, rule.window)
        if self.loss is not None:
            losses = round_to(dtype, [*losses[1:], self.loss])
            seen += 1
        progress = host_progress(losses, seen if self.loss is not None else 0)
        features = round_to(dtype, host_features(gnorm, v["grad_norm0"], kappa, stability_lr,
                                                 progress, v["mode"], v["dwell"]))
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
            step_bound = a * (abs(mu) * bufs + gnorm + wd * pnorm) * (1 + _MARGIN)
            eta = stability_lr if not gnorm > 0 else max(
                stability_lr, (1 - min(max(host.momentum[0], 0.0), 1.0)) * step_bound / gnorm)
            gd_kappa = max(kappa, v["stage_curvature"])
            if not eta * gd_kappa * (1 + _MARGIN) <= _GD_LIMIT:
                return False  # the guard may shorten this step (or a bound is not finite)
        else:  # |Δθ_i| ≤ a·(|m_new,i| + λ‖θ‖), |m_new,i| ≤ (t + 2)/√(1 − β₂)
            step_bound = a * ((host.step + 2) / math.sqrt(1 - module.rule.beta2) + wd * pnorm)
        if not pnorm + step_bound < limit:  # (NaN fails too)
            return False
        self.values = dict(v, mode=0.0, dwell=round_to(dtype, [v["dwell"] + 1])[0], gate=0.0,
                           probability=round_to(dtype, [p])[0],
                           evaluations=round_to(dtype, [v["evaluations"] + 1])[0],
                           curvature=kappa, prev_grad_norm=round_to(dtype, [gnorm])[0],
                           stage_curvature=0.0)
        self.losses, self.features = losses, features
        return True
