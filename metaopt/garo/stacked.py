"""GARO's step on the stacked runs of a flat bucket, without ``vmap``: the meta path's fast form.

The vectorised engine advances runs of every family together as rows of one ``(R, N)`` tensor,
each row a run's tensors concatenated and zero-padded (``metaopt.meta.flat_buckets``). Its
generic step is ``torch.func.vmap(GARORule.step)``, which pays vmap's dispatch on each of the
step's ~200 operations, about as much as the operations themselves at the engine's sizes. This
is the same step written over the leading run dimension: a run is one tensor and one segment,
so its segment values are the rows of ``(R,)`` tensors (``(R, 1)`` in the state, as stacking
the runs' ``(S,)`` entries lays them out), its per-tensor buffers the rows of ``(R, N)`` ones.

It is ``GARORule.apply`` (``metaopt.garo.rule`` states the formulas) built from the same
definitions — ``signal_row``, ``validity``, ``progress``, ``prodigy_estimate``,
``distance_step_size``, ``distance_floor``, ``safe_sqrt``, the controller's own ``forward`` —
with the same operations in the same order, each reduction taken over a row (the norms as the
rule's differentiable path takes them; without a graph the rule's per-tensor norms are dot
products, equal to rounding), so the two agree to rounding in float64
(``tests/garo/test_stacked.py``: values, new states and meta-gradients against ``vmap`` of the
rule, in every direction, scale and feature set).
The zero padding stays exact: a padded coordinate has g = θ = 0, so every buffer stays 0 there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .features import (
    TENSOR_OPS,
    TINY,
    TINY_LOSS,
    distance_floor,
    distance_step_size,
    prodigy_beta,
    prodigy_estimate,
    progress,
    signal_row,
    symlog,
    validity,
)
from .scale import safe_sqrt

__all__ = ["stacked_step"]


def _row_norms(x: Tensor) -> Tensor:
    """(R,) each row's 2-norm as the rule's ``segment_norms(tensor_norms([x_r]))`` takes it under
    vmap: the tensor's norm, then the norm of that one-entry stack."""
    return torch.linalg.vector_norm(torch.linalg.vector_norm(x, dim=1).unsqueeze(1), dim=1)


def _column(x: Tensor) -> Tensor:
    """(R,) -> (R, 1): a per-run value against a row of coordinates, or as a one-segment entry."""
    return x.unsqueeze(1)


