"""The GARO optimizer's recurrent state and its persistence: a mixin of ``GARO``.

GARO (Global Adaptive Recurrent Optimizer) carries, besides ``torch.optim``'s per-parameter
buffers, a recurrent state per segment (``GARORule.init_global``: ``h_t``, the feature
statistics, the previous step's features, the step count) that the optimizer keeps on the host
(``HostState``) and shows as the read-only tensor dict ``garo_state``. A checkpoint is::

    state_dict() = torch.optim's {"state", "param_groups"} + {"num_grad_evals": count}
                   + {"garo": {"controller": weights, "state": garo_state,
                               "skipped_steps": ..., "consecutive_skips": ...}}

so a resumed run continues bit for bit. Loading is validate-then-apply (``CheckedStateLoad``):
every buffer, the recurrent state (one row per segment: granularity and groups must agree) and
the controller weights (loaded into a twin first) are checked before anything changes. Pickling
keeps what ``torch.optim`` drops (the rule, controller, state and counters).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor

from ..adapters.state_loading import (
    StateDictError,
    check_counter,
    check_tensor_like,
    checked_module_state,
)
from .host_state import HostState
from .runtime import settle


class GAROPersistence:
    """Mixin of ``GARO``: the ``garo_state`` view, ``state_dict`` and its checked load, and
    pickling (module docstring)."""

    @property
    def garo_state(self) -> Mapping[str, Tensor]:
        """The recurrent state as a read-only dict of (host) tensors: ``GARORule.init_global``'s
        entries. The optimizer works on a host copy (``HostState``); this view is built from it
        when read. Assign a whole dict to replace the state."""
        if self._garo_tensors is None:
            self._host = settle(self._host)
            self._garo_tensors = MappingProxyType(self._host.to_tensors())
        return self._garo_tensors

    @garo_state.setter
    def garo_state(self, state: Mapping[str, Tensor]) -> None:
        self._host = HostState.from_tensors(dict(state))
        self._garo_tensors = None

    # -- persistence -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"garo"``: controller weights, recurrent state,
        counters."""
        out = super().state_dict()
        out["garo"] = {"controller": {k: v.clone() for k, v in
                                      self.controller.state_dict().items()},
                       "state": {k: v.clone() for k, v in self.garo_state.items()},
                       "skipped_steps": self.skipped_steps,
                       "consecutive_skips": self.consecutive_skips}
        return out

    # validate-then-apply load_state_dict (CheckedStateLoad): every buffer of a non-empty entry
    _extra_state_keys = {"garo": True}
    _renamed_group_keys = {"weight_decay": "weight_decay_scale"}  # state dicts saved before
    _param_state_complete = True

    def _param_state_template(self, param: Tensor) -> dict[str, Any]:
        return {key: param for key in self.rule.per_tensor_keys}

    def _check_extra_state(self, extra: dict[str, Any]):
        garo, where = extra["garo"], "state_dict['garo']"
        if not isinstance(garo, dict) or not {"controller", "state"} <= set(garo):
            raise StateDictError(f"{where}: must be a dict with 'controller' and 'state'")
        current = self.garo_state
        state = garo["state"]
        if not isinstance(state, dict) or set(state) != set(current):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateDictError(f"{where}['state']: keys {got} differ from this optimizer's "
                                 f"{sorted(current)}")
        for key, value in state.items():
            # (hidden rows: one per segment, so granularity / number of groups must agree)
            check_tensor_like(f"{where}['state'][{key!r}]", value, current[key])
        device = current["hidden"].device
        try:
            host = HostState.from_tensors({k: v.to(device) for k, v in state.items()})
        except (RuntimeError, TypeError, ValueError) as error:
            raise StateDictError(f"{where}['state']: unusable recurrent state "
                                 f"({type(error).__name__}: {error})") from None
        weights = checked_module_state(self.controller, garo["controller"],
                                       f"{where}['controller']", "controller")
        skipped = check_counter(f"{where}['skipped_steps']", garo.get("skipped_steps", 0))
        consecutive = check_counter(f"{where}['consecutive_skips']",
                                    garo.get("consecutive_skips", 0))
        return weights, host, skipped, consecutive

    def _apply_extra_state(self, prepared) -> None:
        weights, host, self.skipped_steps, self.consecutive_skips = prepared
        self.controller.load_state_dict(weights)  # same architecture as the twin: cannot fail
        self._host, self._garo_tensors = host, None

    def __getstate__(self):
        # torch.optim pickles only defaults/state/param_groups; the rest is part of this optimizer.
        return {**super().__getstate__(), "rule": self.rule, "granularity": self.granularity,
                "controller": self.controller, "_host": settle(self._host), "_garo_tensors": None,
                "skipped_steps": self.skipped_steps, "_expects_loss": self._expects_loss,
                "consecutive_skips": self.consecutive_skips,
                "max_consecutive_skips": self.max_consecutive_skips,
                "num_training_steps": self.num_training_steps,
                "_hyperparam_hooks": self._hyperparam_hooks, "_flat": None,
                "_last_hyper": None}
