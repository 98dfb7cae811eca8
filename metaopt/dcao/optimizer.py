"""DCAO: momentum SGD whose lr / momentum / weight decay follow Lanczos curvature probes.

DCAO (dynamic curvature-aware optimizer). A thin torch.optim adapter: the schedule and the
step are ``metaopt.dcao.rule``, the probe is ``metaopt.rules.curvature`` (Lanczos on HVPs),
run when due by ``metaopt.dcao.probing``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..adapters.closure_rule import check_non_negative, check_positive
from ..adapters.grad_evals import GradEvalCounter
from ..adapters.non_finite import NonFiniteSteps, all_finite, check_loss, loss_is_finite
from ..adapters.state_loading import (
    CheckedStateLoad,
    StateDictError,
    check_counter,
    check_tensor_like,
)
from ..rules.curvature import CurvatureProbe
from ..rules.lanczos import DEFAULT_TOL
from .probing import (  # noqa: F401  (clean_probe: a public name kept here)
    CurvatureProbing,
    clean_probe,
)
from .rule import SCHEDULES, dcao_schedule

# Per-probe fields kept in state_dict()["curvature"] (besides the per-parameter warm-start vector).
_PROBE_TENSORS = ("eigenvalues", "spectral_radius", "spectral_gap", "leading_gap", "residuals")


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")


class DCAO(GradEvalCounter, CheckedStateLoad, NonFiniteSteps, CurvatureProbing,
           torch.optim.Optimizer):
    r"""Dynamic Curvature-Aware Optimizer (DCAO).

    Every ``probe_every`` steps (first at step 0) the closure is run with the gradient's graph
    kept, and ``lanczos_iters`` at most Hessian-vector products (double backward) give the top-``k``
    eigenvalues by magnitude, the spectral radius ρ and spectral gap γ_H (warm-started from the
    previous top eigenvector). In between, plain momentum SGD runs with

    * ``schedule="exponential"`` (DCAO's own): η = η₀e^{−αρ}, μ = μ₀e^{−βγ_H}, λ = λ₀e^{−γρ}
    * ``schedule="edge_of_stability"``: η = min(η₀, c·2/ρ) (Cohen et al. 2021), same μ, λ laws

    where η₀, μ₀, λ₀ are each group's ``lr``, ``momentum``, ``weight_decay`` (so lr schedulers act
    on η₀). ``step()`` needs a closure at probe steps only. Pass ``model=`` when it has dropout or
    batch-norm: probes then run in eval mode on a separate closure call, with buffers and RNG
    restored, so they are deterministic and leave no trace on training.

    Defaults (measured, scripts/benchmarks/dcao.py and scripts/dcao_study.py, 2 CPU threads):
    an HVP costs ≈ 2.2 gradient evaluations on the 1M-parameter MLP and a probe step ≈ 50 SGD
    steps, so ``probe_every=1000`` (DCAO's example) with ``lanczos_iters=20`` gives an
    amortised step ≈ 1.08× ``SGD(momentum=0.9, foreach=True)`` (target ≤ 1.10). 20 HVPs pin λ_1
    (ρ, which drives η) while the 5th Ritz value is still ~7% off on a 918-parameter MLP (30 HVPs:
    3e-5, 40: 4e-12), so γ_H is coarser than ρ. ``alpha=0.01``: the digits MLP's sharpness is
    ρ ≈ 1–10, where e^{−αρ} ∈ [0.9, 0.99], so η stays near η₀ and only sharp regions (ρ ≳ 100)
    cut it hard; ``beta=0.001`` and ``gamma=0.01`` likewise damp μ and λ only at large curvature.
    Short or full-batch runs, whose sharpness moves within tens of steps, want ``probe_every``
    ≈ 10 (as in the study).

    ``tol``: Lanczos stops early once every top-``k`` Ritz residual is ≤ ``tol·max|θ|``; the
    default 1e-6 lets 40 HVPs give the top 5 to ≤ 1e-6 relative on a 918-parameter MLP whose
    4th and 5th eigenvalues are 1.4 % apart (tol = 1e-3 stopped at ~32 HVPs with 2–4e-6).

    Stall guard (``stall_ratio`` r, ``reprobe_every``): on sharp problems DCAO's
    η = η₀e^{−αρ} collapses (Rosenbrock at (−1.5, 2): ρ ≈ 2,092, η ≈ 8e-12), the iterate stops
    moving and the next probe, ``probe_every`` steps later, sees the same ρ: frozen for good.
    So η is floored at min(r·η₀, c·2/ρ) (c = ``stability_factor``; see ``metaopt.dcao.rule``), and
    while the floor is active the curvature is re-probed every ``reprobe_every`` steps (it moves
    with the iterate, and the floor relies on it). Wherever αρ ≤ ln(1/r) (ρ ≤ 460 at the
    defaults) the guard is inert and DCAO's schedule runs unchanged; ``stall_ratio=0`` turns
    it off. Rosenbrock from (−1.5, 2), defaults: f = 12.5 → 12.495 after 20,000 steps without
    the guard; with it 5.6 after 1,000, 4.0 after 5,000 and 0.010 after 20,000 steps
    (``scripts/benchmarks/dcao_stall.py``).

    Non-finite steps (shared policy, ``metaopt.adapters.non_finite``): a step whose loss or gradient
    is not finite is refused before the probe and the update (parameters, momentum and the last
    probe kept, ``RuntimeWarning``; ``FloatingPointError`` after ``max_consecutive_skips`` in a
    row). Zero-size parameters take no part in the probe (they have no curvature); with only
    such parameters a probe step measures nothing. ``load_state_dict`` is validate-then-apply.

    ``last_curvature`` is the last ``CurvatureProbe`` (``eigenvalues``, ``spectral_radius``,
    ``spectral_gap``, ``step``, ``hvp_count`` …); ``history`` lists one summary dict per probe.
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9,
                 weight_decay: float = 0.0, probe_every: int = 1000, k: int = 5,
                 lanczos_iters: int = 20, alpha: float = 0.01, beta: float = 0.001,
                 gamma: float = 0.01, schedule: str = "exponential",
                 stability_factor: float = 0.9, tol: float = DEFAULT_TOL,
                 stall_ratio: float = 0.01, reprobe_every: int = 10,
                 model: nn.Module | None = None, seed: int = 0,
                 max_consecutive_skips: int = 20):
        check_non_negative("lr", lr)
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {momentum!r}")
        check_non_negative("weight_decay", weight_decay)
        _check_int("probe_every", probe_every, 1)
        _check_int("k", k, 1)
        _check_int("lanczos_iters", lanczos_iters, 1)
        if lanczos_iters < k:
            raise ValueError(f"lanczos_iters: must be >= k={k} to find k eigenvalues, "
                             f"got {lanczos_iters}")
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("tol", tol)):
            check_non_negative(name, value)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        check_positive("stability_factor", stability_factor)
        check_non_negative("stall_ratio", stall_ratio)
        if stall_ratio > 1:
            raise ValueError(f"stall_ratio: must be <= 1 (a floor above η₀), got {stall_ratio!r}")
        _check_int("reprobe_every", reprobe_every, 1)
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model: must be an nn.Module, got {type(model).__name__}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.probe_every, self.k, self.lanczos_iters, self.tol = probe_every, k, lanczos_iters, tol
        self.stall_ratio, self.reprobe_every = stall_ratio, reprobe_every
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.schedule, self.stability_factor = schedule, stability_factor
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_taken = 0
        self.last_curvature: CurvatureProbe | None = None
        self.history: list[dict] = []
        self._init_non_finite(max_consecutive_skips)

    _EXTRA = ("probe_every", "k", "lanczos_iters", "tol", "alpha", "beta", "gamma", "schedule",
              "stability_factor", "stall_ratio", "reprobe_every", "model", "generator",
              "steps_taken", "last_curvature", "history", "skipped_steps", "consecutive_skips",
              "max_consecutive_skips")

    def __getstate__(self):
        # torch.optim pickles only defaults/state/param_groups; probe settings and results too.
        return {**super().__getstate__(), **{name: getattr(self, name) for name in self._EXTRA}}

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if any(torch.is_complex(p) for p in params):
            # Lanczos needs a real symmetric Hessian; a complex loss landscape has none here.
            raise ValueError("DCAO does not support complex parameters (its curvature probe "
                             "needs a real symmetric Hessian); optimise torch.view_as_real(p) "
                             "as a real parameter instead")
        super().add_param_group(param_group)

    # ----------------------------------------------------------------------------- stepping
    def _active(self) -> list[Tensor]:
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("DCAO does not support sparse gradients")
        return params

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        if self._probe_due():
            if closure is None:
                raise RuntimeError(
                    f"DCAO.step() needs a closure at probe steps (the first step, then every "
                    f"{self.probe_every}): one that zeroes the grads, recomputes the loss, calls "
                    "backward() and returns the loss; Hessian-vector products need the graph")
            loss, finite = self._probe(closure)
        else:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = check_loss(closure(), "DCAO.step")
            self._count_grad_evals(1)  # the closure's, or the caller's backward into p.grad
            finite = loss_is_finite(loss) and all_finite([p.grad for p in self._active()])
        if not finite:
            self._refuse_step("loss or gradient")
            return loss
        self._update()
        self.steps_taken += 1
        self._accept_step()
        return loss

    def effective_hyperparameters(self, group: dict) -> tuple[float, float, float]:
        """The group's (η, μ, λ) after the schedule; the base values before the first probe."""
        probe = self.last_curvature
        rho = float(probe.spectral_radius) if probe is not None else 0.0
        gap = float(probe.spectral_gap) if probe is not None else 0.0
        return dcao_schedule(rho, gap, float(group["lr"]), float(group["momentum"]),
                             float(group["weight_decay"]), self.alpha, self.beta, self.gamma,
                             self.schedule, self.stability_factor, self.stall_ratio)

    def _update(self) -> None:
        # In-place foreach form of metaopt.dcao.rule.momentum_sgd (equal in float64:
        # tests/dcao/test_dcao).
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum, weight_decay = self.effective_hyperparameters(group)
            grads = [p.grad for p in params]
            if weight_decay != 0.0:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
            if group["momentum"] != 0.0:
                buffers = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if "momentum_buffer" not in state:  # b = μ·0 + g, exactly
                        state["momentum_buffer"] = torch.clone(g).detach()
                        buffers.append(None)
                    else:
                        buffers.append(state["momentum_buffer"])
                old = [b for b in buffers if b is not None]
                if old:
                    torch._foreach_mul_(old, momentum)
                    torch._foreach_add_(old, [g for g, b in zip(grads, buffers) if b is not None])
                grads = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_add_(params, grads, alpha=-lr)

    # ----------------------------------------------------------------------- (de)serialising
    def state_dict(self) -> dict:
        state = super().state_dict()
        probe = self.last_curvature
        curvature = {"steps_taken": self.steps_taken,
                     "generator_state": self.generator.get_state(),
                     "history": [dict(h) for h in self.history]}
        if probe is not None:
            curvature.update({name: getattr(probe, name).clone() for name in _PROBE_TENSORS})
            curvature.update(step=probe.step, hvp_count=probe.hvp_count,
                             converged=probe.converged)
        state["curvature"] = curvature
        return state

    # validate-then-apply load_state_dict (CheckedStateLoad): "curvature" is optional
    _extra_state_keys = {"curvature": False}

    def _param_state_template(self, param: Tensor) -> dict:
        return {"momentum_buffer": param, "curvature_vector": param}

    def _check_extra_state(self, extra: dict):
        curvature = extra.get("curvature")
        if curvature is None:
            return None
        where = "state_dict['curvature']"
        if not isinstance(curvature, dict):
            raise StateDictError(f"{where}: must be a dict")
        missing = sorted({"steps_taken", "generator_state", "history"} - set(curvature))
        if missing:
            raise StateDictError(f"{where}: missing keys {missing}")
        steps = check_counter(f"{where}['steps_taken']", curvature["steps_taken"])
        generator = torch.Generator()
        try:  # on a twin: a bad state must not reach self.generator
            generator.set_state(curvature["generator_state"].cpu())
        except (AttributeError, RuntimeError, TypeError) as error:
            raise StateDictError(f"{where}['generator_state']: not a generator state "
                                 f"({error})") from None
        history = curvature["history"]
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise StateDictError(f"{where}['history']: must be a list of dicts")
        probe = None
        if "eigenvalues" in curvature:
            absent = sorted({*_PROBE_TENSORS, "step", "hvp_count", "converged"} - set(curvature))
            if absent:
                raise StateDictError(f"{where}: missing probe keys {absent}")
            for name in _PROBE_TENSORS:
                if not isinstance(curvature[name], Tensor):
                    raise StateDictError(f"{where}[{name!r}]: must be a tensor")
            check_tensor_like(f"{where}['spectral_radius']", curvature["spectral_radius"],
                              torch.zeros((), dtype=torch.float64))
            probe = {name: curvature[name].to(torch.float64) for name in _PROBE_TENSORS}
            probe.update(hvp_count=check_counter(f"{where}['hvp_count']", curvature["hvp_count"]),
                         step=check_counter(f"{where}['step']", curvature["step"]),
                         converged=bool(curvature["converged"]))
        return steps, generator.get_state(), [dict(h) for h in history], probe

    def _apply_extra_state(self, prepared) -> None:
        if prepared is None:
            return
        self.steps_taken, generator_state, self.history, probe = prepared
        self.generator.set_state(generator_state)
        self.last_curvature = None
        if probe is not None:
            vectors = [self.state[p]["curvature_vector"] for group in self.param_groups
                       for p in group["params"] if "curvature_vector" in self.state[p]]
            self.last_curvature = CurvatureProbe(**probe, top_eigenvector=vectors)
