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
flat updates), with the switch riding along (``switch`` there). Its one extra read joins GARO's
norm read: ‖g − g_prev‖ exactly (one kernel over the flat gradient) on a small model, else
⟨g, g_prev⟩ for the rule's identity ‖g‖² + ‖g_prev‖² − 2⟨g, g_prev⟩, read exactly (a second
read) where that would cancel, as the rule does. ‖g‖ and ‖Δθ_prev‖ are GARO's own reads (the
motion is GARO's update norm ‖a·u‖, read with the next step's norms). The features, the gate
(``metaopt.hybrid.switch_host``) and the guard are host floats, decided after GARO's controller
and before anything moves. Where the gate says ODE, a learned gate is within rounding of 0.5,
the guard's bound cannot clear it, a value is not finite, or the new θ's bound nears overflow,
nothing has moved and the optimizer takes the reference path, which decides exactly; so does a
step whose set of parameters with gradients differs from the last step's (the rule's secant
then reads ‖g_prev‖ of the whole last step, which the exact difference here would not). After
the update g is copied into the previous-gradient buffer (flat, one kernel, on a small model).

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

from dataclasses import dataclass, field
from operator import is_

import torch
from torch import Tensor

from ..garo.controller import GAROController
from ..garo.flat import FlatBuffers
from ..garo.host_state import HostState
from ..garo.hyper import GAROHyper
from ..garo.pending import settle
from ..garo.runtime import host_apply
from .garo_module import GAROModule
from .runtime import split_state
from .switch_host import HostGate, SwitchDecision, norm_of

__all__ = ["GARORuntime", "garo_applies"]

_SCALARS = ("mode", "dwell", "gate", "probability", "evaluations", "displacement_norm",
            "grad_norm0", "prev_grad_norm", "curvature", "stage_curvature")


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
            sw.values["displacement_norm"] = norm_of(sw.dtype, self.garo.update_norm)
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
        if params[0].dtype != sw.dtype or [p.shape for p in params] != [g.shape for g in grads]:
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
        decision = SwitchDecision(self, opt, params, grads, prev, flat_prev, loss, lr_scale, decays,
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
            norm_of(sw.dtype, new.update_norm)
        sw.step += 1
        sw.values, sw.losses, sw.features = values, decision.losses, decision.features
        self.fast_steps += 1
        return True
