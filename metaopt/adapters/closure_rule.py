"""torch.optim adapter for closure-driven rules: no update math lives here (the rule protocol,
docs/architecture.md).

``ClosureRuleOptimizer.step(closure)`` evaluates the closure at θ, builds a ``grad_fn`` that
writes any point into the parameters and re-evaluates the closure there, calls the rule under
``no_grad`` and copies the result back. Params whose grad is None are skipped, as in torch.optim.
After the step ``p.grad`` holds the gradient at the starting point (the one the returned loss
belongs to), whatever points the rule visited.

Shared reliability (``metaopt.adapters.non_finite``, ``metaopt.adapters.state_loading``): the
closure's loss must be a real scalar; a step whose loss, start gradient or new parameters are
not finite is refused (θ and state kept, a warning, ``FloatingPointError`` after
``max_consecutive_skips`` in a row); ``load_state_dict`` validates everything before it changes
anything.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..rules.base import Rule
from ..rules.hyper import ODEHyper
from .grad_evals import GradEvalCounter
from .non_finite import NonFiniteSteps, all_finite, check_loss, loss_is_finite
from .state_loading import CheckedStateLoad


def check_non_negative(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


class ClosureGradient:
    """``grad_fn`` over live parameters: move them to a point, run the closure, take the grads.

    The grads are taken over (``p.grad`` reset to None) instead of cloned, so a closure that zeroes
    grads in place cannot overwrite a stage the rule still holds, at no copy cost. Calling it on
    ``start`` (the snapshot of θ the rule was given) returns the already evaluated first gradient.
    """

    def __init__(self, params: list[Tensor], closure: Callable[[], Tensor],
                 start_loss: Tensor, start_grads: list[Tensor]):
        self.params, self.closure = params, closure
        self.start: list[Tensor] | None = None
        self.start_loss, self.start_grads = start_loss, start_grads
        self.evaluations = 0

    def __call__(self, points):
        if points is self.start:
            return self.start_loss, self.start_grads
        torch._foreach_copy_(self.params, list(points))
        return self.at_params()

    def at_params(self) -> tuple[Tensor, list[Tensor]]:
        """Evaluate the closure wherever the live parameters are now."""
        with torch.enable_grad():
            loss = self.closure()
        self.evaluations += 1
        grads = []
        for p in self.params:
            g = p.grad
            grads.append(g if g is not None else torch.zeros_like(p))
            p.grad = None
        return loss, grads


class ClosureRuleOptimizer(GradEvalCounter, CheckedStateLoad, NonFiniteSteps,
                           torch.optim.Optimizer):
    """Base class: a subclass passes its rule; ``_update`` may be overridden by a faster in-place
    path (then a float64 test must hold it equal to the pure rule). ``num_grad_evals`` counts
    the closure calls of all steps (``metaopt.adapters.grad_evals``).

    ``max_consecutive_skips`` (attribute, default 20): refused non-finite steps in a row before
    ``step`` raises ``FloatingPointError``."""

    rule: Rule
    #: group keys passed to the rule as per-tensor hyperparameters, fields of ``hyper_type``
    hyper_keys: tuple[str, ...] = ("lr", "weight_decay")
    hyper_type: type = ODEHyper

    def __init__(self, params, defaults: dict, rule: Rule):
        check_non_negative("lr", defaults.get("lr"))
        check_non_negative("weight_decay", defaults.get("weight_decay", 0.0))
        super().__init__(params, defaults)
        self.rule = rule
        self.gradient_evaluations = 0
        self._init_non_finite()

    def __getstate__(self):
        # torch.optim pickles only defaults/state/param_groups; the rule is part of the optimizer.
        return {**super().__getstate__(), "rule": self.rule,
                "gradient_evaluations": self.gradient_evaluations, **self._non_finite_state()}

    def _param_state_template(self, param: Tensor) -> dict:
        """What ``_store_rule_state`` may keep for ``param``: the rule's fresh state."""
        return {key: value[0] if isinstance(value, list) else value
                for key, value in self.rule.init([param]).items()}

    def _active_params(self) -> tuple[list[Tensor], Any]:
        """The parameters with a gradient and the rule's hyper, one entry per tensor."""
        params, hyper = [], {k: [] for k in self.hyper_keys}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                params.append(p)
                for k in self.hyper_keys:
                    hyper[k].append(group[k])
        return params, self.hyper_type(**hyper)

    def _load_rule_state(self, params: list[Tensor]) -> dict:
        """Per-tensor entries from each param's own state (fresh where it has none yet); scalar
        entries are shared by the whole optimizer and kept current on every param."""
        fresh = self.rule.init(params)
        state = {}
        for key, value in fresh.items():
            if isinstance(value, list):
                state[key] = [self.state[p].get(key, v) for p, v in zip(params, value)]
            else:
                state[key] = self.state[params[0]].get(key, value)
        return state

    def _store_rule_state(self, params: list[Tensor], state: dict) -> None:
        for i, p in enumerate(params):
            self.state[p].update({k: v[i] for k, v in state.items() if isinstance(v, list)})
        # Scalars (step scale, counters) go to every param, so whichever param is active next
        # step — even one that sat this step out — reads the current value.
        shared = {k: v for k, v in state.items() if not isinstance(v, list)}
        if shared:
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p].update(shared)

    def add_param_group(self, param_group: dict) -> None:
        for key in ("lr", "weight_decay"):
            if key in param_group:
                check_non_negative(key, param_group[key])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None):
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that zeroes the grads, recomputes "
                "the loss, calls backward() and returns the loss: it evaluates gradients at "
                "points other than the current parameters")
        with torch.enable_grad():
            loss = check_loss(closure(), f"{type(self).__name__}.step")
        self.gradient_evaluations += 1
        params, hyper = self._active_params()
        if not params:
            return loss
        start_grads = [p.grad for p in params]
        if not (loss_is_finite(loss) and all_finite(start_grads)):
            self._refuse_step("loss or gradient")
            return loss
        for p in params:  # own the start gradients: a closure may zero p.grad in place
            p.grad = None
        grad_fn = ClosureGradient(params, closure, loss, start_grads)
        try:
            try:
                state = self._update(params, hyper, grad_fn)
                finite = all_finite(params)
            except FloatingPointError:  # an ODE solve met a non-finite field: the same refusal
                state, finite = None, False
        except BaseException:
            # A failed step (e.g. every adaptive attempt rejected) must not leave θ at a stage.
            if grad_fn.start is not None:
                torch._foreach_copy_(params, grad_fn.start)
            for p, g in zip(params, start_grads):
                p.grad = g
            raise
        self.gradient_evaluations += grad_fn.evaluations
        for p, g in zip(params, start_grads, strict=True):
            p.grad = g
        if not finite:  # a stage or the update itself overflowed: back to θ, state unchanged
            if grad_fn.start is not None:
                torch._foreach_copy_(params, grad_fn.start)
            self._refuse_step("update")
            return loss
        self._store_rule_state(params, state)
        self._accept_step()
        return loss

    def _update(self, params: list[Tensor], hyper: Any, grad_fn: ClosureGradient) -> dict:
        """Run the pure rule and copy its result into the live parameters; returns rule state."""
        # The rule sees a snapshot of θ: grad_fn moves the live tensors to the stage points.
        grad_fn.start = torch._foreach_mul(params, 1.0)
        new_params, state = self.rule.step(grad_fn.start, grad_fn, self._load_rule_state(params),
                                           hyper)
        torch._foreach_copy_(params, list(new_params))
        return state