def stacked_step(rule, controller, params: Tensor, grads: Tensor, loss: Tensor,
                 state: dict) -> tuple[Tensor, dict]:
    """One GARO step of ``R`` runs, each one tensor and one segment: ``params``, ``grads``
    ``(R, N)``, ``loss`` ``(R,)``, ``state`` the runs' ``GARORule.init`` states stacked along a
    leading dimension (per-tensor buffers one-entry lists of ``(R, N)`` tensors). Returns the
    new parameters and state, laid out alike; the lr and decay multipliers are 1 (the learned
    rule's)."""
    feature_gradients, relative = rule.feature_gradients, controller.features == "relative"
    step, hidden = state["step"], state["hidden"][:, 0]
    ctrl_dtype, dtype = hidden.dtype, params.dtype
    gnorm, pnorm = _row_norms(grads), _row_norms(params)
    if not feature_gradients:
        gnorm, pnorm = gnorm.detach(), pnorm.detach()
    log_gnorm = torch.log(gnorm.to(ctrl_dtype) + TINY)
    started = (step > 0).to(ctrl_dtype)
    ones = torch.ones_like(log_gnorm)
    extra = {}
    if relative:  # log ‖g‖ − log ‖g_0‖ and L / |L_0|: the first step sets the references
        extra["ref_log_grad_norm"] = torch.where(started > 0, state["ref_log_grad_norm"][:, 0],
                                                 log_gnorm)
    loss_value = (loss if feature_gradients else loss.detach()).to(ctrl_dtype)
    if relative:
        extra["ref_loss"] = torch.where(state["loss_seen"] > 0, state["ref_loss"],
                                        loss_value.detach().abs() + TINY_LOSS)
        loss_value = loss_value / extra["ref_loss"]
    sym = symlog(loss_value)
    ref = extra["ref_log_grad_norm"] if relative else torch.zeros_like(log_gnorm)
    signal = torch.stack(signal_row(log_gnorm, ref, state["prev_log_grad_norm"][:, 0], sym,
                                    state["prev_symlog_loss"][:, 0],
                                    state["prev_update_ratio"][:, 0], TENSOR_OPS), dim=1)
    valid = torch.stack(validity(ones, started, ones, state["loss_seen"]), dim=1)
    args = (signal, valid, step, hidden, state["feature_mean"][:, 0], state["feature_var"][:, 0])
    if relative:
        horizon = state["horizon"]
        args += (torch.stack(progress(step.to(ctrl_dtype), horizon,
                                      (horizon > 0).to(ctrl_dtype), TENSOR_OPS), dim=1),)
    out = controller(*args)
    eps_scale = (extra["ref_log_grad_norm"].exp() if relative else ones).detach()
    step_size = out.lr
    if rule.scale != "none":
        root_n = state["tensor_numel"].to(ctrl_dtype).sum(1).clamp_min(1).sqrt()
        floor = distance_floor(pnorm.to(ctrl_dtype) / root_n)
    if rule.scale == "distance":
        rms = _row_norms(state["displacement"][0]).to(ctrl_dtype) / root_n
        extra["distance_max"] = torch.where(
            started > 0, torch.maximum(state["distance_max"][:, 0], rms), floor)
        step_size = distance_step_size(out.lr, extra["distance_max"], step.to(ctrl_dtype),
                                       TENSOR_OPS)
    elif rule.scale == "prodigy":
        l1 = state["prodigy_sum"][0].abs().sum(1).to(ctrl_dtype)
        estimate = prodigy_estimate(state["prodigy_d"][:, 0], state["prodigy_numerator"][:, 0],
                                    l1, TENSOR_OPS)
        extra["prodigy_d"] = torch.where(started > 0, estimate, floor)
        step_size = out.lr * extra["prodigy_d"]

    # the update (step 3), each run's scalars a column against its row of coordinates
    p, g, buf = params, grads, state["momentum_buffer"][0]
    lr, mom = _column(step_size.to(dtype)), _column(out.momentum.to(dtype))
    wd = _column(out.weight_decay.to(dtype))
    new_state = {}
    if rule.direction == "sgd":
        buf = torch.addcmul(torch.addcmul(g, p, wd), buf, mom)
        direction = buf
    else:
        bias_correction2 = 1 - rule.beta2 ** (step + 1).to(dtype)
        v = state["exp_avg_sq"][0] * rule.beta2 + (1 - rule.beta2) * g * g
        new_state["exp_avg_sq"] = [v]
        guard = _column(rule.eps * eps_scale.to(dtype))
        u = g / (safe_sqrt(v / _column(bias_correction2)) + guard)
        buf = torch.addcmul(u, buf, mom)
        direction = torch.addcmul(buf, p, wd)
    new_state["momentum_buffer"] = [buf]
    new_params = torch.addcmul(p, direction, lr, value=-1)
    if rule.scale == "prodigy":  # λ = a·d_t (metaopt.garo.scale.prodigy_numerator)
        beta3 = prodigy_beta(rule.beta2)
        weight = lr * _column(extra["prodigy_d"].to(dtype))
        contribution = -weight[:, 0] * (g * state["displacement"][0]).sum(1)
        new_state["prodigy_sum"] = [torch.add(state["prodigy_sum"][0] * beta3, g * weight)]
        previous = state["prodigy_numerator"][:, 0]
        extra["prodigy_numerator"] = previous * beta3 + contribution.to(previous.dtype)
    if rule.scale != "none":
        new_state["displacement"] = [torch.addcmul(state["displacement"][0], direction, lr,
                                                   value=-1)]
    # ‖Δθ‖ = |a|·‖direction‖, read by the next step's update-ratio feature
    step_norm = lr[:, 0].abs() * torch.linalg.vector_norm(direction, dim=1)
    update_norm = torch.linalg.vector_norm(_column(step_norm), dim=1)
    if not feature_gradients:
        update_norm = update_norm.detach()
    ratio = update_norm.to(ctrl_dtype) / (pnorm.to(ctrl_dtype) + TINY)

    result = dict(state)
    result.update(
        step=step + 1, hidden=_column(out.hidden), feature_mean=_column(out.feature_mean),
        feature_var=_column(out.feature_var), prev_log_grad_norm=_column(log_gnorm),
        prev_symlog_loss=_column(sym), loss_seen=torch.maximum(state["loss_seen"], ones),
        prev_update_ratio=_column(ratio), lr=_column(step_size),
        momentum=_column(out.momentum), weight_decay=_column(out.weight_decay))
    for key, value in extra.items():  # (S,) entries as (R, 1); ref_loss is one per run
        result[key] = value if key == "ref_loss" else _column(value)
    result.update(new_state)
    return new_params, result
