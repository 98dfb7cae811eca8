"""GARO as the GD module of the hybrid GD–ODE optimizer, with the ODE step taken from GARO's scale.

The hybrid (``metaopt.hybrid.rule.HybridRule``) composes a GD module and an ODE module. Here the
GD module is a GARO controller (``metaopt.garo``), typically scale-free GARO
(``scale="distance"``: the controller's lr_t multiplies DoG's online estimate d_t, Ivgi, Hinder
& Carmon 2023), and nothing of the ODE module is tuned for one setting:

* **GD step**: GARO's own update, ``GARORule.apply``; its effective step size after step t is
  ``a_t = lr_t·d_t`` (``state["lr"]``; ``lr_t`` alone with ``scale="none"``).
* **ODE step size**: for tensor i in a group with lr multiplier ``m_i = lr_i/lr₀`` and
  ``ode_scale`` c_i::

      h_{t,i} = c_i · m_i · a_t · ρ_t,     ρ_t = √n / ‖g_t‖  (direction "adam"),  1  ("sgd")

  read after GARO observed step t (the ``HybridRule`` hook). For the sgd direction a GD step of
  lr a is an Euler step of the gradient flow with h = a. For the adam direction every coordinate
  of the normalised direction has mean square ≈ 1, so GARO moves each coordinate by about a_t;
  ρ_t converts that into gradient-flow time, h_t·‖g_t‖ = c·a_t·√n: an Euler step of the ODE is
  as long as GARO's step, and h is invariant to the loss's scale like a_t. The hybrid's
  stability guard then shortens h to 0.95·β/κ̂ where needed (``metaopt.hybrid.stability``).
* **What the switch sees**: the five ``FEATURES`` with the stability feature's lr the
  gradient-flow time of GARO's last step, ``a_{t−1}·ρ_{t−1}`` (0 before the first), and — for a
  policy built with ``extra_features=GARO_FEATURES`` — GARO's emitted state::

      x_garo = [μ_{t−1},  log(m_{t−1} / lr₀)]      ([init_momentum, 0] before the first step)

  μ the controller's momentum, m its raw lr multiplier (``a/d`` for scale-free GARO: ``d_{t−1} =
  r̄_{t−1}/√t`` from the state's ``distance_max`` and step count for DoG's scale, the state's
  ``prodigy_d`` for Prodigy's), lr₀ its untrained rate; both are scale-free. The GD guard's
  momentum is μ_{t−1}.

The GARO state's entries hold one value per segment (``[..., 0]`` is segment 0), for one run or
for stacked runs (``GAROModule(batched=True)``), and n may be a count per run (a tensor: the
counts ``GARORule.init`` records, which survive a vectorised meta-batch's zero padding).
``garo_hyper`` builds the hyper of one step from the state, and both the runtime
(``HybridGDODE(gd="garo")``) and meta-training (``metaopt.meta.hybrid_learned``) call it, so the
two run the same math. ``HybridControllers`` holds both trained modules (policy and GARO) in one
checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from ..garo.controller import GAROController
from ..garo.features import TENSOR_OPS, distance_step_size
from ..garo.hyper import GAROHyper
from ..garo.rule import GARORule
from ..garo.stacked import stacked_step
from ..rules.base import State, TensorList, per_tensor
from ..rules.hyper import ODEHyper
from .hyper import HybridHyper
from .policy import SwitchingPolicy

__all__ = ["GARO_FEATURES", "AugmentedGate", "GAROModule", "HybridControllers",
           "garo_features", "garo_hyper"]

#: the GARO-state inputs of a switching policy (``SwitchingPolicy(extra_features=...)``)
GARO_FEATURES = ("garo_momentum", "garo_log_lr")
_TINY = 1e-30


def _controller_module(controller):
    return getattr(controller, "module", controller)  # a BoundController's module


@dataclass(frozen=True)
class GAROModule:
    """GARO behind the hybrid's GD-module interface: ``init(params)`` and ``apply``.

    ``controller``: the module ``init`` reads the initial recurrent state from (a step's hyper
    may bring another binding of it, e.g. meta-parameters); ``horizon``: the run's planned length
    for relative-feature controllers (None: unknown); ``batched``: the leading dimension of every
    tensor (parameters, gradients, loss, state) is an independent run, as for
    ``HybridRule(batched=True)``: each run's GARO step is its own ``GARORule.apply`` through
    ``torch.func.vmap`` (the GARO step reads only its run's parameters, gradients and state), and
    the state is the per-run states stacked. Runs of one ``(R, N)`` tensor each (the vectorised
    engine's flat buckets) with the multipliers at 1 take ``metaopt.garo.stacked`` instead: the
    same step over the leading run dimension, without vmap's dispatch.
    """

    rule: GARORule
    controller: Any
    horizon: int | None = None
    batched: bool = False

    def init(self, params: Sequence[Tensor]) -> State:
        if self.batched:  # the runs' own states, stacked
            states = [dataclasses.replace(self, batched=False).init([p[b] for p in params])
                      for b in range(params[0].shape[0])]
            return tree_map(lambda *values: torch.stack(values), *states)
        state = self.rule.init(list(params), self.controller, horizon=self.horizon)
        state.pop("tensor_numel", None)  # (the hybrid never pads; GARO then counts its tensors)
        return state

    def apply(self, params, grads, state, hyper, loss=None) -> tuple[TensorList, State]:
        if isinstance(hyper, Mapping) and "controller" not in hyper:
            hyper = {**hyper, "controller": self.controller}
        hyper = GAROHyper.coerce(hyper)
        if not self.batched:
            return self.rule.apply(params, grads, state, hyper, loss=loss)

        params, grads = list(params), list(grads)
        if _stacks(params, hyper, loss, state):
            new, state = stacked_step(self.rule, hyper.controller, params[0], grads[0], loss,
                                      state)
            return [new], state

        def one(p, g, s, f):
            return self.rule.apply(p, g, s, hyper, loss=f)
        return torch.func.vmap(one, in_dims=(0, 0, 0, None if loss is None else 0))(
            params, grads, state, loss)

    @property
    def normalised(self) -> bool:
        """True for the adam direction, whose step is bounded per coordinate whatever the
        curvature, |Δθ_i| ≤ a·|b_i| with |u_i| ≲ 1: the hybrid's GD stability guard leaves its
        steps alone (``metaopt.hybrid.stability``)."""
        return self.rule.direction == "adam"


def _stacks(params: Sequence[Tensor], hyper: GAROHyper, loss, state: State) -> bool:
    """Whether stacked runs fit ``stacked_step``: one ``(R, N)`` tensor and one segment each,
    a loss, the recorded element counts, the lr and decay multipliers 1."""
    return (len(params) == 1 and params[0].dim() == 2 and loss is not None
            and "tensor_numel" in state and hyper.segment_ids is None
            and all(isinstance(m, (int, float)) and m == 1
                    for m in (hyper.lr_scale, hyper.weight_decay_scale)))


def _safe_ratio(num, den: Tensor) -> Tensor:
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)),
                       torch.zeros_like(den))


def flow_time_factor(rule: GARORule, numel: int | Tensor, grad_norm: Tensor) -> Tensor | float:
    """ρ = √n/‖g‖ for the adam direction (0 where g = 0), 1 for sgd (module docstring)."""
    if rule.direction == "sgd":
        return 1.0
    root = numel.sqrt() if isinstance(numel, Tensor) else math.sqrt(numel)  # (a count per run)
    return _safe_ratio(root, grad_norm.detach())


def garo_features(gd_state: State, rule: GARORule, controller,
                  names: Sequence[str] = GARO_FEATURES) -> Tensor:
    """``x_garo`` of the module docstring, in the order of ``names``."""
    module = _controller_module(controller)
    step = gd_state["step"]
    started = step > 0
    momentum = gd_state["momentum"][..., 0].detach()
    size = gd_state["lr"][..., 0].detach()
    if rule.scale == "distance":  # m = a/d, d = r̄/√t (the state's d of its last step)
        d = distance_step_size(1.0, gd_state["distance_max"][..., 0].detach(),
                               (step - 1).clamp_min(0).to(size.dtype), TENSOR_OPS)
        size = _safe_ratio(size, d)
    elif rule.scale == "prodigy":  # m = a/d, Prodigy's d of the last step
        size = _safe_ratio(size, gd_state["prodigy_d"][..., 0].detach())
    log_lr = torch.log(size.clamp_min(_TINY) / module.init_lr)
    values = {"garo_momentum": torch.where(started, momentum,
                                           torch.full_like(momentum, module.init_momentum)),
              "garo_log_lr": torch.where(started, log_lr, torch.zeros_like(log_lr))
              .clamp(-30, 30)}
    return torch.stack([values[name] for name in names], dim=-1)


class AugmentedGate:
    """A gate whose policy also reads ``extra`` (appended to the ``FEATURES``)."""

    def __init__(self, gate, extra: Tensor):
        self.inner, self.extra = gate, extra
        self.hard = gate.hard
        self.straight_through = getattr(gate, "straight_through", False)

    def gate(self, features: Tensor) -> Tensor:
        extra = self.extra.to(features.dtype).expand(*features.shape[:-1], -1)
        return self.inner.gate(torch.cat([features, extra], dim=-1))


def garo_hyper(module: GAROModule, state: State, controller, gate, numel: int, *,
               lr: Any = 1.0, weight_decay: Any = 1.0, ode_scale: Any = 1.0,
               extra_features: Sequence[str] = ()) -> HybridHyper:
    """The ``HybridRule`` hyper of one step with GARO as the GD module (module docstring).

    ``controller``: this step's controller (module or ``BoundController``); ``gate``: the switch
    (``extra_features``: the names of ``GARO_FEATURES`` its policy reads); ``lr``,
    ``weight_decay``, ``ode_scale``: per-tensor multipliers (float or list); ``numel``: the
    number of parameter elements (n of ρ).
    """
    gd_state, rule = state["gd"], module.rule
    last_size = gd_state["lr"][..., 0].detach()
    stability_lr = last_size * flow_time_factor(rule, numel, state["prev_grad_norm"])
    if extra_features:
        gate = AugmentedGate(gate, garo_features(gd_state, rule, controller, extra_features))

    def ode_lr(new_gd_state: State, grad_norm: Tensor) -> list:
        size = new_gd_state["lr"][..., 0] * flow_time_factor(rule, numel, grad_norm)
        n = len(new_gd_state["momentum_buffer"])
        return [c * m * size for c, m in zip(per_tensor(ode_scale, n), per_tensor(lr, n))]

    decay = gd_state["weight_decay"][..., 0].detach()  # the ODE's L2 term: GARO's last wd_t
    return HybridHyper(
        gd=GAROHyper(controller, lr_scale=lr, weight_decay_scale=weight_decay), gd_rule=module,
        ode=ODEHyper(ode_lr, [w * decay for w in weight_decay]
                     if isinstance(weight_decay, (list, tuple)) else weight_decay * decay),
        policy=gate, stability_lr=stability_lr, gd_momentum=gd_state["momentum"][..., 0].detach())


class HybridControllers(nn.Module):
    """The two trained modules of a hybrid with a GARO GD module, one checkpoint's controller:
    ``policy`` (``SwitchingPolicy``) and ``garo`` (``GAROController``). ``config`` holds both
    constructors' arguments, so ``HybridControllers(**config)`` rebuilds the architecture."""

    def __init__(self, policy: dict[str, Any] | None = None, garo: dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(policy or {}, dict) or not isinstance(garo or {}, dict):
            raise ValueError("HybridControllers: policy and garo must be dicts of constructor "
                             "arguments")
        self.policy = SwitchingPolicy(**(policy or {}))
        self.garo = GAROController(**(garo or {}))

    @classmethod
    def of(cls, policy: SwitchingPolicy, garo: GAROController) -> HybridControllers:
        """A holder of the given modules themselves (shared, not copied)."""
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.policy, out.garo = policy, garo
        return out

    @property
    def config(self) -> dict[str, Any]:
        return {"policy": self.policy.config, "garo": self.garo.config}
