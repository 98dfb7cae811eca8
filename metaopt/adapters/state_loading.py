"""Validate-then-apply ``load_state_dict`` shared by every metaopt optimizer.

``torch.optim.Optimizer.load_state_dict`` maps the saved per-parameter state onto the live
parameters by position and checks only the number of groups and of parameters per group: a
buffer of the wrong shape loads silently and the next step fails (or, in a fused kernel, writes
out of bounds); an optimizer's own extra entries (controller weights, recurrent state) are loaded
one after the other, so a failure half-way leaves a half-loaded optimizer.

``CheckedStateLoad.load_state_dict`` is all or nothing:

1. *validate*, without touching the optimizer: the layout (``state`` / ``param_groups`` and the
   optimizer's own top-level entries, nothing else), the groups (same count and sizes, every
   hyperparameter key of the live group present — a key the optimizer has renamed is read under
   its old name, so state dicts saved before the rename load unchanged — ``lr`` /
   ``weight_decay`` / ``weight_decay_scale`` finite and >= 0),
   every per-parameter entry against the parameter's *template* (the state a fresh optimizer
   would create for it: known keys only, each tensor of the template's shape and dtype kind —
   floating state may differ in precision, ``torch.optim`` casts it to the parameter's dtype),
   then the optimizer's own entries (``_check_extra_state``: loaded into twins, never into the
   live objects);
2. *apply*: torch's loader, then ``_apply_extra_state`` (assignments of what step 1 prepared);
   should anything still raise, the previous state and groups are put back.

A refusal is a ``StateDictError`` (a ``ValueError``) whose one line names the offending entry.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["CheckedStateLoad", "StateDictError", "check_counter", "check_tensor_like",
           "checked_module_state"]


class StateDictError(ValueError):
    """A state dict that does not fit this optimizer (the message names the entry)."""


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    return "bool" if dtype == torch.bool else "integer"


def check_tensor_like(where: str, value: Any, template: Tensor) -> None:
    """``value`` must be a tensor of ``template``'s shape and dtype kind."""
    if not isinstance(value, Tensor):
        raise StateDictError(f"{where}: expected a tensor of shape {tuple(template.shape)}, "
                             f"got {type(value).__name__}")
    if tuple(value.shape) != tuple(template.shape):
        raise StateDictError(f"{where}: shape {tuple(value.shape)} does not match this "
                             f"optimizer's {tuple(template.shape)}")
    if value.dtype != template.dtype and _kind(value.dtype) != _kind(template.dtype):
        raise StateDictError(f"{where}: dtype {value.dtype} does not match this optimizer's "
                             f"{template.dtype}")


def check_counter(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StateDictError(f"{where}: must be an int >= 0, got {value!r}")
    return value


def checked_module_state(module: torch.nn.Module, saved: Any, where: str,
                         what: str) -> dict[str, Any]:
    """``saved`` loaded into a copy of ``module`` (the live one is untouched) and read back: the
    state dict ``module.load_state_dict`` then takes without failing. A misfit is a
    ``StateDictError`` naming ``where`` and ``what`` the module is ("controller", "policy")."""
    twin = copy.deepcopy(module)
    try:
        twin.load_state_dict(saved)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as error:
        text = str(error).strip()
        first = text.splitlines()[0] if text else ""
        raise StateDictError(f"{where}: does not fit this optimizer's {what} "
                             f"({type(error).__name__}: {first})") from None
    return twin.state_dict()


def _check_entry(where: str, value: Any, template: Any) -> None:
    if isinstance(template, Tensor):
        check_tensor_like(where, value, template)
    elif isinstance(value, Tensor):  # a Python scalar slot may hold a one-element tensor
        if value.numel() != 1:
            raise StateDictError(f"{where}: expected a scalar, got a tensor of shape "
                                 f"{tuple(value.shape)}")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise StateDictError(f"{where}: expected a number, got {type(value).__name__}")


def _check_hyper(where: str, value: Any) -> None:
    number = float(value) if isinstance(value, Tensor) and value.numel() == 1 else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) \
            or not math.isfinite(number) or number < 0:
        raise StateDictError(f"{where}: must be a finite number >= 0, got {value!r}")


