"""The hybrid rule's state inside ``HybridGDODE``, the torch.optim adapter of the hybrid GD–ODE
optimizer: where it lives, what it shows, how it is saved and restored.

``HybridRule``'s state (``metaopt.hybrid.rule_state``) is split by ``split_state``
(``metaopt.hybrid.runtime``): its per-parameter lists (both modules' buffers, the last gradient)
live in torch.optim's ``state[p]``, its optimizer-wide entries (mode, dwell, loss window, ‖g₀‖,
the curvature, GARO's recurrent state) in ``hybrid_state``. This mixin holds

* ``_rule_state``: the rule's state for a step's parameters, joined back from those two places
  (the rule's fresh state only where an entry is missing);
* ``mode``, ``last_trace``: the last step's decision and criterion values (``trace``);
* persistence: ``state_dict()["hybrid"]`` (the optimizer-wide state, the gradient evaluations,
  the learned policy's and the GARO controller's weights), its validate-then-apply load
  (``CheckedStateLoad``: every entry checked against the rule's fresh state as a template
  before anything changes) and the attributes a pickle carries.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..adapters.state_loading import (
    StateDictError,
    check_counter,
    check_tensor_like,
    checked_module_state,
)
from .rule_state import trace
from .runtime import join_state as _join
from .runtime import split_state as _split

__all__ = ["HybridStateSupport"]


class HybridStateSupport:
    """Mixin of ``HybridGDODE`` (module docstring), placed first among its bases."""

    # -- observability -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The mode of the last step (``"gd"`` before the first)."""
        if getattr(self.__dict__.get("_runtime"), "dirty", False):
            return "gd"  # (a step of a runtime GD path: no need to settle its state)
        mode = self.hybrid_state.get("mode")
        return "ode" if mode is not None and float(mode) > 0.5 else "gd"

    @property
    def last_trace(self) -> dict[str, float]:
        """Mode, gate probability, criterion values and gradient evaluations of the last step."""
        if not self.hybrid_state:
            return {}
        out = {k: float(v) for k, v in trace(_join(self.hybrid_state)).items()}
        out["gradient_evaluations"] = float(self.gradient_evaluations)
        return out

    # -- the rule's state ----------------------------------------------------------------------
    def _rule_state(self, params: list[Tensor]) -> dict:
        """The rule's state for ``params`` in ``_split`` form: each param's own entries, the
        optimizer-wide ones from ``hybrid_state``; the rule's fresh state only where an entry is
        missing (the first step, a new param), so a running step allocates no zeros."""
        probe = params[0].new_zeros(1)  # the state's keys, at no cost
        list_keys, shared_keys = (set(part) for part in _split(self.rule.init([probe])))
        complete = all(key in self.hybrid_state for key in shared_keys) and all(
            key in self.state[p] for p in params for key in list_keys)
        if complete:
            return {**{k: [self.state[p][k] for p in params] for k in list_keys},
                    **{k: self.hybrid_state[k] for k in shared_keys}}
        fresh_lists, fresh_shared = _split(self.rule.init(params))
        per_param = {k: [self.state[p].get(k, v) for p, v in zip(params, fresh)]
                     for k, fresh in fresh_lists.items()}
        return {**per_param, **{k: self.hybrid_state.get(k, v) for k, v in fresh_shared.items()}}

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["hybrid"] = {"state": {k: v.clone() if isinstance(v, Tensor) else v
                                   for k, v in self.hybrid_state.items()},
                         "gradient_evaluations": self.gradient_evaluations}
        if self.policy_module is not None:
            out["hybrid"]["policy"] = {k: v.clone()
                                       for k, v in self.policy_module.state_dict().items()}
        if self.garo_controller is not None:
            out["hybrid"]["garo_controller"] = self._garo_state_entry()
        return out

    # validate-then-apply load_state_dict (CheckedStateLoad)
    _extra_state_keys = {"hybrid": True}

    def _param_state_template(self, param: Tensor) -> dict:
        return {k: v[0] for k, v in _split(self.rule.init([param]))[0].items()}

    def _check_extra_state(self, extra: dict):
        hybrid, where = extra["hybrid"], "state_dict['hybrid']"
        if not isinstance(hybrid, dict) or not isinstance(hybrid.get("state"), dict):
            raise StateDictError(f"{where}: must be a dict with a 'state' dict")
        evaluations = check_counter(f"{where}['gradient_evaluations']",
                                    hybrid.get("gradient_evaluations"))
        params = [p for group in self.param_groups for p in group["params"]]
        template = _split(self.rule.init(params[:1]))[1]
        unknown = sorted(map(str, set(hybrid["state"]) - set(template)))
        if unknown:
            raise StateDictError(f"{where}['state']: unknown keys {unknown} (the state of a "
                                 f"HybridGDODE with other gd / ode modules?)")
        device = params[0].device
        state = {}
        for key, value in hybrid["state"].items():
            if isinstance(template[key], Tensor):
                check_tensor_like(f"{where}['state'][{key!r}]", value, template[key])
                value = value.to(device)
            elif isinstance(value, Tensor) or not (value is None or isinstance(value, (int,
                                                                                       float))):
                raise StateDictError(f"{where}['state'][{key!r}]: expected a number, got "
                                     f"{type(value).__name__}")
            state[key] = value
        policy = None
        if "policy" in hybrid:
            if self.policy_module is None:
                raise StateDictError(f"{where}['policy']: switching-policy weights, but this "
                                     f"optimizer's policy is {self.policy_name!r}")
            policy = checked_module_state(self.policy_module, hybrid["policy"],
                                          f"{where}['policy']", "policy")
        return state, evaluations, policy, self._check_garo_weights(hybrid, where)

    def _apply_extra_state(self, prepared) -> None:
        self.hybrid_state, self.gradient_evaluations, policy, garo = prepared
        if policy is not None:
            self.policy_module.load_state_dict(policy)
        if garo is not None:
            self.garo_controller.load_state_dict(garo)

    def __getstate__(self):
        settled = self.hybrid_state  # (the runtime path's host copy written into the tensors)
        return {"_hybrid_state": settled, **super().__getstate__(), **{
            k: getattr(self, k) for k in (
            "rule", "gate", "policy_name", "policy_module", "garo_controller", "needs_closure",
            "config", "gradient_evaluations", "record_trace", "history",
            "skipped_steps", "consecutive_skips", "max_consecutive_skips")}}
