"""The hybrid GD–ODE step: switching criteria and the mode-switch update of the hybrid
GD–ODE optimizer: GD for rapid initial convergence, an ODE integrator for fine-tuning and complex
landscapes.

Every step evaluates ``(L_t, g_t)`` at θ_t once, then

1. **features** (detached, ``FEATURES``), from quantities the step has anyway::

       r_t = log(‖g_t‖ / ‖g_0‖)                              gradient magnitude
       κ_t = ‖g_t − g_{t−1}‖ / ‖θ_t − θ_{t−1}‖                secant curvature (or |λ_max| of a
                                                             Lanczos probe every k steps)
       s_t = log(lr·κ_t)                                     stability: GD diverges along a
                                                             direction with lr·λ > 2
       π_t = (L_{t−W} − L_t) / (|L_{t−W}| + |L_t|)           relative progress over W steps
       m_{t−1}, log(1 + dwell)                               current mode and time spent in it

2. **gate** ``p_t = P(ODE step)``: a ``HeuristicSwitch`` (0/1, hysteresis), a learned policy
   (``metaopt.hybrid.policy``; sigmoid), or a constant. A hard decision may only change
   the mode after ``min_dwell`` steps in it (no chattering).
3. **update**: the GD module always *observes* the step — its statistics (momentum, Adam/RMSprop
   moments, GARO's hidden state) absorb g_t whatever the mode, so they are current when GD resumes.
   The ODE module (an RK / adaptive RK / torchdiffeq flow rule) runs when chosen (or always, in
   the relaxed and branchless forms), reusing g_t as its first stage::

       θ_{t+1} = θ_gd + p_t·(θ_ode − θ_gd)           (relaxed: p ∈ (0, 1); hard: a selection)

   After a GD step the ODE's velocity (Nesterov flow) is handed the motion actually taken,
   V = (θ_{t+1} − θ_t)/h, and its clock advances by the ODE step h, so an ODE step after a switch
   continues the trajectory with its inertia; adaptive step sizes carry over unchanged. A
   displacement the GD module accumulates (scale-free GARO's δ) is the motion actually taken
   (``metaopt.hybrid.handoff``). The ODE step h may be derived from the GD module's step size
   after it observed the step (GARO's a_t; ``metaopt.hybrid.garo_module``).
4. **stability guard** (``metaopt.hybrid.stability``; no policy can turn it off): a GD step
   with η·κ̂ > c_GD = 1.9 (η = max(lr, (1 − μ)‖Δθ_gd‖/‖g‖), exactly lr for plain SGD), or a
   fixed-step Runge–Kutta step with h·κ̂ > c = 0.95·β (β the tableau's real stability-interval
   bound, 2.785 for RK4), is shortened to η_eff = c/κ̂, κ̂ the secant curvature of step 1 (the
   Lanczos probe where configured) or, for an RK step, also the secant between θ and its first
   stage point (so it holds from the very first step); a step within the limit is
   bit-identical. A normalised GD module's steps (GARO's adam direction) are bounded per
   coordinate and left alone (measured: guarding them did harm; ``metaopt.hybrid.stability``).
   A step whose loss, gradient or new parameters are not finite is undone: θ and the whole state
   (mode, dwell, loss window, both modules) are returned unchanged — the same object, so a
   caller can tell (per run when ``batched``).
5. **compute**: ``evaluations += 1 + probe + p_t·(ODE stages beyond the first + the guard's
   refused probes)``; with a soft gate this is the expected count, differentiable, so a
   meta-loss can charge it.

``batched=True`` treats the leading dimension of every tensor as independent runs (the study's
grid of starts, or a meta-batch's runs on the vectorised engine): norms, losses, gates, modes,
step sizes, step counters (an int shared by the runs, or one per run as an ``(R,)`` tensor when
the runs started at different steps), stability caps and gradient-evaluation counts (a probe at
a shorter step probes every run, and a run within its limit is probed again unchanged and not
charged) are per run, the update is branchless and a non-finite step is undone per run
(``metaopt.hybrid.per_run``). Everything is pure: inputs are never mutated.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..rules.base import GradFn, State, TensorList, per_tensor
from .criteria import (
    _TINY,
    CRITERIA,
    FEATURES,
    NUM_FEATURES,
    ConstantSwitch,
    HeuristicSwitch,
    difference_norm,
    lanczos_curvature,
    relative_progress,
    run_norms,
    secant_curvature,
    switch_features,
)
from .evaluations import CountedGradFn
from .handoff import _expand, blend, gd_handoff, observe_motion
from .hyper import HybridHyper
from .per_run import finite_runs, keep_runs
from .rule_state import HybridRuleState, trace
from .stability import (
    GD_STABILITY_BOUND,
    SAFETY,
    cap_scale,
    capped_step_sizes,
    gd_module_momentum,
    gd_step_size,
    ode_stability_limit,
    shorten,
    stage_curvature,
)

__all__ = ["CRITERIA", "FEATURES", "NUM_FEATURES", "ConstantSwitch", "HeuristicSwitch",
           "HybridRule", "blend", "difference_norm", "gd_handoff", "lanczos_curvature",
           "relative_progress", "run_norms", "secant_curvature", "switch_features", "trace"]


_RETRIES = 8


@dataclass(frozen=True)
class HybridRule(HybridRuleState):
    """Composes a GD rule (``apply(params, grads, state, hyper, loss)``: ``SGDRule``,
    ``AdamRule``, ``RMSpropRule``, ``GARORule``) and an ODE rule (``step``: ``RungeKuttaRule``,
    ``AdaptiveRungeKuttaRule``, ``GradientFlowRule``, ``NesterovFlowRule``).

    Args: ``min_dwell`` (steps before a hard decision may switch), ``window`` (W of the
    stagnation criterion), ``curvature`` (``"secant"`` or ``"lanczos"``), ``probe_every`` and
    ``probe_iters`` (the Lanczos probe), ``batched`` (leading dim = runs), ``branchless``
    (evaluate both modules and select; implied by ``batched``), ``ode_cfl`` (> 0: the ODE step
    is capped at h ≤ ode_cfl/κ, the explicit integrator's stability limit along the curvature κ
    — the hybrid's adaptive step size, for free from the criterion's estimate; 0: off),
    ``feature_gradients`` (keep the graph from θ into the features; default False: features are
    detached, Andrychowicz et al.'s approximation, as GARO's).

    hyper: a ``HybridHyper`` (``metaopt.hybrid.hyper``): ``gd`` (the GD rule's hyper), ``ode``
    (``lr`` = h, or a callable ``(gd_state, ‖g_t‖) -> h`` read after the GD module observed the
    step, and ``weight_decay``), ``policy`` (``.gate(features) -> p`` and ``.hard``),
    ``stability_lr`` (the lr of the stability feature), optional ``gd_momentum`` (the GD module's
    momentum for the stability estimate, default its hyper's), ``gd_rule`` (a GD rule bound per
    step, e.g. GARO with controller weights) and ``generator`` (Lanczos start vectors).

    Its state (``init``) and switching features (``features``): ``metaopt.hybrid.rule_state``.
    """

    gd: Any
    ode: Any
    min_dwell: int = 1
    window: int = 10
    curvature: str = "secant"
    probe_every: int = 10
    probe_iters: int = 5
    batched: bool = False
    branchless: bool = False
    ode_cfl: float = 0.0
    feature_gradients: bool = False

    def __post_init__(self):
        for name in ("min_dwell", "window", "probe_every", "probe_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        if not (isinstance(self.ode_cfl, (int, float)) and math.isfinite(self.ode_cfl)
                and self.ode_cfl >= 0):
            raise ValueError(f"ode_cfl: must be a finite number >= 0, got {self.ode_cfl!r}")
        if self.curvature not in ("secant", "lanczos"):
            raise ValueError(f"curvature: must be 'secant' or 'lanczos', got {self.curvature!r}")
        if self.batched and self.curvature == "lanczos":
            raise ValueError("curvature: the Lanczos probe is not available for batched runs")

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: HybridHyper) -> tuple[TensorList, State]:
        hyper = HybridHyper.coerce(hyper)
        params = params if isinstance(params, list) else list(params)  # keep identity: the
        loss, grads = grad_fn(params)  # runtime's grad_fn recognises θ and returns its cache
        feats, memory = self.features(params, grads, loss, state, hyper, grad_fn)
        policy = hyper.policy
        hard = bool(policy.hard)
        gate = policy.gate(feats)
        probability = gate.detach() if isinstance(gate, Tensor) else torch.as_tensor(gate)
        # A hard decision keeps the mode until min_dwell steps were spent in it.
        locked = (state["dwell"] < self.min_dwell).to(gate.dtype)
        if hard:
            gate = (gate > 0.5).to(feats.dtype)
        elif getattr(policy, "straight_through", False):  # hard forward, gradient through p
            gate = (gate.detach() > 0.5).to(gate.dtype) + gate - gate.detach()
        gate = locked * state["mode"] + (1 - locked) * gate
        gd_rule = self.gd if hyper.gd_rule is None else hyper.gd_rule
        gd_params, gd_state = gd_rule.apply(params, grads, state["gd"], hyper.gd, loss)
        # κ̂ for GD: the secant along the last step, or — right after an ODE step, whose motion
        # along the flow can miss the stiff direction — the curvature along that step's
        # gradient from its first stage, whichever is larger.
        kappa = memory["curvature"].detach()
        gd_kappa = torch.maximum(kappa, state.get("stage_curvature", kappa * 0).to(kappa.dtype))
        with torch.no_grad():  # η of the GD step (metaopt.hybrid.stability.gd_step_size)
            gd_lr = gd_step_size([a - p for a, p in zip(gd_params, params)],
                                 memory["prev_grad_norm"], lambda t: run_norms(t, self.batched),
                                 hyper.stability_lr, gd_module_momentum(hyper))
        proposed = gd_params  # (the GD module's own, before the guard: observe_motion)
        if not getattr(gd_rule, "normalised", False):  # (normalised steps: stability docstring)
            gd_params = shorten(params, gd_params,
                                cap_scale(gd_lr, gd_kappa, SAFETY * GD_STABILITY_BOUND),
                                lambda s, like: _expand(s, like, self.batched))
        ode_hyper = hyper.ode_hyper()
        if callable(ode_hyper.lr):  # h from the GD module's scale (metaopt.hybrid.garo_module)
            ode_hyper = ode_hyper.replace(lr=ode_hyper.lr(gd_state, memory["prev_grad_norm"]))
        ode_lrs = per_tensor(ode_hyper.lr, len(params))
        if self.ode_cfl > 0:
            kappa = memory["curvature"]
            limit = self.ode_cfl / torch.where(kappa > 0, kappa, torch.full_like(kappa, _TINY))
            ode_lrs = [_expand(torch.minimum(torch.as_tensor(h, dtype=p.dtype, device=p.device),
                                             limit), p, self.batched)
                       for h, p in zip(ode_lrs, params)]
            ode_hyper = ode_hyper.replace(lr=ode_lrs)
        if self.batched:  # per-run step sizes and decays (GARO's): against their tensors
            ode_lrs = [_expand(h, p, True) if isinstance(h, Tensor) and h.dim() == 1 else h
                       for h, p in zip(ode_lrs, params)]
            ode_hyper = ode_hyper.replace(lr=ode_lrs, weight_decay=[
                _expand(w, p, True) if isinstance(w, Tensor) and w.dim() == 1 else w
                for w, p in zip(per_tensor(ode_hyper.weight_decay, len(params)), params)])
        limit = ode_stability_limit(self.ode)
        capped = None if limit is None else \
            capped_step_sizes(ode_lrs, kappa, limit, params, self.batched)
        if capped is not None:
            ode_lrs, ode_hyper = capped, ode_hyper.replace(lr=capped)
        counted = CountedGradFn(grad_fn, params, (loss, grads))
        stage_kappa = torch.zeros_like(kappa)
        branch = self.branchless or self.batched or not hard
        spent = 0  # the ODE's evaluations beyond θ's: per run when batched (probes included)
        if branch or bool(gate > 0.5):
            # Before the first step κ̂ is unknown, and a chord underestimates a steepening
            # curvature: the secant between θ and the first stage point checks every step
            # before it is taken, and a step past the limit is probed again at h = c/κ̂, at most
            # _RETRIES times; the step is then taken from its last probe's stage. A probe costs
            # one evaluation; batched, a run within its limit is not charged (``charge``: the
            # runs the last check capped) and keeps its stage: only the capped runs (``moved``)
            # are probed again where the grad_fn can evaluate some runs alone, else all are.
            def take():
                return self.ode.step(params, counted, state["ode"], ode_hyper)
            taken, charge, reused, moved = None, 1, False, None
            for attempt in range(_RETRIES if limit is not None else 0):
                before = counted.count
                taken = counted.probe(take, moved)
                spent = spent + (counted.count - before) * charge
                if taken is not None:  # (one stage: nothing to probe, the step is taken)
                    break
                stage = stage_curvature(counted.stage[0], counted.stage[1][1], params, grads,
                                        lambda t: run_norms(t, self.batched))
                stage_kappa = stage if attempt == 0 else stage_kappa
                over: list = []  # (the runs capped: only a batch needs them)
                capped = capped_step_sizes(ode_lrs, stage, limit, params, self.batched,
                                           over if self.batched else None)
                if capped is None:
                    counted.reuse()
                    reused = True
                    break
                ode_lrs, ode_hyper = capped, ode_hyper.replace(lr=capped)
                charge = over[0].to(kappa.dtype) if over else 1
                moved = over[0].nonzero().flatten() if over else None  # (the others' stage
                # point did not move: batched, only these runs are evaluated again)
            if taken is None:
                before = counted.count
                if moved is not None and not reused:
                    counted.reuse(moved)
                ode_params, ode_state = take()
                # unless reused, the first stage is new only to the runs the last check capped
                extra = counted.count - before
                spent = spent + (extra if reused or extra == 0 else extra - 1 + charge)
            else:
                ode_params, ode_state = taken
        else:
            ode_params, ode_state = None, None
        if branch:
            new_params = blend(gd_params, ode_params, gate, hard, self.batched)
            handed = gd_handoff(ode_state, [a - p for a, p in zip(gd_params, params)], ode_lrs)
            if "velocity" in ode_state:
                ode_state = dict(ode_state, velocity=blend(handed["velocity"],
                                                           ode_state["velocity"], gate, hard,
                                                           self.batched))
        elif ode_params is not None:
            new_params = ode_params
        else:
            new_params = gd_params
            ode_state = gd_handoff(state["ode"], [a - p for a, p in zip(gd_params, params)],
                                   ode_lrs)
        gd_state = observe_motion(gd_state, proposed, new_params)
        ok = finite_runs(list(new_params) + list(grads)
                     + ([] if loss is None else [loss.reshape(-1) if not self.batched
                                                 else loss.reshape(loss.shape[0], -1)]),
                     self.batched)
        if not self.batched and not bool(ok):
            return list(params), state  # undone: the same state object (module docstring)
        with torch.no_grad():
            mode = (gate.detach() > 0.5).to(feats.dtype)
            same = (mode == state["mode"]).to(feats.dtype)
            dwell = same * state["dwell"] + 1
        with contextlib.nullcontext() if self.feature_gradients else torch.no_grad():
            moved = run_norms([a - p for a, p in zip(new_params, params)], self.batched)
        evaluations = state["evaluations"] + 1 + memory["probes"] + gate * spent
        new_state = {
            "gd": gd_state, "ode": ode_state, "step": state["step"] + 1, "mode": mode,
            "dwell": dwell, "gate": gate, "probability": probability.to(feats.dtype),
            "evaluations": evaluations,
            "prev_grads": memory["prev_grads"], "displacement_norm": moved,
            "grad_norm0": memory["grad_norm0"], "curvature": memory["curvature"],
            "prev_grad_norm": memory["prev_grad_norm"],
            "losses": memory["losses"], "features": feats,
            "stage_curvature": stage_kappa * mode}
        if not self.batched or bool(ok.all()):
            return new_params, new_state
        # Undo the non-finite runs only: their θ and state stay those of the last finite step.
        kept = keep_runs(ok, dict(new_state, losses=None), dict(state, losses=None))
        kept["losses"] = torch.where(ok, memory["losses"], state["losses"].to(feats.dtype))
        return [torch.where(_expand(ok, a, True), a, p) for a, p in zip(new_params, params)], kept
