"""What ``HybridGDODE`` adds when its GD module is a GARO controller (``gd="garo"``).

The formulas (ODE step from GARO's step size, what the switch reads) are in
``metaopt.hybrid.garo_module``; this mixin wires them into the ``torch.optim`` adapter: building
the module, the per-step hyper (the same ``garo_hyper`` meta-training calls), the controller's
weights in ``state_dict`` (validated on a twin before anything changes) and the checkpoint that
carries both trained modules (``HybridControllers``).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import Tensor

from ..adapters.state_loading import StateDictError, checked_module_state
from ..garo.controller import GAROController
from ..garo.rule import GARORule
from .garo_module import GAROModule, HybridControllers, garo_hyper
from .garo_runtime import GARORuntime, garo_applies
from .policy import SwitchingPolicy
from .runtime import GDRuntime, applies

__all__ = ["GAROGDSupport"]


class GAROGDSupport:
    """Mixin of ``HybridGDODE`` for ``gd="garo"`` (module docstring)."""

    garo_controller: GAROController | None = None

    def _garo_module(self, controller, direction: str, scale: str, beta2: float, eps: float,
                     num_training_steps: int | None) -> GAROModule:
        """The GD module over a private copy of ``controller`` (the untrained one if None)."""
        if controller is None:
            controller = GAROController()
        elif not isinstance(controller, GAROController):
            raise ValueError(f"controller: must be a GAROController, got "
                             f"{type(controller).__name__}")
        if num_training_steps is not None and not (
                isinstance(num_training_steps, int) and num_training_steps >= 1):
            raise ValueError(f"num_training_steps: must be an int >= 1 or None, "
                             f"got {num_training_steps!r}")
        rule = GARORule(direction=direction, beta2=beta2, eps=eps, scale=scale)  # validates
        self.garo_controller = copy.deepcopy(controller)
        return GAROModule(rule, self.garo_controller, num_training_steps)

    def _place_garo(self) -> None:
        """The controller on the parameters' device and dtype family (after the groups exist)."""
        if self.garo_controller is not None:
            self.garo_controller.to(self.param_groups[0]["params"][0].device)

    def _garo_step_hyper(self, state: dict, params: list[Tensor], h: dict) -> dict[str, Any]:
        base = self.garo_controller.init_lr
        extra = self.policy_module.extra_features if self.policy_module is not None else ()
        return garo_hyper(self.rule.gd, state, self.garo_controller, self.gate,
                          sum(p.numel() for p in params),
                          lr=[lr / base for lr in h["lr"]], weight_decay=h["weight_decay"],
                          ode_scale=h["ode_scale"], extra_features=extra)

    def _check_policy_inputs(self, policy) -> None:
        extra = getattr(policy, "extra_features", ())
        if extra and self.garo_controller is None:
            raise ValueError(f"policy: reads GARO's state ({list(extra)}) but gd is not 'garo'")

    # -- the runtime GD paths ------------------------------------------------------------------
    def _gd_runtime(self) -> GDRuntime | GARORuntime | None:
        """The in-place GD path where it applies: ``metaopt.hybrid.runtime`` for momentum SGD,
        ``metaopt.hybrid.garo_runtime`` for GARO (caches, no state: rebuilt on a copy)."""
        if "_runtime" not in self.__dict__:
            if self.garo_controller is None:
                self._runtime = GDRuntime() if applies(self.rule, self.gate) else None
            else:
                self._runtime = GARORuntime() if garo_applies(self.rule, self.gate) else None
        return self._runtime

    @property
    def hybrid_state(self) -> dict[str, Any]:
        """The rule's optimizer-wide state (the switch's memories, GARO's recurrent state):
        where a runtime GD path keeps it on the host, written into the rule's tensors when read
        (``GARORuntime.settle``, ``GDRuntime.settle``). Replace it whole, never edit it in
        place."""
        runtime = self.__dict__.get("_runtime")
        if runtime is not None and runtime.dirty:
            self._hybrid_state = runtime.settle(self._hybrid_state)
        return self._hybrid_state

    @hybrid_state.setter
    def hybrid_state(self, state: dict[str, Any]) -> None:
        self._hybrid_state = state
        runtime = self.__dict__.get("_runtime")
        if runtime is not None:
            runtime.forget()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "hybrid_state" in state:  # (pickled before hybrid_state became a property)
            state = {k: v for k, v in state.items() if k != "hybrid_state"} | {
                "_hybrid_state": state["hybrid_state"]}
        super().__setstate__(state)

    @property
    def hyperparams(self) -> dict[str, Any]:
        """GARO's latest step size a_t (lr_t·d_t when scale-free), momentum_t and wd_t, as
        ``GARO.hyperparams`` reports them; None before the first step or without GARO."""
        state = getattr(self, "hybrid_state", {})
        if self.garo_controller is None or "gd.step" not in state or int(state["gd.step"]) == 0:
            return {"lr": None, "momentum": None, "weight_decay": None}
        return {key: float(state[f"gd.{key}"][0]) for key in ("lr", "momentum", "weight_decay")}

    # -- persistence ---------------------------------------------------------------------------
    def _garo_state_entry(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.garo_controller.state_dict().items()}

    def _check_garo_weights(self, hybrid: dict, where: str):
        """The controller weights of ``state_dict['hybrid']``, loaded into a twin (or None)."""
        if "garo_controller" not in hybrid:
            return None
        if self.garo_controller is None:
            raise StateDictError(f"{where}['garo_controller']: GARO controller weights, but "
                                 f"this optimizer's GD module is not 'garo'")
        return checked_module_state(self.garo_controller, hybrid["garo_controller"],
                                    f"{where}['garo_controller']", "controller")

    def _checkpoint_parts(self) -> tuple[Any, dict[str, Any]]:
        """``(module, options)`` of ``save_pretrained``: with a GARO GD module, both trained
        modules (``HybridControllers``)."""
        if self.garo_controller is None:
            return super()._checkpoint_parts()
        if not isinstance(self.policy_module, SwitchingPolicy):
            raise ValueError("save_pretrained: a hybrid with a GARO GD module is shared with its "
                             f"learned switching policy; this one's policy is "
                             f"{self.policy_name!r}")
        group = self.param_groups[0]
        options = {**self.config, **{k: group[k] for k in ("lr", self._decay_key, "ode_scale")}}
        return HybridControllers.of(self.policy_module, self.garo_controller), options


def unpack_controllers(module) -> dict[str, Any]:
    """``HybridGDODE`` keywords for a checkpoint's controller (``metaopt.load_optimizer``)."""
    if isinstance(module, HybridControllers):
        return {"policy": module.policy, "controller": module.garo}
    return {"policy": module}

