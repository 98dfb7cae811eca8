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
``contenders.CONTENDERS``.

Any other name is resolved lazily: ``"metaopt.optim.RK4"`` or plain ``"RK4"`` looks the class up
with ``getattr(metaopt.optim, "RK4")`` at call time (so the registry works before, and keeps
working after, the metaopt optimizers land), and ``"torch.optim.<Name>"`` any torch optimizer.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .contenders import CONTENDERS, contender_names, resolve_contender
from .schedules import CosineAdam

__all__ = ["BASELINES", "OptimizerFactory", "make_optimizer", "optimizer_names", "resolve_optimizer"]

BASELINES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.01}),
    "sgd_momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {"lr": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-3}),
    "adam_cosine": (CosineAdam, {"lr": 1e-3, "total_steps": 1000}),
}


def _metaopt_optim_names() -> list[str]:
    try:
        module = importlib.import_module("metaopt.optim")
    except ImportError:
        return []
    return sorted(
        name for name in getattr(module, "__all__", dir(module))
        if isinstance(getattr(module, name, None), type)
        and issubclass(getattr(module, name), torch.optim.Optimizer)
    )


def optimizer_names() -> list[str]:
    """Baseline and contender names, then the ``metaopt.optim`` classes importable right now."""
    optim = [f"metaopt.optim.{n}" for n in _metaopt_optim_names()]
    return sorted(BASELINES) + contender_names() + optim


def resolve_optimizer(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(optimizer class, default hyperparameters)`` for ``name``; ValueError if unknown."""
    if name in BASELINES:
        cls, defaults = BASELINES[name]
        return cls, dict(defaults)
    if name in CONTENDERS:
        return resolve_contender(name)
    module_name, attribute = "metaopt.optim", name
    for prefix in ("metaopt.optim.", "torch.optim."):
        if name.startswith(prefix):
            module_name, attribute = prefix[:-1], name[len(prefix):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"unknown optimizer {name!r}: cannot import {module_name} ({error})") from error
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(optimizer_names())}")
    return cls, {}


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
        raise ValueError(f"optimizer {name!r} ({cls.__name__}) does not accept {unknown}; accepted: {sorted(accepted)}")


def make_optimizer(name: str, label: str | None = None, **hyperparameters: Any) -> OptimizerFactory:
    """A factory for the optimizer registered as ``name``, its defaults overridden by
    ``hyperparameters``. Unknown names or hyperparameters raise ``ValueError`` naming them."""
    cls, defaults = resolve_optimizer(name)
    _check_hyperparameters(name, cls, hyperparameters)
    return OptimizerFactory(name, cls, {**defaults, **hyperparameters}, label or name)

