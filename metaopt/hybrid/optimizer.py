"""``HybridGDODE``: per step, a gradient-descent update or an ODE-integrator update.

The hybrid GD/ODE optimizer (see docs/architecture.md). A torch.optim adapter over
``metaopt.hybrid.rule.HybridRule`` (the switching criteria and the mode-switch update live there;
the GD directions in
``rules/sgd.py``, ``adam.py``, ``rmsprop.py``; the ODE steps in ``rules/runge_kutta.py``,
``step_size_control.py``, ``gradient_flow.py``, ``nesterov_flow.py``)::

    opt = HybridGDODE(model.parameters(), lr=0.05, gd="sgd", ode="rk4")   # heuristic policy
    opt.step(closure)            # the closure is re-evaluated at the ODE's stage points
    opt.mode, opt.last_trace     # "gd" | "ode"; gate, criteria, gradient evaluations so far
"""
from __future__ import annotations

import math
from collections.abc import Callable
from operator import is_not
from typing import Any

import torch
from torch import Tensor

from ..adapters.closure_rule import ClosureGradient, check_non_negative, check_positive
from ..adapters.grad_evals import GradEvalCounter
from ..adapters.grad_mode import call_with_grad, without_grad
from ..adapters.non_finite import NonFiniteSteps, all_finite, check_loss, loss_is_finite
from ..adapters.state_loading import CheckedStateLoad
from ..hub_mixin import PretrainedOptimizerMixin
from ..rules.hyper import GDHyper, ODEHyper
from .criteria import run_norms
from .garo_optimizer import GAROGDSupport
from .hyper import HybridHyper
from .modules import (  # noqa: F401  (GD_METHODS, ODE_METHODS: public names kept here)
    GD_METHODS,
    ODE_METHODS,
    POLICIES,
    make_gd_rule,
    make_ode_rule,
)
from .optimizer_state import HybridStateSupport
from .policy import PolicyGate, SwitchingPolicy
from .rule import CRITERIA, ConstantSwitch, HeuristicSwitch, HybridRule
from .runtime import join_state as _join
from .runtime import own_copy as _own_copy
from .runtime import split_state as _split


