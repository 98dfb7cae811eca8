"""Learned rules of the hybrid GD–ODE optimizer: the switching policy alone, or with GARO.

The hybrid GD–ODE optimizer's switching mechanism, here learned by the existing
outer loop through the ``LearnedRule`` protocol (``metaopt.meta.learned``), never a second engine.
Both rules run ``metaopt.hybrid.rule.HybridRule``, the same code as ``HybridGDODE``:

* ``HybridLearnedRule``: φ = the ``SwitchingPolicy`` weights; the GD module (SGD/Adam/RMSprop)
  has fixed hyperparameters.
* ``HybridGAROLearnedRule``: φ = policy + GARO controller (``module`` is a ``ModuleDict`` with
  ``policy`` and ``garo``): GARO is the GD module and sets the ODE step from its own step size,
  the policy picks the mode (reading GARO's state); the same math as ``HybridGDODE(gd="garo")``
  (``metaopt.hybrid.garo_module``), exported as one checkpoint with both modules.

**Relaxation** (``relaxed=True``, for truncated BPTT): the unroll blends the two updates by the
gate, θ ← θ_gd + p·(θ_ode − θ_gd), so ∂meta-loss/∂φ exists; both modules run every step.
**Straight-through** (``straight_through=True``, BPTT): the forward pass takes the hard decision
(the unroll *is* the runtime trajectory), the backward pass differentiates p as if blended.
**Hard decisions** (``relaxed=False``, for ES): ODE iff p > 0.5, only the chosen module runs —
exactly the runtime optimizer. ``scripts/meta_train.py`` (``hybrid.gate=auto``) takes the
straight-through gate for ``bptt`` and hard decisions for ``es``/``pes``. Measured by
``scripts/hybrid_estimators.py`` (``configs/hybrid.yaml``, 60 meta-steps each, scored as deployed:
hard decisions on 8 held-out tasks, median normalised final loss; untrained = GD 1.004, ODE only
0.572): relaxed BPTT 0.758 (9.5 s/meta-step; its relaxed unrolls are not the runtime's
trajectories, so its own validation, −0.61, overstates it), straight-through BPTT 0.680
(5.8 s/step), ES with 4 antithetic pairs 0.716 (15.2 s/step). Straight-through BPTT is the
default: the best deployed result at the lowest cost.

**Vectorised engine**: ``batched_form()`` is the rule stepping a meta-batch's stacked runs
itself (``BatchedHybrid``: ``HybridRule(batched=True)``, GARO through ``GAROModule(batched=
True)``), which the vectorised engine calls with a ``grad_fn`` that evaluates every run at its
own Runge–Kutta stage points (``metaopt.meta.native_batched``); the runs' states keep the
loop's format. It takes a fixed-step Runge–Kutta ODE module and an SGD, RMSprop or GARO GD
module (an adaptive or flow ODE module, Adam's step count and the Lanczos probe are not per run:
those rules take the loop, and the engine's start-up report says why). The GARO rule's state
records the tensors' element counts (n of ρ and of GARO's scale), so zero-padded runs of
different sizes share a batch exactly.

**Compute charge** (``compute_cost`` = c ≥ 0), in gradient evaluations (an RK4 step is
four: θ's gradient and three more stages; each of the guard's refused probes counts one):
``segment_penalty`` adds c·(gradient evaluations per inner step − 1) to the segment's
meta-loss (``unroll_segment`` calls it), with the relaxed gate's *expected* evaluations
1 + p·(ODE stages − 1), so the policy learns when an ODE step pays for its extra stages.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..garo.controller import BoundController, GAROController
from ..garo.rule import GARORule
from ..hybrid.garo_module import GAROModule, garo_hyper
from ..hybrid.hyper import HybridHyper
from ..hybrid.policy import PolicyGate, SwitchingPolicy
from ..hybrid.rule import HybridRule, trace
from ..rules.base import GradFn, State, TensorList
from ..rules.hyper import GDHyper, ODEHyper
from ..rules.rmsprop import RMSpropRule
from ..rules.runge_kutta import RungeKuttaRule
from ..rules.sgd import SGDRule


def _scalar(value: Tensor) -> Tensor:
    return value.detach().float().mean() if value.dim() else value.detach()


class HybridLearnedRule:
    """``HybridRule`` with a ``SwitchingPolicy`` evaluated at meta-parameters φ.

    Args:
        policy: the module whose parameters are φ.
        rule: the hybrid step (GD and ODE modules, dwell, window, curvature estimate).
        gd_hyper: the GD module's hyperparameters, a ``GDHyper`` (``lr``, ``momentum``,
            ``weight_decay``) or a mapping of its fields.
        ode_lr: the ODE step h. relaxed: blend by the gate (BPTT) or hard decisions (ES).
        compute_cost: c of the compute charge (0: none).
    """

    def __init__(self, policy: SwitchingPolicy, rule: HybridRule,
                 gd_hyper: GDHyper | Mapping[str, Any],
                 ode_lr: float, *, relaxed: bool = True, compute_cost: float = 0.0,
                 straight_through: bool = False):
        if not compute_cost >= 0:
            raise ValueError(f"compute_cost: must be >= 0, got {compute_cost!r}")
        self.module, self.rule = policy, rule
        self.gd_hyper, self.ode_lr = GDHyper.coerce(gd_hyper), float(ode_lr)
        self.relaxed, self.compute_cost = bool(relaxed), float(compute_cost)
        self.straight_through = bool(straight_through) and self.relaxed

    def meta_parameters(self) -> dict[str, Tensor]:
        """φ: the module's trainable parameters (a frozen GARO controller is not among them)."""
        return {k: p for k, p in self.module.named_parameters() if p.requires_grad}

    def _gate(self, weights: Mapping[str, Tensor]) -> PolicyGate:
        return PolicyGate(self.module, dict(weights), hard=not self.relaxed,
                          straight_through=self.straight_through)

    def init(self, params: Sequence[Tensor], weights: Mapping[str, Tensor],
             horizon: int | None = None) -> State:
        return self.rule.init(list(params))

    def _hyper(self, weights) -> HybridHyper:
        return HybridHyper(gd=self.gd_hyper,
                           ode=ODEHyper(self.ode_lr, self.gd_hyper.weight_decay),
                           policy=self._gate(weights), stability_lr=self.gd_hyper.lr)

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             weights: Mapping[str, Tensor]) -> tuple[TensorList, State]:
        return self.rule.step(list(params), grad_fn, state, self._hyper(weights))

    def trace(self, state: State) -> dict[str, Tensor]:
        """Mode, gate, criterion values and gradient evaluations so far (scalars)."""
        return {k: _scalar(v) for k, v in trace(state).items()}

    def segment_penalty(self, start: State, end: State, length: int) -> Tensor:
        """c·(evaluations per step − 1): 0 for pure GD, c·(stages − 1) for ODE every step."""
        spent = (end["evaluations"] - start["evaluations"]).mean() / length
        return self.compute_cost * (spent - 1.0)

    def batched_form(self) -> BatchedHybrid:
        """This rule stepping stacked runs itself (``BatchedHybrid``): the vectorised engine's
        native batched path (``metaopt.meta.native_batched``)."""
        return BatchedHybrid(self)


