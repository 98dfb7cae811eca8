"""``HybridRule``'s state and the switching features it reads from it (the hybrid GD–ODE
optimizer; the step that uses them is ``metaopt.hybrid.rule``).

* ``init``: the state's layout — both modules' states, the step counter, the switch's mode, dwell
  (starting at ``min_dwell``: the first decision is free), applied gate, P(ODE) and gradient
  evaluations so far, and the memories the features read: g_{t−1} and ‖g_{t−1}‖, ‖θ_t − θ_{t−1}‖,
  ‖g_0‖, the curvature estimates and the window of the last W losses;
* ``HybridRuleState.features``: the switching ``FEATURES`` at θ_t from the step's (L_t, g_t) and
  those memories (each computed by ``metaopt.hybrid.criteria``)::

      r_t = log(‖g_t‖ / ‖g_0‖)                       gradient magnitude
      κ_t = ‖g_t − g_{t−1}‖ / ‖θ_t − θ_{t−1}‖         secant curvature (or |λ_max| of a Lanczos
                                                      probe every ``probe_every`` steps)
      s_t = log(lr·κ_t)                              stability
      π_t = (L_{t−W} − L_t) / (|L_{t−W}| + |L_t|)    relative progress over W steps
      m_{t−1}, log(1 + dwell)                        current mode and time spent in it

  detached unless ``feature_gradients`` (Andrychowicz et al.'s approximation, as GARO's);
* ``trace``: the per-step record of a state.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from ..rules.base import State
from .criteria import (
    _TINY,
    NUM_FEATURES,
    lanczos_curvature,
    relative_progress,
    run_norms,
    secant_curvature,
    switch_features,
)
from .evaluations import CountedGradFn

__all__ = ["HybridRuleState", "trace"]


class HybridRuleState:
    """Mixin of ``HybridRule`` (module docstring): ``init`` and ``features`` read its fields
    (``gd``, ``ode``, ``batched``, ``min_dwell``, ``window``, ``curvature``, ``probe_every``,
    ``probe_iters``, ``feature_gradients``)."""

    def init(self, params: Sequence[Tensor], gd_state: State | None = None) -> State:
        ref = params[0]
        shape = (ref.shape[0],) if self.batched else ()
        zeros = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        # dwell starts at min_dwell: the first decision is free (an ODE-only policy steps ODE).
        return {"gd": self.gd.init(params) if gd_state is None else gd_state,
                "ode": self.ode.init(params), "step": 0, "mode": zeros,
                "dwell": zeros + self.min_dwell,
                "gate": zeros.clone(), "probability": zeros.clone(), "evaluations": zeros.clone(),
                "prev_grads": [torch.zeros_like(p) for p in params],
                "displacement_norm": zeros.clone(), "grad_norm0": zeros.clone(),
                "prev_grad_norm": zeros.clone(),
                "curvature": zeros.clone(), "stage_curvature": zeros.clone(),
                "losses": zeros.expand(self.window, *shape).clone(),
                "features": torch.zeros(*shape, NUM_FEATURES, dtype=ref.dtype,
                                        device=ref.device)}

    def features(self, params, grads, loss, state, hyper, grad_fn) -> tuple[Tensor, dict]:
        """``FEATURES`` at this step and the memories they update (detached unless
        ``feature_gradients``)."""
        keep = self.feature_gradients
        with contextlib.nullcontext() if keep else torch.no_grad():
            grads = list(grads) if keep else [g.detach() for g in grads]
            gnorm = run_norms(grads, self.batched)
            step = state["step"]  # an int, or one per run (runs of a meta-batch)
            first = step == 0
            norm0 = torch.where(first, gnorm, state["grad_norm0"]) if isinstance(step, Tensor) \
                else gnorm if first else state["grad_norm0"]
            ratio = torch.log(gnorm + _TINY) - torch.log(norm0 + _TINY)
            probes = 0
            if self.curvature == "secant":
                kappa = secant_curvature(grads, state["prev_grads"], state["displacement_norm"],
                                         self.batched, gnorm, state["prev_grad_norm"])
            elif state["step"] % self.probe_every == 0:
                counted = CountedGradFn(grad_fn, None, None)
                kappa = lanczos_curvature(counted, params, grads, self.probe_iters,
                                          hyper.generator or torch.Generator()
                                          .manual_seed(state["step"]))
                probes = counted.count
            else:
                kappa = state["curvature"]
            lr = hyper.stability_lr
            lr = lr.detach() if isinstance(lr, Tensor) else lr
            stability = torch.log(kappa * lr + _TINY)
            losses = state["losses"]
            seen = step.clamp(max=self.window) if isinstance(step, Tensor) \
                else min(step, self.window)
            if loss is not None:
                value = (loss if keep else loss.detach()).to(losses.dtype) \
                    .reshape(losses.shape[1:])
                losses = torch.cat([losses[1:], value.unsqueeze(0)])
                seen += 1
            progress = relative_progress(losses, seen if loss is not None else 0)
            feats = switch_features(ratio, stability, progress, state["mode"], state["dwell"])
        return feats, {"grad_norm0": norm0, "curvature": kappa, "losses": losses,
                       "prev_grad_norm": gnorm,
                       "prev_grads": grads, "probes": probes}


def trace(state: State) -> dict[str, Tensor]:
    """The per-step record: mode, applied gate, the policy's P(ODE), criterion values,
    gradient evaluations so far."""
    f = state["features"].detach()
    return {"mode": state["mode"], "gate": state["gate"].detach(),
            "probability": state["probability"],
            "log_grad_ratio": f[..., 0], "log_stability": f[..., 1], "progress": f[..., 2],
            "curvature": state["curvature"], "evaluations": state["evaluations"].detach()}