class HybridGDODE(HybridStateSupport, GradEvalCounter, CheckedStateLoad, NonFiniteSteps,
                  GAROGDSupport, PretrainedOptimizerMixin, torch.optim.Optimizer):
    r"""Chooses per step between a GD module and an ODE module (``metaopt.hybrid.rule``).

    Args:
        lr: the GD step (group key; default 1e-2). ``ode_scale`` (group key): the ODE step is
            h = lr·ode_scale, so LR schedulers scale both modules.
        gd: ``"sgd"`` (momentum), ``"adam"`` or ``"rmsprop"``; ``momentum``, ``weight_decay``
            (group keys), ``betas``, ``alpha``, ``eps`` as in torch.optim. ``"garo"``: a GARO
            ``controller`` (default the untrained one) with ``direction`` (default ``"adam"``),
            ``scale`` (default ``"distance"``: scale-free GARO), ``betas[1]`` as its β₂, ``eps``,
            ``num_training_steps`` (the run's horizon, read by relative-feature controllers;
            the other GD modules ignore it). Then ``lr`` (default the controller's lr₀) scales
            GARO's lr_t/lr₀ as in ``GARO``, GARO learns its decay wd_t and the group key
            ``weight_decay_scale`` (default 1; 0 exempts a group) multiplies it — ``weight_decay``
            is refused there, since it would read as a fixed decay — and the ODE step is
            h = ode_scale·(lr/lr₀)·a_t·ρ_t from GARO's step size a_t
            (``metaopt.hybrid.garo_module`` states the formula and what the switch reads).
        ode: a tableau (``rk4``, ``heun``, ``ralston``, ``midpoint``, ``rk4_38``, ``euler``…;
            ``bosh3``/``dopri5`` with error control: ``rtol``, ``atol``), ``gradient_flow`` or
            ``nesterov_flow`` (``t0``).
        policy: ``"heuristic"`` (``HeuristicSwitch`` with ``criteria``, ``grad_threshold``,
            ``curvature_threshold``, ``stagnation_threshold``, ``hysteresis``), ``"gd"``/``"ode"``
            (one module only), or a ``SwitchingPolicy`` (learned; ODE when p > 0.5).
        min_dwell, window, ode_cfl, curvature, probe_every, probe_iters: see ``HybridRule``
            (curvature: ``"secant"``/``"lanczos"``). ``record_trace``: keep every step's
            trace in ``history``.

    ``step(closure)`` needs a closure whenever an ODE step may run (any policy but ``"gd"``, or
    the Lanczos probe); with ``policy="gd"`` it works from ``p.grad`` like torch.optim.SGD.
    ``num_grad_evals`` (alias ``gradient_evaluations``) counts closure calls (one per step from
    ``p.grad``). ``state_dict()`` carries both modules' state and the switch's memories (mode,
    dwell, loss window), so a resume is bit-exact; ``load_state_dict`` validates all of it
    before it changes anything (``metaopt.hybrid.optimizer_state``).

    Stability guard (``metaopt.hybrid.stability``, inside the rule, whatever the policy): a GD
    or fixed-step Runge–Kutta step whose secant curvature κ̂ puts it past the method's linear
    stability limit (η·κ̂ > 1.9 for GD, η = lr for plain SGD; h·κ̂ > 0.95·β for a tableau,
    β = 2.785 for RK4) is shortened to step size c/κ̂; a step within the limit is unchanged.

    Non-finite steps (the policy every metaopt optimizer shares, ``metaopt.adapters.non_finite``):
    a step whose loss, gradient or new parameters are not finite is refused — parameters, both
    modules' state and the switch's memories stay those of the last finite step, a
    ``RuntimeWarning`` says so, and after ``max_consecutive_skips`` refusals in a row ``step``
    raises ``FloatingPointError``.
    """

    def __init__(self, params, lr: float | None = None, *, gd: str = "sgd",
                 momentum: float = 0.9,
                 weight_decay: float | None = None, betas=(0.9, 0.999), alpha: float = 0.99,
                 eps: float = 1e-8, ode: str = "rk4", ode_scale: float = 1.0, rtol: float = 1e-3,
                 atol: float = 1e-6, t0: float = 1.0,
                 policy: str | SwitchingPolicy = "heuristic",
                 criteria=CRITERIA, grad_threshold: float = 1e-2,
                 curvature_threshold: float = 2.0, stagnation_threshold: float = 1e-3,
                 hysteresis: float = 2.0, min_dwell: int = 5, window: int = 10,
                 ode_cfl: float = 1.0,
                 curvature: str = "secant", probe_every: int = 10, probe_iters: int = 5,
                 record_trace: bool = False, max_consecutive_skips: int = 20,
                 controller=None, direction: str = "adam", scale: str = "distance",
                 num_training_steps: int | None = None,
                 weight_decay_scale: float | None = None):
        garo = isinstance(gd, str) and gd.lower() == "garo"
        if garo and weight_decay is not None:
            raise ValueError("weight_decay: gd='garo' learns its weight decay wd_t; pass "
                             "weight_decay_scale (a multiplier of wd_t, default 1)")
        if not garo and weight_decay_scale is not None:
            raise ValueError("weight_decay_scale: multiplies GARO's learned decay and needs "
                             "gd='garo'; pass weight_decay for a fixed decay")
        decay_key = "weight_decay_scale" if garo else "weight_decay"
        if garo:
            gd_rule = self._garo_module(controller, direction, scale, betas[1], eps,
                                        num_training_steps)
        elif controller is not None:
            raise ValueError(f"controller: a GARO controller needs gd='garo', got gd={gd!r}")
        lr = (self.garo_controller.init_lr if garo else 1e-2) if lr is None else lr
        decay = (1.0 if weight_decay_scale is None else weight_decay_scale) if garo \
            else (0.0 if weight_decay is None else weight_decay)
        check_non_negative("lr", lr)
        check_non_negative(decay_key, decay)
        check_non_negative("ode_scale", ode_scale)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"momentum: must lie in [0, 1), got {momentum!r}")
        for name, value in (("rtol", rtol), ("atol", atol), ("t0", t0)):
            check_positive(name, value)
        gd_rule = gd_rule if garo else make_gd_rule(gd, betas, alpha, eps)
        ode_rule = make_ode_rule(ode, rtol, atol, t0)
        heuristic = HeuristicSwitch(tuple(criteria), grad_threshold, curvature_threshold,
                                    stagnation_threshold, hysteresis)  # validated whatever policy
        if isinstance(policy, SwitchingPolicy):
            self._check_policy_inputs(policy)
            self.policy_module: SwitchingPolicy | None = policy
            gate = PolicyGate(policy, hard=True)
        elif policy == "heuristic":
            self.policy_module, gate = None, heuristic
        elif policy in ("gd", "ode"):
            self.policy_module, gate = None, ConstantSwitch(1.0 if policy == "ode" else 0.0)
        else:
            raise ValueError(f"policy: must be one of {POLICIES} or a SwitchingPolicy, "
                             f"got {policy!r}")
        rule = HybridRule(gd_rule, ode_rule, min_dwell=min_dwell, window=window,
                          curvature=curvature, probe_every=probe_every, probe_iters=probe_iters,
                          ode_cfl=ode_cfl)
        super().__init__(params, {"lr": lr, "momentum": momentum, decay_key: decay,
                                  "ode_scale": ode_scale})
        self.rule, self.gate, self.policy_name = rule, gate, \
            policy if isinstance(policy, str) else "learned"
        self._place_garo()
        self.needs_closure = policy != "gd" or curvature == "lanczos"
        self.config = dict(gd=gd, ode=ode, betas=list(betas), alpha=alpha, eps=eps, rtol=rtol,
                           atol=atol, t0=t0, criteria=list(criteria),
                           grad_threshold=grad_threshold, curvature_threshold=curvature_threshold,
                           stagnation_threshold=stagnation_threshold, hysteresis=hysteresis,
                           min_dwell=min_dwell, window=window, ode_cfl=ode_cfl,
                           curvature=curvature,
                           probe_every=probe_every, probe_iters=probe_iters)
        if garo:
            self.config.update(gd="garo", direction=direction, scale=scale)
        self.hybrid_state: dict[str, Any] = {}
        self.gradient_evaluations = 0
        self.record_trace = record_trace
        self.history: list[dict[str, float]] = []
        self._init_non_finite(max_consecutive_skips)

    @property
    def _decay_key(self) -> str:
        """The group key of the decay: ``weight_decay`` (fixed) or, with a GARO GD module,
        ``weight_decay_scale`` (the multiplier of its learned wd_t)."""
        return "weight_decay_scale" if "weight_decay_scale" in self.defaults else "weight_decay"

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        if not isinstance(params, set):  # (torch.optim refuses sets itself)
            params = [params] if isinstance(params, Tensor) else list(params)
            param_group["params"] = params
        if any(isinstance(p, Tensor) and p.is_complex() for p in params):
            raise ValueError("params: HybridGDODE does not support complex parameters (its "
                             "switching features order real norms and losses); optimise the "
                             "real and imaginary parts as real tensors (torch.view_as_real)")
        for key in ("lr", self._decay_key, "ode_scale"):
            if key in param_group:
                check_non_negative(key, param_group[key])
        if "momentum" in param_group and not 0 <= param_group["momentum"] < 1:
            raise ValueError(f"momentum: must lie in [0, 1), got {param_group['momentum']!r}")
        super().add_param_group(param_group)

    # -- the step ------------------------------------------------------------------------------
    def _active(self):
        params, hyper = [], {k: [] for k in ("lr", "momentum", "weight_decay", "ode_lr",
                                             "ode_scale")}
        lrs, moms, decays, ode_lrs, scales = hyper.values()
        decay_key = self._decay_key
        for group in self.param_groups:  # (per group: the runtime paths' steps are short)
            chosen = [p for p in group["params"] if p.grad is not None]
            if any([p.grad.is_sparse for p in chosen]):
                raise RuntimeError("HybridGDODE does not support sparse gradients")
            params += chosen
            n, lr, scale = len(chosen), group["lr"], group["ode_scale"]
            lrs += [lr] * n
            moms += [group["momentum"]] * n
            decays += [group[decay_key]] * n
            ode_lrs += [lr * scale] * n
            scales += [scale] * n
        return params, hyper

    @without_grad
    def step(self, closure: Callable[[], Tensor] | None = None):
        if closure is None and self.needs_closure:
            raise RuntimeError(
                "HybridGDODE.step() needs a closure (zero the grads, recompute the loss, call "
                "backward, return the loss) because an ODE step may run and evaluates gradients "
                "at its stage points; only policy='gd' steps from p.grad alone")
        loss = None if closure is None else check_loss(call_with_grad(closure),
                                                      "HybridGDODE.step")
        self.gradient_evaluations += 1  # the closure's, or the caller's backward into p.grad
        params, h = self._active()
        if not params:
            return loss
        start_grads = [p.grad for p in params]
        runtime = self._gd_runtime()
        if runtime is not None and runtime.step(self, params, start_grads, loss, h["lr"],
                                                h["momentum"], h["weight_decay"]):
            self._accept_step()  # a GD step in place (metaopt.hybrid.runtime)
            if self.record_trace:
                self.history.append(self.last_trace)
            return loss
        loss_t = None if loss is None else torch.as_tensor(loss).detach().to(params[0])
        if not (loss_is_finite(loss) and all_finite(start_grads)):
            self._refuse_step("loss or gradient")
            return loss
        snapshot = list(torch._foreach_mul(params, 1.0))
        if closure is not None:
            for p in params:
                p.grad = None
            grad_fn = ClosureGradient(params, closure, loss_t, start_grads)
            grad_fn.start = snapshot
        else:
            def grad_fn(points):
                return loss_t, start_grads
        state = _join(self._rule_state(params))
        last = getattr(self, "_secant_params", None)  # (after a state_dict resume: unknown)
        if last is not None and (len(last) != len(params) or any(map(is_not, params, last))):
            # the secant's ‖g‖² + ‖g_prev‖² − 2⟨g, g_prev⟩ needs ‖g_prev‖ over these parameters
            state["prev_grad_norm"] = run_norms(state["prev_grads"]).to(state["prev_grad_norm"])
        for module in ("gd", "ode"):  # a stateless module (fixed-step RK) has no entries
            state.setdefault(module, {})
        hyper = self._garo_step_hyper(state, snapshot, h) if self.garo_controller is not None \
            else HybridHyper(gd=GDHyper(h["lr"], h["momentum"], h["weight_decay"]),
                             ode=ODEHyper(h["ode_lr"], h["weight_decay"]),
                             policy=self.gate, stability_lr=float(max(h["lr"])))
        try:
            new_params, new_state = self.rule.step(snapshot, grad_fn, state, hyper)
        except FloatingPointError:  # an ODE solve met a non-finite field: a refused step below
            new_params, new_state = [torch.full_like(snapshot[0], math.nan)], None
        finally:
            if closure is not None and grad_fn.evaluations:  # the live θ visited stage points:
                torch._foreach_copy_(params, snapshot)  # a failed step leaves θ where it was
            for p, g in zip(params, start_grads):
                p.grad = g
        if closure is not None:
            self.gradient_evaluations += grad_fn.evaluations
        if new_state is None or new_state is state:  # a failed solve, or the rule undid the
            # step (it checks the new parameters, gradient and loss itself): refuse it
            self._refuse_step("update")
            return loss
        torch._foreach_copy_(params, list(new_params))
        self._accept_step()
        self._secant_params = params
        lists, shared = _split(new_state)
        for key, values in lists.items():
            for p, v in zip(params, values):
                # θ's gradient is handed back in p.grad; a closure may zero it in place, so the
                # secant's memory keeps its own copy (in last step's buffer, which the new state
                # no longer holds: no allocation). The rule hands it back detached: a new tensor
                # over p.grad's memory, so the test is on the memory.
                aliased = (isinstance(v, Tensor) and p.grad is not None
                           and v.data_ptr() == p.grad.data_ptr())
                self.state[p][key] = _own_copy(v, self.state[p].get(key)) if aliased else v
        self.hybrid_state = shared
        if self.record_trace:
            self.history.append(self.last_trace)
        return loss