class BatchedHybrid:
    """``learned.step`` for ``B`` stacked runs, every run's step its own: ``HybridRule(batched=
    True)`` (per-run norms, features, gates, modes, step counters, stability caps, evaluation
    counts and undo of a non-finite step; both modules evaluated, the gate selecting) and, for
    ``HybridGAROLearnedRule``, ``GAROModule(batched=True)`` (each run's GARO step through
    ``torch.func.vmap``).

    ``step(θ, grad_fn, s, φ)``: ``θ`` ``(B, ...)`` per tensor; ``grad_fn(points)`` returns the
    ``(B,)`` losses and the runs' own gradients at any stacked points (the Runge–Kutta stages'
    are away from θ); ``s`` the runs' states stacked along a leading dimension (their step
    counters as ``(B,)`` tensors), and so is the state returned. Equal to the runs' own steps
    (``tests/meta/test_vectorised_hybrid.py``): a hard decision that skips the ODE module in
    a run's own step changes nothing the batch selects (its evaluations are charged by the
    gate, 0; the ODE state of a Runge–Kutta rule is empty).
    """

    native = True

    def __init__(self, learned: HybridLearnedRule):
        rule = learned.rule
        # modules whose steps are the runs' own side by side (an adaptive or flow ODE module keeps
        # a step size or clock, Adam a step count, that would be shared by the runs)
        if type(rule.ode) is not RungeKuttaRule:
            raise ValueError(f"the hybrid's batched form takes a fixed-step Runge-Kutta ODE "
                             f"module, not {type(rule.ode).__name__}")
        if not isinstance(rule.gd, (SGDRule, RMSpropRule, GAROModule)):
            raise ValueError(f"the hybrid's batched form takes an SGD, RMSprop or GARO GD "
                             f"module, not {type(rule.gd).__name__}")
        if isinstance(rule.gd, GAROModule):
            rule = dataclasses.replace(rule, gd=dataclasses.replace(rule.gd, batched=True))
        self.learned = copy.copy(learned)
        self.learned.rule = dataclasses.replace(rule, batched=True)  # (refuses Lanczos probes)

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             weights: Mapping[str, Tensor]) -> tuple[TensorList, State]:
        # the loss window is run-last in HybridRule(batched=True), run-first when stacked
        state = dict(state, losses=state["losses"].transpose(0, 1))
        params, state = self.learned.step(params, grad_fn, state, weights)
        return params, dict(state, losses=state["losses"].transpose(0, 1))


