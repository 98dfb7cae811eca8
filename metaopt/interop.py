"""higher interoperability: ``higher.innerloop_ctx(model, GARO(...))`` differentiates through GARO.

Importing this module registers ``DifferentiableGARO`` for ``metaopt.optim.GARO`` with
``higher.register_optim`` (``import metaopt`` does it). Its ``_update`` calls the same
``GARORule.apply`` as the runtime optimizer and the meta-training unrolls (one rule, two callers;
docs/architecture.md), so the
three paths cannot drift apart; ``tests/test_higher_interop.py`` checks that higher's
meta-gradient equals metaopt's functional one.

Two things to know:

* higher's ``_update`` receives gradients but not the loss; ``DifferentiableGARO.step`` keeps the
  loss it is given so the controller sees the same loss features as in the other paths.
* The controller state (hidden state, feature statistics) is copied from the optimizer when the
  context opens and evolves inside the differentiable optimizer only; the live optimizer is left
  untouched, as higher does for every optimizer's per-parameter state. Non-finite gradients are
  not skipped here (a meta-trainer wants to see them).
* ``GARO`` steps with its own copy of the controller it was given, so meta-gradients are taken
  with respect to ``opt.controller.parameters()`` (the module passed to ``GARO`` is not in the
  graph).
"""
from __future__ import annotations

from typing import Any

import higher
import higher.optim

from .garo.hyper import GAROHyper
from .garo.optimizer import GARO


class DifferentiableGARO(higher.optim.DifferentiableOptimizer):
    """higher's differentiable counterpart of ``metaopt.optim.GARO``."""

    def __init__(self, other: GARO, reference_params, *args: Any, **kwargs: Any) -> None:
        super().__init__(other, reference_params, *args, **kwargs)
        self.rule, self.controller = other.rule, other.controller
        self.granularity, self.base_lr = other.granularity, other.base_lr
        # GARO keeps its recurrent state on the host; the differentiable path runs on the device
        device = other.controller.head_lr.weight.device
        self.garo_state = {k: v.to(device, copy=True) for k, v in other.garo_state.items()}
        self._loss = None

    def step(self, loss, params=None, override=None, grad_callback=None, **kwargs):
        self._loss = loss
        try:
            return super().step(loss, params=params, override=override,
                                grad_callback=grad_callback, **kwargs)
        finally:
            self._loss = None  # do not keep the graph of this step alive

    def _update(self, grouped_grads, **kwargs) -> None:
        params, grads, lr, wd, ids, where = [], [], [], [], [], []
        tensor_index = 0
        for group_idx, (group, group_grads) in enumerate(zip(self.param_groups, grouped_grads)):
            for p_idx, (p, g) in enumerate(zip(group["params"], group_grads)):
                segment = {"global": 0, "group": group_idx,
                           "tensor": tensor_index}[self.granularity]
                tensor_index += 1
                if g is None:
                    continue
                params.append(p)
                grads.append(g)
                lr.append(group["lr"] / self.base_lr)  # lr_scale, as in GARO
                wd.append(group["weight_decay_scale"])
                ids.append(segment)
                where.append((group_idx, p_idx))
        if not params:
            return
        keys = self.rule.per_tensor_keys
        state = dict(self.garo_state)
        for key in keys:
            state[key] = [self.state[gi][pi].get(key, None) for gi, pi in where]
            state[key] = [v if v is not None else self.rule.init_tensor_state(p)[key]
                          for v, p in zip(state[key], params)]
        loss = self._loss.reshape(()) if self._loss is not None else None
        new_params, new_state = self.rule.apply(
            params, grads, state,
            GAROHyper(self.controller, lr_scale=lr, weight_decay_scale=wd, segment_ids=ids),
            loss=loss)
        for i, (gi, pi) in enumerate(where):
            self.param_groups[gi]["params"][pi] = new_params[i]
            for key in keys:
                self.state[gi][pi][key] = new_state[key][i]
        self.garo_state = {k: v for k, v in new_state.items() if k not in keys}


higher.register_optim(GARO, DifferentiableGARO)
