"""GARO's update math, written once for the runtime optimizer, higher, and meta-training unrolls.

GARO (Global Adaptive Recurrent Optimizer): ("h_t = RNN(grad_t, h_{t-1}),
θ_{t+1} = θ_t − f(h_t)·update_t"). One step, for tensors ``i`` in segment ``s(i)`` (segment 0
only for GARO's original global controller; one per group or tensor for the layer-wise variant):

1. features of segment ``s`` (see ``metaopt.garo.controller.SIGNAL_FEATURES``)::

       log ‖g‖_s,  Δ log ‖g‖_s,  symlog L,  Δ symlog L,  log(‖Δθ_{t-1}‖_s / ‖θ_{t-1}‖_s)

   with ``‖·‖_s`` the 2-norm over all tensors of the segment and ``symlog L = sign(L)·log1p|L|``.
   A controller with ``features="relative"`` reads them relative to the run's first step,
   ``log ‖g‖_s − log ‖g_0‖_s`` and ``symlog(L / |L_0|)`` (the rest are already ratios), so that a
   loss ``c·L`` (any ``c > 0``) gives the same inputs; it also reads the training progress
   ``[min(t/T, 1), 1]`` when the run's horizon ``T`` is known (``[0, 0]`` otherwise);
2. ``lr_t, mom_t, wd_t, h_t = controller(features, h_{t-1})`` (one value per segment);
3. with ``a_i = lr_i·lr_t`` (``lr_i`` the tensor's ``lr_scale``), ``μ = mom_t`` and
   ``λ_i = wd_i·wd_t`` (``wd_i`` its ``weight_decay_scale``; ``metaopt.garo.hyper``):

   * ``direction="sgd"`` (momentum SGD, coupled L2 decay as in ``torch.optim.SGD``)::

         b_i ← μ b_i + (g_i + λ_i θ_i);      θ_i ← θ_i − a_i b_i

   * ``direction="adam"`` (Adam's second-moment normalisation, decoupled decay as in AdamW)::

         v_i ← β₂ v_i + (1−β₂) g_i²;   u_i = g_i / (√(v_i / (1−β₂^{t+1})) + ε)
         b_i ← μ b_i + u_i;             θ_i ← θ_i − a_i (b_i + λ_i θ_i)

With ``direction="adam"`` and relative features the guard is relative too, ``ε·‖g_0‖_s`` (the
segment's first gradient norm), so ``u_i`` is homogeneous of degree 0 in ``g`` and the whole step
is invariant to the loss's scale up to rounding (a fixed ``ε`` breaks it where ``|g_i| ≲ ε``, e.g.
a loss scaled by 0.01). The square root's derivative is taken as 0 where ``v_i = 0`` (coordinates
whose gradient has always been 0, e.g. constant-zero pixels), where the forward value is 0 anyway;
otherwise the meta-gradient there is ``0·∞ = NaN``.

With ``scale="distance"`` (scale-free GARO) the controller's ``lr_t`` is a multiplier of a step
size the rule estimates online, so the controller learns the schedule's shape and corrections,
not the task's order of magnitude. The estimate is DoG's (Ivgi, Hinder & Carmon 2023,
``η_t = r̄_t / √Σ_{k≤t} ‖g_k‖²``) for the adam direction's unit-scale coordinates, per segment ``s``
of ``n_s`` elements::

    δ_i ← δ_i − a_i·direction_i                (the displacement θ_i − θ_{i,0} the steps made)
    r̄_t = max(r̄_{t−1}, ‖δ‖_s / √n_s),          r̄_0 = r_ε = 10⁻⁴·(1 + ‖θ_0‖_s / √n_s)
    d_t = r̄_t / √(t + 1),                      a_i = lr_i · lr_t · d_t

(each coordinate of ``u`` has mean square ≈ 1, so ``Σ_k ‖u_k‖²/n_s ≈ t + 1``). ``d_t`` grows
geometrically while the iterates travel in one direction and stalls at the distance to the
region they settle in, as Prodigy's and D-Adaptation's ``d`` does; it is differentiable in the
unroll, so meta-training sees how ``lr_t`` moves it. ``state["lr"]`` holds the step size used,
``lr_t·d_t``.

With ``scale="prodigy"`` (adam direction only) ``d_t`` is instead Prodigy's (Mishchenko &
Defazio 2023) lower bound on the distance to the solution, per segment, with ``λ_i = a_i·d_t``
and ``β₃ = √β₂`` (``metaopt.garo.features.prodigy_estimate``)::

    d_t = max(d_{t−1}, r_{t−1} / ‖s_{t−1}‖₁),    d_0 = r_ε,         a_i = lr_i · lr_t · d_t
    r_t = β₃ r_{t−1} + Σ_i λ_i ⟨g_i, −δ_i⟩,       s_i ← β₃ s_i + λ_i g_i

It does not decay with ``t`` (the controller owns the schedule) and, while the gradients keep
their direction, grows by a factor ``1 + lr_t`` a step — from ``r_ε`` to a step size of 1 in
tens of steps, where DoG's estimate, growing like ``exp(2·lr_t·√t)``, needs hundreds.

With the controller frozen at constants (lr, μ, λ) the first is exactly
``torch.optim.SGD(lr, momentum=μ, weight_decay=λ)`` and, for μ = 0, the second is
``torch.optim.AdamW(lr, betas=(0, β₂), eps=ε, weight_decay=λ)``; the tests use both as oracles.

Steps 1–2 and the recurrent state the step leaves are ``metaopt.garo.recurrence``'s; step 3, the
update, is ``GARORule.apply``'s.

Nothing here mutates its inputs and every operation is differentiable, so a meta-trainer can call
``step`` with a ``create_graph=True`` ``grad_fn`` and backpropagate into the controller weights.
By default the controller's *inputs* are detached (``feature_gradients=False``): the meta-gradient
reaches the weights through the emitted hyperparameters but not through ∂(features)/∂θ, the
approximation of Andrychowicz et al. (2016) that avoids second derivatives of the gradient norm.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rules.base import GradFn, State, TensorList
from .features import SCALE_BUFFERS, SCALE_KEYS, prodigy_beta
from .hyper import GAROHyper
from .recurrence import control, next_global_state, reads_relative_features
from .scale import prodigy_numerator, safe_sqrt, tensor_norms

DIRECTIONS = ("sgd", "adam")
#: ``"none"``: lr_t is the step size (the seed); ``"distance"``: lr_t multiplies DoG's d_t;
#: ``"prodigy"``: lr_t multiplies Prodigy's d_t
SCALES = tuple(SCALE_KEYS)


@dataclass(frozen=True)
class GARORule:
    """The GARO step as a pure function of (params, grads, state, controller).

    Args:
        direction: ``"sgd"`` (momentum SGD, the seed) or ``"adam"`` (RMS-normalised gradient).
        beta2, eps: the second-moment decay and denominator guard of the ``"adam"`` direction.
        feature_gradients: keep the graph from the parameters into the controller's features
            (default False: features are detached, see the module docstring).
        scale: ``"none"`` (lr_t is the step size, the seed), ``"distance"`` (lr_t multiplies
            DoG's online estimate d_t) or ``"prodigy"`` (lr_t multiplies Prodigy's d_t; adam
            direction); module docstring.

    ``hyper`` for ``step``/``apply``: a ``GAROHyper`` (``metaopt.garo.hyper``):
        ``controller`` (required): a ``GAROController`` or ``BoundController``;
        ``lr_scale``, ``weight_decay_scale``: per-tensor multipliers of lr_t and wd_t (float or
        tensor, default 1.0); ``segment_ids``: per-tensor segment index (default all 0).
    """

    direction: str = "sgd"
    beta2: float = 0.999
    eps: float = 1e-8
    feature_gradients: bool = False
    scale: str = "none"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale: must be one of {SCALES}, got {self.scale!r}")
        if self.scale == "prodigy" and self.direction != "adam":
            raise ValueError("scale='prodigy' needs direction='adam' (Prodigy's d is a step size "
                             "for unit-scale coordinates)")
        if not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta2: must lie in [0, 1), got {self.beta2!r}")
        if not self.eps > 0:
            raise ValueError(f"eps: must be > 0, got {self.eps!r}")

    @property
    def per_tensor_keys(self) -> tuple[str, ...]:
        """State entries that are lists with one tensor per parameter (the rest are global)."""
        keys = ("momentum_buffer", "exp_avg_sq") if self.direction == "adam" \
            else ("momentum_buffer",)
        return keys + SCALE_BUFFERS[self.scale]

    def init_global(self, controller, num_segments: int = 1, device=None,
                    horizon: int | None = None) -> State:
        """The per-run recurrent state: controller state, feature memories, step count.

        ``horizon``: the run's total number of steps ``T`` when known (the progress input of
        relative-feature controllers); stored as a float, 0 meaning unknown.
        """
        if horizon is not None and not (isinstance(horizon, int) and horizon >= 1):
            raise ValueError(f"horizon: must be an int >= 1 or None, got {horizon!r}")
        state = dict(controller.initial_state(num_segments, device))
        ref = state["hidden"]
        zeros = ref.new_zeros(num_segments)
        state.update(step=torch.zeros((), dtype=torch.int64, device=ref.device),
                     prev_log_grad_norm=zeros, prev_symlog_loss=zeros.clone(),
                     loss_seen=ref.new_zeros(()), prev_update_ratio=zeros.clone(),
                     lr=zeros.clone(), momentum=zeros.clone(), weight_decay=zeros.clone())
        if reads_relative_features(controller):
            state.update(ref_log_grad_norm=zeros.clone(), ref_loss=ref.new_ones(()),
                         horizon=ref.new_tensor(float(horizon or 0)))
        state.update({key: zeros.clone() for key in SCALE_KEYS[self.scale]})
        return state

    def init_tensor_state(self, param: Tensor) -> dict[str, Tensor]:
        """The state of one parameter tensor (zero buffers)."""
        return {k: torch.zeros_like(param, memory_format=torch.preserve_format)
                for k in self.per_tensor_keys}

    def init(self, params: Sequence[Tensor], controller, num_segments: int = 1,
             horizon: int | None = None) -> State:
        """Full state: ``init_global`` plus per-tensor lists under ``per_tensor_keys`` and, for
        a scale-free rule, the tensors' element counts (``features.RUN_CONSTANTS``)."""
        device = params[0].device if params else None
        state = self.init_global(controller, num_segments, device, horizon)
        for key in self.per_tensor_keys:
            state[key] = [torch.zeros_like(p, memory_format=torch.preserve_format)
                          for p in params]
        if self.scale != "none":  # (RUN_CONSTANTS: n_s survives a meta-batch's zero padding)
            state["tensor_numel"] = state["hidden"].new_tensor([float(p.numel()) for p in params])
        return state

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             hyper: GAROHyper) -> tuple[TensorList, State]:
        """The ``Rule`` interface: evaluate ``grad_fn`` at ``params``, then ``apply``."""
        loss, grads = grad_fn(params)
        return self.apply(params, grads, state, hyper, loss=loss)

    def apply(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
              hyper: GAROHyper, loss: Tensor | None = None,
              grad_norms: Sequence[Tensor] | None = None) -> tuple[TensorList, State]:
        """One GARO step from given gradients (``loss`` optional; ``grad_norms`` if known).

        Pure and differentiable: the path of meta-training unrolls and of higher.
        """
        ctx = control(self, params, grads, state, hyper, loss, grad_norms)
        params, grads, out, ids = ctx["params"], ctx["grads"], ctx["out"], ctx["ids"]

        def pick(values: Tensor, i: int) -> Tensor:
            return values[ids[i]].to(params[i].dtype)

        new_params, new_state = [], {k: [] for k in self.per_tensor_keys}
        directions, step_sizes = [], []
        bias_correction2 = None
        contributions, beta3 = [], prodigy_beta(self.beta2)
        if self.direction == "adam":
            bias_correction2 = 1 - self.beta2 ** (state["step"] + 1).to(params[0].dtype)
        for i, (p, g) in enumerate(zip(params, grads)):
            lr_i = pick(ctx["step_size"], i) * ctx["lr_mult"][i]
            mom_i = pick(out.momentum, i)
            wd_i = pick(out.weight_decay, i) * ctx["wd_mult"][i]
            buf = state["momentum_buffer"][i]
            if self.direction == "sgd":
                buf = torch.addcmul(torch.addcmul(g, p, wd_i), buf, mom_i)
                direction = buf
            else:
                v = state["exp_avg_sq"][i] * self.beta2 + (1 - self.beta2) * g * g
                new_state["exp_avg_sq"].append(v)
                u = g / (safe_sqrt(v / bias_correction2) + self.eps * pick(ctx["eps_scale"], i))
                buf = torch.addcmul(u, buf, mom_i)
                direction = torch.addcmul(buf, p, wd_i)
            new_state["momentum_buffer"].append(buf)
            new_params.append(torch.addcmul(p, direction, lr_i, value=-1))
            if self.scale == "prodigy":  # λ_i = a_i·d_t (scale.prodigy_numerator)
                weight = lr_i * pick(ctx["extra"]["prodigy_d"], i)
                contributions.append(-weight * (g * state["displacement"][i]).sum())
                new_state["prodigy_sum"].append(
                    torch.add(state["prodigy_sum"][i] * beta3, g * weight))
            if self.scale != "none":
                new_state["displacement"].append(
                    torch.addcmul(state["displacement"][i], direction, lr_i, value=-1))
            directions.append(direction)
            step_sizes.append(lr_i.abs())
        if self.scale == "prodigy":
            ctx["extra"]["prodigy_numerator"] = prodigy_numerator(state, contributions,
                                                                  ctx["ids_t"], beta3)
        # ‖Δθ_i‖ = |a_i|·‖direction_i‖, read by the next step's update-ratio feature
        step_norms = [a * d for a, d in zip(step_sizes, tensor_norms(directions))]
        result = next_global_state(self, ctx, state, step_norms)
        result.update(new_state)
        return new_params, result

    @torch.no_grad()
    def apply_(self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State,
               hyper: GAROHyper, loss: Tensor | None = None,
               grad_norms: Sequence[Tensor] | None = None) -> State | None:
        """The runtime fast path: ``apply`` computed in place with fused foreach kernels.

        Mutates ``params`` and the per-tensor buffers in ``state``; returns the new state, or
        None — touching nothing — when a gradient (or the loss) is not finite. Those values never
        reach the controller: its non-finite inputs are zeroed on such a step and its output
        discarded.
        The controller's outputs come to the host once per step (with the features, whose
        finiteness decides the skip) so the updates run as foreach ops with Python scalars,
        tensors grouped by equal (lr, momentum, weight decay); the step count and the other
        gradient-independent inputs are read on the host first. Implemented in
        ``metaopt.garo.runtime`` with as few tensor ops as it can (small models are
        dispatch-bound); ``tests/garo/test_rule.py`` and ``test_runtime.py`` prove in
        float64 that this path equals ``apply``.
        """
        from .runtime import apply_inplace  # (it imports this module's constants)
        return apply_inplace(self, params, grads, state, hyper, loss, grad_norms)