class CheckedStateLoad:
    """Mixin for ``torch.optim.Optimizer`` subclasses (list it first among the bases).

    A subclass says what its state looks like:

    * ``_param_state_template(p)``: the per-parameter entries a fresh optimizer could hold for
      ``p`` (``{key: tensor or scalar}``); a saved entry with another key is refused.
    * ``_param_state_complete``: True when a non-empty entry must hold every template key (the
      step reads them all); False when missing keys start fresh.
    * ``_extra_state_keys``: ``{top-level key: required}`` of its own entries.
    * ``_renamed_group_keys``: ``{old group key: current key}``: saved groups are read with the
      old keys translated (both present is refused).
    * ``_check_extra_state(extra)`` / ``_apply_extra_state(prepared)``: validate the own entries
      (raise ``StateDictError``, touch nothing) and return what ``_apply_extra_state`` assigns.
    """

    _extra_state_keys: Mapping[str, bool] = {}
    _param_state_complete = False
    _renamed_group_keys: Mapping[str, str] = {}

    def _param_state_template(self, param: Tensor) -> dict[str, Any]:
        return {}

    def _check_extra_state(self, extra: dict[str, Any]) -> Any:
        return None

    def _apply_extra_state(self, prepared: Any) -> None:
        pass

    # -- the shared mechanism ----------------------------------------------------------------
    def _check_state_dict(self, state_dict: Any) -> tuple[dict, Any]:
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise StateDictError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        known = {"state", "param_groups", *self._extra_state_keys}
        unknown = sorted(map(str, set(state_dict) - known))
        if unknown:
            raise StateDictError(f"state_dict: unknown entries {unknown} for {name} (a state "
                                 f"dict of another optimizer?)")
        missing = [k for k in ("state", "param_groups") if k not in state_dict] + \
            [k for k, required in self._extra_state_keys.items()
             if required and k not in state_dict]
        if missing:
            raise StateDictError(f"state_dict: missing entries {missing} for {name}")
        groups, state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, (list, tuple)) or not isinstance(state, Mapping):
            raise StateDictError("state_dict: 'param_groups' must be a list and 'state' a dict")
        if len(groups) != len(self.param_groups):
            raise StateDictError(f"state_dict['param_groups']: {len(groups)} groups, this "
                                 f"optimizer has {len(self.param_groups)}")
        params_by_id: dict[Any, Tensor] = {}
        groups = list(groups)
        for i, (saved, live) in enumerate(zip(groups, self.param_groups, strict=True)):
            where = f"state_dict['param_groups'][{i}]"
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), list):
                raise StateDictError(f"{where}: must be a dict with a 'params' list")
            saved = groups[i] = self._translate_group(where, saved)
            if len(saved["params"]) != len(live["params"]):
                raise StateDictError(f"{where}: {len(saved['params'])} parameters, this "
                                     f"optimizer's group has {len(live['params'])}")
            absent = sorted(k for k in live if k not in saved)
            if absent:
                raise StateDictError(f"{where}: missing hyperparameters {absent} (a state dict "
                                     f"of another optimizer?)")
            for key in ("lr", "weight_decay", "weight_decay_scale"):
                if key in saved:
                    _check_hyper(f"{where}[{key!r}]", saved[key])
            params_by_id.update(zip(saved["params"], live["params"], strict=True))
        for index, entry in state.items():
            where = f"state_dict['state'][{index!r}]"
            if index not in params_by_id:
                raise StateDictError(f"{where}: belongs to no parameter of the param groups")
            if not isinstance(entry, Mapping):
                raise StateDictError(f"{where}: must be a dict, got {type(entry).__name__}")
            param = params_by_id[index]
            template = self._param_state_template(param)
            extra = sorted(map(str, set(entry) - set(template)))
            if extra:
                raise StateDictError(f"{where}: unknown keys {extra} for {name} (expected a "
                                     f"subset of {sorted(template)})")
            if entry and self._param_state_complete and set(entry) != set(template):
                raise StateDictError(f"{where}: missing keys "
                                     f"{sorted(set(template) - set(entry))}")
            for key, value in entry.items():
                _check_entry(f"{where}[{key!r}] (parameter of shape {tuple(param.shape)})",
                             value, template[key])
        extra = {k: state_dict[k] for k in self._extra_state_keys if k in state_dict}
        base = {"state": state, "param_groups": groups}
        return base, self._check_extra_state(extra)

    def _translate_group(self, where: str, saved: Mapping[str, Any]) -> Mapping[str, Any]:
        """``saved`` with the old names of renamed group keys replaced by the current ones."""
        old = [k for k in self._renamed_group_keys if k in saved]
        if not old:
            return saved
        saved = dict(saved)
        for key in old:
            new = self._renamed_group_keys[key]
            if new in saved:
                raise StateDictError(f"{where}: both {key!r} (the old name) and {new!r}")
            saved[new] = saved.pop(key)
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load ``state_dict`` entirely or not at all (see the module doc)."""
        base, prepared = self._check_state_dict(state_dict)
        # torch's loader rebinds self.state and self.param_groups to new objects: keeping the old
        # ones is a complete backup of the torch.optim part.
        previous = (self.state, self.param_groups)
        try:
            torch.optim.Optimizer.load_state_dict(self, base)
            self._apply_extra_state(prepared)
        except BaseException:
            self.state, self.param_groups = previous
            raise
