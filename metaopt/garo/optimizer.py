"""``GARO`` / ``GlobalAdaptiveSGD``: the runtime optimizer of the GARO controller.

GARO (Global Adaptive Recurrent Optimizer). A thin torch.optim adapter
over ``metaopt.garo.rule.GARORule`` (the update math lives there, once); the controller
weights are given to it, not owned by it (docs/architecture.md); its recurrent state's view and
persistence are the mixin ``metaopt.garo.persistence.GAROPersistence``::

    opt = GlobalAdaptiveSGD(model.parameters())      # untrained controller: SGD, lr 0.01
    loss.backward(); opt.step()                      # a closure is optional
    opt.hyperparams                                  # latest lr_t, momentum_t, weight_decay_t
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ..adapters.closure_rule import check_non_negative
from ..adapters.grad_evals import GradEvalCounter
from ..adapters.grad_mode import without_grad
from ..adapters.non_finite import NonFiniteSteps
from ..adapters.state_loading import CheckedStateLoad
from ..hub_mixin import PretrainedOptimizerMixin
from .controller import GAROController
from .flat import FlatBuffers
from .host_state import HostState
from .hyper import GAROHyper
from .persistence import GAROPersistence
from .renames import _caller_level, renamed_weight_decay
from .rule import GARORule
from .runtime import host_apply

GRANULARITIES = ("global", "group", "tensor")
_without_grad = without_grad  # (metaopt.adapters.grad_mode; the name kept)
HyperparamHook = Callable[["GARO", dict[str, Any]], None]


class GARO(GAROPersistence, GradEvalCounter, CheckedStateLoad, NonFiniteSteps,
           PretrainedOptimizerMixin, torch.optim.Optimizer):
    r"""Global Adaptive Recurrent Optimizer: a GRU emits ``lr_t, mom_t, wd_t`` every step.

    For tensor ``θ_i`` in a group with learning rate ``lr`` and weight-decay multiplier
    ``weight_decay_scale`` (direction ``"sgd"``), with ``lr₀ = controller.init_lr`` the rate of
    the untrained controller::

        b_i ← mom_t·b_i + (g_i + weight_decay_scale·wd_t·θ_i);   θ_i ← θ_i − lr·(lr_t / lr₀)·b_i

    (``"adam"``: ``g_i`` is replaced by the RMS-normalised ``g_i/(√v̂_i + eps)`` and the decay is
    decoupled; see ``metaopt.garo.rule``.) ``lr`` is a learning rate as in ``torch.optim``: the
    rate the untrained controller steps with, which a trained one modulates by ``lr_t / lr₀``
    each step. By default ``lr = lr₀``, so steps are ``lr_t`` as emitted; ``GARO(params,
    lr=1e-3)`` with an untrained controller is exactly ``SGD(lr=1e-3)``; an LR scheduler scales
    every step through it; a group with ``lr=0`` is frozen. (With ``scale="distance"`` the step
    is ``lr·(lr_t / lr₀)·d_t``: ``lr`` multiplies DoG's step-size estimate ``d_t``, as DoG's and
    Prodigy's ``lr`` do.) GARO has no fixed weight decay, it learns ``wd_t``; the group's
    ``weight_decay_scale`` multiplies it, and ``weight_decay_scale=0`` exempts a group (e.g.
    biases, norms) from decay. ``weight_decay``, this multiplier's old name, still works as a
    constructor keyword or group key with a ``DeprecationWarning``; a state dict saved under the
    old key loads unchanged.

    Args:
        params: tensors or param-group dicts.
        lr: learning rate (>= 0; default: the controller's ``init_lr``).
        weight_decay_scale: multiplier of the learned wd_t (>= 0, default 1).
        controller: a ``GAROController`` (default: the untrained one, which behaves like SGD with
            lr 0.01, momentum 0, weight decay 1e-8). The optimizer keeps its own copy
            (``copy.deepcopy``), moved to the parameters' device: the caller's module is never
            moved or changed, and two optimizers built from one controller share nothing
            (``opt.controller`` is the copy in use).
        direction: ``"sgd"`` (the seed) or ``"adam"``.
        granularity: ``"global"`` (one hidden state, the seed), ``"group"`` (one per param group:
            GARO's layer-wise recurrence when each layer is a group) or ``"tensor"``.
        beta2, eps: second-moment decay and guard of the ``"adam"`` direction.
        scale: ``"none"`` (the controller's lr_t is the step size, the seed); scale-free GARO,
            where lr_t multiplies an online estimate ``d_t`` of the task's step size
            (``metaopt.garo.rule``): ``"distance"`` (DoG's ``d_t = r̄_t/√(t+1)``, from the
            distance the steps have travelled) or ``"prodigy"`` (Prodigy's lower bound on the
            distance to the solution, ``d_t = max(d_{t−1}, r_t/‖s_t‖₁)``; adam direction).
        num_training_steps: the planned length of training ``T``; a controller with relative
            features reads the progress ``min(t/T, 1)`` (VeLO's input) and can anneal. ``None``:
            progress unknown (the controller sees it flagged as missing).
        max_consecutive_skips: after this many non-finite steps in a row the run has diverged
            for good (every later gradient is non-finite too): ``step`` raises
            ``FloatingPointError`` instead of skipping forever.

    The loss feeds the controller's loss features: pass ``step(closure)`` or, in a loop that has
    already called ``loss.backward()``, ``step(loss=loss)``; learned controllers are meta-trained
    with it: a step without either on a given (trained) controller warns once, because the
    controller then sees its loss features as missing. ``num_grad_evals`` counts the gradient
    evaluations (one per step). A step whose gradient (or loss) is not finite is skipped:
    parameters, buffers and the controller's hidden state stay as they were, ``skipped_steps``
    counts it and a ``RuntimeWarning`` says so. (A finite gradient so large that its norm
    overflows counts too.)
    ``state_dict()`` carries the controller weights and its recurrent state, so a resumed run
    continues bit-exactly; it loads with ``torch.load(weights_only=True)``. ``load_state_dict``
    is all or nothing: every buffer's shape and dtype, the recurrent state and the controller
    weights (loaded into a twin first) are checked before anything changes.
    """

    def __init__(self, params, lr: float | None = None, weight_decay_scale: float | None = None,
                 *, controller: GAROController | None = None, direction: str = "sgd",
                 granularity: str = "global", beta2: float = 0.999, eps: float = 1e-8,
                 scale: str = "none", num_training_steps: int | None = None,
                 max_consecutive_skips: int = 20, weight_decay: float | None = None):
        controller_given = controller is not None
        # A private copy: moving or loading it must never change the caller's module or another
        # optimizer built from the same one.
        controller = GAROController() if controller is None else copy.deepcopy(controller)
        lr = controller.init_lr if lr is None else lr
        weight_decay_scale = renamed_weight_decay(weight_decay_scale, weight_decay)
        check_non_negative("lr", lr)
        check_non_negative("weight_decay_scale", weight_decay_scale)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: must be one of {GRANULARITIES}, got {granularity!r}")
        if not (isinstance(max_consecutive_skips, int) and max_consecutive_skips >= 1):
            raise ValueError(f"max_consecutive_skips: must be an int >= 1, "
                             f"got {max_consecutive_skips!r}")
        rule = GARORule(direction=direction, beta2=beta2, eps=eps, scale=scale)  # validates
        super().__init__(params, dict(lr=lr, weight_decay_scale=weight_decay_scale))
        self.rule, self.granularity = rule, granularity
        device = self.param_groups[0]["params"][0].device
        if device.type == "meta":  # no data to step; refused before any controller is touched
            raise ValueError("params: GARO cannot step meta-device parameters (they hold no "
                             "data); materialise them first (e.g. module.to_empty(device=...))")
        self.controller = controller.to(device)
        self.num_training_steps = num_training_steps
        if controller.lr_schedule != "constant" and num_training_steps is None:
            warnings.warn(f"GARO: this controller multiplies lr_t by a {controller.lr_schedule} "
                          "annealing over num_training_steps; without it the factor stays 1 and "
                          "the progress input is 'unknown' (pass num_training_steps=the run's "
                          "total steps)", stacklevel=2)
        # the recurrent state lives on the host, where the controller runs (host_apply)
        self._host = HostState.from_tensors(rule.init_global(
            self.controller, self._num_segments(), torch.device("cpu"), num_training_steps))
        self._garo_tensors = None
        self._init_non_finite(max_consecutive_skips)
        self._flat: FlatBuffers | None = None  # (built by the first step)
        self._hyperparam_hooks: OrderedDict[int, HyperparamHook] = OrderedDict()
        # a given controller was (presumably) meta-trained reading the loss; the default one is
        # plain SGD whatever it reads
        self._expects_loss = controller_given

    # -- configuration ---------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The optimizer options a checkpoint needs to rebuild this optimizer."""
        return dict(direction=self.rule.direction, granularity=self.granularity,
                    beta2=self.rule.beta2, eps=self.rule.eps, scale=self.rule.scale)

    @property
    def base_lr(self) -> float:
        """``lr₀``: the controller's untrained rate, the unit of the group ``lr`` (class doc)."""
        return self.controller.init_lr

    def _num_segments(self) -> int:
        if self.granularity == "global":
            return 1
        if self.granularity == "group":
            return len(self.param_groups)
        return sum(len(g["params"]) for g in self.param_groups)

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict) and "weight_decay" in param_group:  # the old key
            param_group = dict(param_group)
            param_group["weight_decay_scale"] = renamed_weight_decay(
                param_group.get("weight_decay_scale"), param_group.pop("weight_decay"), "group")
        if isinstance(param_group, dict) and "weight_decay_scale" in param_group:
            check_non_negative("weight_decay_scale", param_group["weight_decay_scale"])
        super().add_param_group(param_group)
        if hasattr(self, "_host"):  # a late group gets fresh recurrent rows of its own
            missing = self._num_segments() - self._host.num_segments
            if missing > 0:
                fresh = self.rule.init_global(self.controller, missing, torch.device("cpu"),
                                              self.num_training_steps)
                self.garo_state = {key: torch.cat([value, fresh[key]]) if value.dim() else value
                                   for key, value in self.garo_state.items()}

    # -- hyperparameter reporting ------------------------------------------------------------------
    @property
    def hyperparams(self) -> dict[str, Any]:
        """The latest ``lr_t, momentum_t, weight_decay_t`` (floats; lists for several segments).

        ``lr`` is the controller's lr_t, before the group multiplier. None before the first step.
        """
        if self._host.step == 0:
            return {"lr": None, "momentum": None, "weight_decay": None}
        out = {}
        for key in ("lr", "momentum", "weight_decay"):
            values = list(getattr(self._host, key))
            out[key] = values[0] if self.granularity == "global" else values
        return out

    def register_hyperparam_hook(self, hook: HyperparamHook) -> RemovableHandle:
        """Call ``hook(optimizer, {"step", "lr", "momentum", "weight_decay"})`` after each step.

        The values are the (S,) tensors of this step; they live on the host, with the rest of the
        recurrent state (``GARORule.apply_``), so reading them costs no device sync.
        """
        handle = RemovableHandle(self._hyperparam_hooks)
        self._hyperparam_hooks[handle.id] = hook
        return handle

    # -- the step ----------------------------------------------------------------------------------
    def _active(self):
        params, grads, lr, wd, ids = [], [], [], [], []
        per_group, per_tensor = self.granularity == "group", self.granularity == "tensor"
        base_lr, tensor_index = self.base_lr, 0
        for group_index, group in enumerate(self.param_groups):
            group_params = group["params"]
            # (list comprehensions: a step on a small model is dispatch-bound)
            chosen = [p for p in group_params if p.grad is not None]
            if chosen:
                chosen_grads = [p.grad for p in chosen]
                if any(g.is_sparse for g in chosen_grads):
                    raise RuntimeError("GARO does not support sparse gradients")
                params += chosen
                grads += chosen_grads
                lr += [group["lr"] / base_lr] * len(chosen)
                wd += [group["weight_decay_scale"]] * len(chosen)
                if per_tensor:
                    ids += [tensor_index + k for k, p in enumerate(group_params)
                            if p.grad is not None]
                else:
                    ids += [group_index if per_group else 0] * len(chosen)
            tensor_index += len(group_params)
        return params, grads, lr, wd, ids

    @_without_grad
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss=None):
        """One GARO step from ``p.grad``; the loss (from ``closure`` or given as ``loss``, after
        ``loss.backward()``) also feeds the controller."""
        if closure is not None:
            if loss is not None:
                raise ValueError("step: pass a closure or a loss, not both")
            with torch.enable_grad():
                loss = closure()
        elif loss is None and getattr(self, "_expects_loss", False):
            self._expects_loss = False  # once per optimizer
            warnings.warn("GARO.step() without the loss: this controller was meta-trained "
                          "reading it; pass step(loss=loss) after loss.backward(), or "
                          "step(closure)", UserWarning, stacklevel=_caller_level())
        self._count_grad_evals(1)  # the closure's, or the caller's backward into p.grad
        params, grads, lr, wd, ids = self._active()
        if not params:
            return loss
        loss_value = None  # (one host read; on a GPU it waits for the forward pass)
        if loss is not None:
            loss_value = loss.item() if isinstance(loss, Tensor) else float(loss)
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state.update(self.rule.init_tensor_state(p))
        # (not while dynamo traces the step: it does not replay the state's rebinding to views)
        flat = None if torch.compiler.is_compiling() else self._flat_buffers(params, states)
        buffers = flat.views if flat is not None and flat.flat is not None else \
            {key: [state[key] for state in states] for key in self.rule.per_tensor_keys}
        new_state = host_apply(self.rule, params, grads, buffers, self._host,
                               self._hyper(lr, wd, ids), loss=loss_value, flat=flat)
        if new_state is None:  # a bad gradient never reaches the GRU (see GARORule.apply_)
            self._refuse_step("gradient, loss or controller output")  # (the shared policy)
            return loss
        self._accept_step()
        self._host, self._garo_tensors = new_state, None
        if self._hyperparam_hooks:
            report = {"step": self.garo_state["step"], "lr": self.garo_state["lr"],
                      "momentum": self.garo_state["momentum"],
                      "weight_decay": self.garo_state["weight_decay"]}
            for hook in list(self._hyperparam_hooks.values()):
                hook(self, report)
        return loss

    def _hyper(self, lr, wd, ids) -> GAROHyper:
        """The step's ``GAROHyper``: the last one while the multipliers and segments stay."""
        last = getattr(self, "_last_hyper", None)
        if last is None or last.controller is not self.controller or last.lr_scale != lr or \
                last.weight_decay_scale != wd or last.segment_ids != ids:
            last = self._last_hyper = GAROHyper(self.controller, lr_scale=lr,
                                                weight_decay_scale=wd, segment_ids=ids)
        return last

    def _flat_buffers(self, params, states) -> FlatBuffers:
        """Small adam models: the buffers as views of flat tensors (``metaopt.garo.flat``);
        gathered again when the parameters or a buffer changed (e.g. ``load_state_dict``)."""
        if self._flat is None or not self._flat.matches(params, states):
            self._flat = FlatBuffers.build(self.rule, params, states)
        return self._flat


GlobalAdaptiveSGD = GARO
