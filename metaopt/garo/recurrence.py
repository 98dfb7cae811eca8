"""GARO's recurrence on tensors: the controller's side of ``GARORule.apply``.

GARO (Global Adaptive Recurrent Optimizer) steps ``h_t = RNN(grad_t, h_{t−1})``. This module
holds the controller's part of the pure, differentiable step (``metaopt.garo.rule``, whose module
docstring states the formulas): steps 1–2 before the update, and the recurrent state after it.
Per segment ``s``:

* ``control``: the features of ``metaopt.garo.features.signal_row``::

      log ‖g‖_s − ref_s,  Δ log ‖g‖_s,  symlog L,  Δ symlog L,  log(‖Δθ_{t−1}‖_s / ‖θ_{t−1}‖_s)

  (relative features: ``ref_s = log ‖g_0‖_s`` and ``L / |L_0|``, the first step setting both
  references), then ``lr_t, mom_t, wd_t, h_t = controller(features, h_{t−1})`` and the step size
  ``lr_t``, or ``lr_t·d_t`` with DoG's (``scale="distance"``) or Prodigy's (``"prodigy"``)
  estimate ``d_t`` (``metaopt.garo.scale``);
* ``next_global_state``: the recurrent state the next step reads, ``h_t``, the feature
  statistics, this step's features and the update ratio ``‖θ_{t+1} − θ_t‖_s / ‖θ_t‖_s``.

Segments without tensors this step keep their state. The runtime computes the same from host
floats (``metaopt.garo.runtime``), equal in float64.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..rules.base import State, per_tensor
from .features import (
    TENSOR_OPS,
    TINY,
    TINY_LOSS,
    distance_step_size,
    progress,
    signal_row,
    symlog,
    validity,
)
from .hyper import step_inputs
from .scale import distance_max, prodigy_d, segment_norms, tensor_norms


def reads_relative_features(controller) -> bool:
    return getattr(controller, "features", "seed") == "relative"


def control(rule, params, grads, state, hyper, loss, grad_norms) -> dict:
    """Features and the controller step (steps 1–2 of ``metaopt.garo.rule``'s docstring)."""
    params, grads, hyper, ids = step_inputs(params, grads, hyper)
    n = len(params)
    controller = hyper.controller
    hidden = state["hidden"]
    num_segments = hidden.shape[0]
    ids_t = None if num_segments == 1 else torch.tensor(ids, device=hidden.device)
    step = state["step"]

    if grad_norms is None:
        grad_norms = tensor_norms(grads)
    gnorm = segment_norms(grad_norms, ids_t, num_segments)
    pnorm = segment_norms(tensor_norms(params), ids_t, num_segments)
    if not rule.feature_gradients:
        gnorm, pnorm = gnorm.detach(), pnorm.detach()
    ctrl_dtype = hidden.dtype
    relative = reads_relative_features(controller)
    log_gnorm = torch.log(gnorm.to(ctrl_dtype) + TINY)
    started = (step > 0).to(ctrl_dtype).expand(num_segments)
    ones = torch.ones_like(log_gnorm)
    extra = {}
    if relative:  # log ‖g‖ − log ‖g_0‖: the first step sets the reference
        extra["ref_log_grad_norm"] = torch.where(started > 0, state["ref_log_grad_norm"],
                                                 log_gnorm)
    if loss is not None:
        loss_value = (loss if rule.feature_gradients else loss.detach()).reshape(())
        loss_value = loss_value.to(ctrl_dtype)
        if relative:  # symlog(L / |L_0|): the first loss seen sets the reference
            extra["ref_loss"] = torch.where(state["loss_seen"] > 0, state["ref_loss"],
                                            loss_value.detach().abs() + TINY_LOSS)
            loss_value = loss_value / extra["ref_loss"]
        sym = symlog(loss_value).expand(num_segments)
        has_loss, had_loss = ones, state["loss_seen"].expand(num_segments)
    else:
        sym = state["prev_symlog_loss"]
        has_loss, had_loss = torch.zeros_like(ones), torch.zeros_like(ones)
    ref = extra["ref_log_grad_norm"] if relative else torch.zeros_like(log_gnorm)
    signal = torch.stack(signal_row(log_gnorm, ref, state["prev_log_grad_norm"], sym,
                                    state["prev_symlog_loss"], state["prev_update_ratio"],
                                    TENSOR_OPS), dim=1)
    valid = torch.stack(validity(ones, started, has_loss, had_loss), dim=1)
    args = (signal, valid, step, hidden, state["feature_mean"], state["feature_var"])
    if relative:
        horizon = state["horizon"]
        inputs = progress(step.to(ctrl_dtype), horizon, (horizon > 0).to(ctrl_dtype),
                          TENSOR_OPS)
        args += (torch.stack(inputs).expand(num_segments, 2),)
    out = controller(*args)
    # ε relative to the first gradient norm keeps the adam direction scale-free (module doc)
    eps_scale = extra["ref_log_grad_norm"].exp() if relative else torch.ones_like(log_gnorm)
    step_size = out.lr
    if rule.scale == "distance":
        extra["distance_max"] = distance_max(params, state, ids_t, num_segments,
                                                   pnorm, started)
        step_size = distance_step_size(out.lr, extra["distance_max"], step.to(ctrl_dtype),
                                       TENSOR_OPS)
    elif rule.scale == "prodigy":
        extra["prodigy_d"] = prodigy_d(params, state, ids_t, num_segments, pnorm, started)
        step_size = out.lr * extra["prodigy_d"]
    return dict(params=params, grads=grads, ids=ids, ids_t=ids_t, out=out,
                step_size=step_size,
                lr_mult=per_tensor(hyper.lr_scale, n),
                wd_mult=per_tensor(hyper.weight_decay_scale, n),
                log_gnorm=log_gnorm, sym=sym, has_loss=has_loss, pnorm=pnorm, extra=extra,
                eps_scale=eps_scale.detach())

def next_global_state(rule, ctx: dict, state: State, step_norms: Sequence[Tensor]) -> State:
    """The new global state (after step 3); segments without tensors this step keep theirs."""
    out, ids_t, hidden = ctx["out"], ctx["ids_t"], state["hidden"]
    num_segments = hidden.shape[0]
    update_norm = segment_norms(step_norms, ids_t, num_segments)
    if not rule.feature_gradients:
        update_norm = update_norm.detach()
    active = None
    if num_segments > 1:
        active = torch.zeros(num_segments, dtype=torch.bool, device=hidden.device)
        active[ids_t] = True

    def keep(new: Tensor, old: Tensor) -> Tensor:
        if num_segments == 1:  # the one segment is always active
            return new
        mask = active.view(-1, *([1] * (new.dim() - 1)))
        return torch.where(mask, new, old)

    ctrl_dtype = hidden.dtype
    ratio = update_norm.to(ctrl_dtype) / (ctx["pnorm"].to(ctrl_dtype) + TINY)
    result = dict(state)
    result.update(
        step=state["step"] + 1,
        hidden=keep(out.hidden, hidden),
        feature_mean=keep(out.feature_mean, state["feature_mean"]),
        feature_var=keep(out.feature_var, state["feature_var"]),
        prev_log_grad_norm=keep(ctx["log_gnorm"], state["prev_log_grad_norm"]),
        prev_symlog_loss=keep(ctx["sym"], state["prev_symlog_loss"]),
        loss_seen=torch.maximum(state["loss_seen"], ctx["has_loss"].max()),
        prev_update_ratio=keep(ratio, state["prev_update_ratio"]),
        lr=keep(ctx["step_size"], state["lr"]),
        momentum=keep(out.momentum, state["momentum"]),
        weight_decay=keep(out.weight_decay, state["weight_decay"]))
    for key, value in ctx["extra"].items():  # the relative features' references
        result[key] = keep(value, state[key]) if value.dim() else value
    return result
