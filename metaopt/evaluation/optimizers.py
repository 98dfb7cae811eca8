"""Named optimizer factories: ``params -> torch.optim.Optimizer``.

Baselines from ``torch.optim`` (with their usual defaults):

    sgd           SGD(lr=0.01)
    sgd_momentum  SGD(lr=0.01, momentum=0.9)          heavy ball: v <- b v + g, x <- x - lr v
    nesterov      SGD(lr=0.01, momentum=0.9, nesterov=True)
    adam          Adam(lr=1e-3)
    adamw         AdamW(lr=1e-3, weight_decay=1e-2)
    rmsprop       RMSprop(lr=1e-3)
    adam_cosine   Adam(lr=1e-3) with a cosine decay over ``total_steps`` (``schedules.CosineAdam``)

The tuning-free contenders ``prodigy``, ``prodigy_cosine``, ``dadapt_adam``, ``dog`` and
``schedulefree_adamw`` (their authors' packages, the ``bench`` extra) are looked up in
``contenders.CONTENDERS`` first (so ``prodigy`` is the ``prodigyopt`` package's).

Every other name of the one optimizer registry (``metaopt.registry``: ``rk4``, ``"RK4"``,
``"metaopt.optim.RK4"``, ``"torch.optim.NAdam"``, a plug-in's names) builds its class with the
class's own defaults. The names and the classes come from the registry; this module adds only the
evaluation protocol's default learning rates above.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import registry
from .contenders import CONTENDERS, contender_names, resolve_contender

__all__ = ["BASELINES", "OptimizerFactory", "make_optimizer", "optimizer_names",
           "resolve_optimizer"]

#: the evaluation protocol's defaults on top of the registry's (torch's SGD has no default lr)
_PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.01},
    "sgd_momentum": {"lr": 0.01},
    "nesterov": {"lr": 0.01},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-2},
    "rmsprop": {"lr": 1e-3},
    "adam_cosine": {"lr": 1e-3, "total_steps": 1000},
}


def _baseline(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    spec = registry.get(name)
    return spec.cls, {**spec.defaults, **_PROTOCOL_DEFAULTS[name]}


BASELINES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    name: _baseline(name) for name in _PROTOCOL_DEFAULTS}


def optimizer_names() -> list[str]:
    """Baseline and contender names plus the ``metaopt.optim`` optimizer classes."""
    return sorted(BASELINES) + contender_names() + sorted(
        f"metaopt.optim.{registry.get(n).cls.__name__}" for n in registry.names("metaopt"))


def resolve_optimizer(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(optimizer class, default hyperparameters)`` for ``name``; ValueError if unknown."""
    if name in BASELINES:
        cls, defaults = BASELINES[name]
        return cls, dict(defaults)
    if name in CONTENDERS:
        return resolve_contender(name)
    spec = registry.get(name)
    if spec.cls is None:
        raise ValueError(f"optimizer {name!r} is a {spec.kind} checkpoint, not a class: use "
                         "metaopt.factory.NamedOptimizerFactory for it")
    return spec.cls, {**spec.defaults, **_PROTOCOL_DEFAULTS.get(spec.name, {})}


@dataclass
class OptimizerFactory:
    """``factory(params)`` builds ``cls(params, **hyperparameters)``; ``name`` is the registry
    name, ``label`` the display name in tables (defaults to ``name``)."""

    name: str
    cls: type[torch.optim.Optimizer]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    def __call__(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        return self.cls(params, **self.hyperparameters)

    def with_hyperparameters(self, label: str | None = None, **overrides: Any) -> OptimizerFactory:
        """A copy with some hyperparameters replaced (e.g. ``lr`` during tuning)."""
        _check_hyperparameters(self.name, self.cls, overrides)
        return OptimizerFactory(self.name, self.cls, {**self.hyperparameters, **overrides},
                                label if label is not None else self.label)


def _check_hyperparameters(name: str, cls: type, hyperparameters: dict[str, Any]) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = set(parameters) - {"self", "params"}
    unknown = sorted(set(hyperparameters) - accepted)
    if unknown:
        raise ValueError(f"optimizer {name!r} ({cls.__name__}) does not accept {unknown}; "
                         f"accepted: {sorted(accepted)}")


def make_optimizer(name: str, label: str | None = None, **hyperparameters: Any) -> OptimizerFactory:
    """A factory for the optimizer registered as ``name``, its defaults overridden by
    ``hyperparameters``. Unknown names or hyperparameters raise ``ValueError`` naming them."""
    cls, defaults = resolve_optimizer(name)
    _check_hyperparameters(name, cls, hyperparameters)
    return OptimizerFactory(name, cls, {**defaults, **hyperparameters}, label or name)

