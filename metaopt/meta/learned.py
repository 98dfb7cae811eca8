"""Learned rules: a pure update rule bound to meta-parameters ``φ`` the meta-trainer owns.

Meta-parameters apart from the optimizer built from them (learned_optimization's ``theta`` /
``opt_fn`` split): the controller's weights are data. A ``LearnedRule`` exposes the three operations
the engine needs, for any controller type (the GARO GRU today, the GD/ODE switching policy next), so
unrolls and gradient estimators never
look inside a controller::

    φ      = learned.meta_parameters()                 # {name: tensor}, what the outer loop trains
    state  = learned.init(params, φ)
    params, state = learned.step(params, grad_fn, state, φ)

A rule may also offer ``stacked_step(φ)``: its step on the vectorised engine's flat buckets,
runs stacked as rows of one tensor (GARO's, ``metaopt.garo.stacked``, proven equal to ``vmap``
of ``step``); the engine otherwise vmaps ``step``.

``step`` calls the SAME rule code as the runtime optimizer (``metaopt.garo.rule.GARORule``), with
the controller evaluated at ``φ`` by ``torch.func.functional_call`` (``BoundController``), so a
gradient w.r.t. ``φ`` flows through the emitted hyperparameters into the whole unroll, and an
estimator may evaluate the unroll at a perturbed ``φ + σε`` without touching the module.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from ..garo.controller import BoundController, GAROController
from ..garo.hyper import GAROHyper
from ..garo.rule import GARORule
from ..garo.stacked import stacked_step
from ..rules.base import GradFn, State, TensorList


class LearnedRule(Protocol):
    module: nn.Module

    def meta_parameters(self) -> dict[str, Tensor]: ...

    def init(self, params: Sequence[Tensor], weights: Mapping[str, Tensor],
             horizon: int | None = None) -> State: ...

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             weights: Mapping[str, Tensor]) -> tuple[TensorList, State]: ...

    def trace(self, state: State) -> dict[str, Tensor]: ...


class _UntiedBoundController(BoundController):
    """``BoundController`` of a controller without tied weights: the same ``functional_call``
    without its per-call search for ties (a walk of the module tree at every inner step)."""

    def __call__(self, *args):
        return torch.func.functional_call(self.module, self.weights, args, tie_weights=False)


class GAROLearnedRule:
    """``GARORule`` driven by a ``GAROController`` evaluated at meta-parameters ``φ``.

    Args:
        controller: the module whose ``named_parameters()`` are ``φ`` (its buffers, e.g. the
            stored feature statistics, are read from the module).
        rule: the pure GARO step (direction, β₂, ε, ``feature_gradients``).
    """

    def __init__(self, controller: GAROController, rule: GARORule):
        self.module, self.rule = controller, rule
        self._tied = len(list(controller.named_parameters(remove_duplicate=False))) != \
            len(dict(controller.named_parameters()))

    def meta_parameters(self) -> dict[str, Tensor]:
        return dict(self.module.named_parameters())

    def _bound(self, weights: Mapping[str, Tensor]) -> BoundController:
        bound = BoundController if self._tied else _UntiedBoundController
        return bound(self.module, dict(weights))

    def init(self, params: Sequence[Tensor], weights: Mapping[str, Tensor],
             horizon: int | None = None) -> State:
        """The rule state of a new run; ``horizon`` (its total steps) feeds the progress input."""
        return self.rule.init(list(params), self._bound(weights), horizon=horizon)

    def step(self, params: Sequence[Tensor], grad_fn: GradFn, state: State,
             weights: Mapping[str, Tensor]) -> tuple[TensorList, State]:
        return self.rule.step(params, grad_fn, state, GAROHyper(self._bound(weights)))

    def stacked_step(self, weights: Mapping[str, Tensor]):
        """``(θ, L, g, s) -> (θ', s')`` for the stacked runs of a flat bucket (one tensor and one
        segment per run, ``metaopt.meta.flat_buckets``): ``step`` without ``vmap``
        (``metaopt.garo.stacked``)."""
        controller = self._bound(weights)

        def step(params, loss, grads, state):
            new, state = stacked_step(self.rule, controller, params[0], grads[0], loss, state)
            return [new], state
        return step

    def trace(self, state: State) -> dict[str, Tensor]:
        """The hyperparameters emitted by the last step: ``lr_t``, ``momentum_t``, ``wd_t``."""
        return {key: state[key][0].detach() for key in ("lr", "momentum", "weight_decay")}

    def feature_statistics(self, states: Sequence[State]) -> dict[str, Tensor]:
        """Sums over ``states`` of the runs' running feature mean / variance, and their count.

        ``MetaTrainer`` averages them (across processes too) into the controller's
        ``init_feature_mean`` / ``init_feature_var`` buffers, so a new run — in meta-training and
        after export — starts its feature normalisation from what meta-training saw, not 0 / 1.
        """
        ref = self.module.init_feature_mean
        if not states:
            return {"count": ref.new_zeros(()), "init_feature_mean": torch.zeros_like(ref),
                    "init_feature_var": torch.zeros_like(ref)}
        return {"count": ref.new_tensor(float(len(states))),
                "init_feature_mean": sum(s["feature_mean"].detach().mean(0) for s in states),
                "init_feature_var": sum(s["feature_var"].detach().mean(0) for s in states)}


def map_tensors(fn, value):
    """``value`` (nested dicts / lists / tuples) with ``fn`` applied to every tensor inside."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def detach_state(value):
    """A copy of a (nested dict / list of) tensor state with every tensor detached.

    Between truncations the inner parameters and optimizer state keep their values but drop the
    graph, so memory is bounded by one segment and the meta-gradient is truncated there.
    """
    return map_tensors(Tensor.detach, value)


def perturbed(weights: Mapping[str, Tensor], noise: Mapping[str, Tensor],
              scale: float) -> dict[str, Tensor]:
    """``φ + scale·ε`` name by name, without a graph (evolution-strategies probes)."""
    with torch.no_grad():
        return {k: w.detach() + scale * noise[k] for k, w in weights.items()}