class HybridGAROLearnedRule(HybridLearnedRule):
    """Policy and GARO trained jointly: φ = {``policy.*``, ``garo.*``} (see module docstring).

    GARO is the GD module (``metaopt.hybrid.garo_module.GAROModule``) and each step's hyper is
    ``garo_hyper`` — the function ``HybridGDODE(gd="garo")`` calls at runtime — so the unroll
    runs the runtime's math: the ODE step h_t = ode_scale·a_t·ρ_t from GARO's step size a_t,
    the stability feature from GARO's last step, and, for a policy built with
    ``extra_features=GARO_FEATURES``, GARO's μ_{t−1} and log lr multiplier as inputs.
    ``rule``'s GD module is replaced by GARO (its ODE module, dwell, window are kept).
    ``train_garo=False`` freezes the controller: φ is the policy alone, GARO runs with its own
    weights (a switch trained over a fixed, e.g. shipped, GARO).
    """

    def __init__(self, policy: SwitchingPolicy, controller: GAROController, garo: GARORule,
                 rule: HybridRule, ode_scale: float = 1.0, *, relaxed: bool = True,
                 compute_cost: float = 0.0, straight_through: bool = False,
                 train_garo: bool = True):
        if not (isinstance(ode_scale, (int, float)) and ode_scale > 0):
            raise ValueError(f"ode_scale: must be a number > 0, got {ode_scale!r}")
        super().__init__(policy, dataclasses.replace(rule, gd=GAROModule(garo, controller)),
                         GDHyper(lr=1.0, weight_decay=1.0), ode_scale, relaxed=relaxed,
                         compute_cost=compute_cost, straight_through=straight_through)
        self.module = nn.ModuleDict({"policy": policy, "garo": controller})
        self.garo, self.ode_scale = garo, float(ode_scale)
        if not train_garo:  # the switch alone is trained, over a fixed (e.g. shipped) GARO
            controller.requires_grad_(False)

    def _split(self, weights: Mapping[str, Tensor]) -> tuple[dict, BoundController]:
        policy = {k[len("policy."):]: v for k, v in weights.items() if k.startswith("policy.")}
        garo = {k[len("garo."):]: v for k, v in weights.items() if k.startswith("garo.")}
        return policy, BoundController(self.module["garo"], garo)  # (frozen: its own weights)

    def init(self, params: Sequence[Tensor], weights: Mapping[str, Tensor],
             horizon: int | None = None) -> State:
        _, controller = self._split(weights)
        params = list(params)
        gd_state = GAROModule(self.garo, controller, horizon).init(params)
        # the tensors' element counts, recorded (GARORule.init's RUN_CONSTANTS): n of ρ and of
        # a scale-free GARO then survive a vectorised meta-batch's zero padding
        gd_state["tensor_numel"] = gd_state["hidden"].new_tensor([float(p.numel())
                                                                  for p in params])
        return self.rule.init(params, gd_state=gd_state)

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             weights: Mapping[str, Tensor]) -> tuple[TensorList, State]:
        policy, controller = self._split(weights)
        params = list(params)
        gate = PolicyGate(self.module["policy"], policy, hard=not self.relaxed,
                          straight_through=self.straight_through)
        counts = state["gd"].get("tensor_numel")  # (absent from states saved before)
        numel = counts.sum(-1) if counts is not None else sum(
            p[0].numel() if self.rule.batched else p.numel() for p in params)
        hyper = garo_hyper(self.rule.gd, state, controller, gate, numel, ode_scale=self.ode_scale,
                           extra_features=self.module["policy"].extra_features)
        return self.rule.step(params, grad_fn, state, hyper)

    def trace(self, state: State) -> dict[str, Tensor]:
        out = super().trace(state)
        out.update({k: state["gd"][k][0].detach() for k in ("lr", "momentum", "weight_decay")})
        return out
