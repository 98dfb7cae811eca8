"""Build any optimizer by name: ``metaopt.create_optimizer`` / ``metaopt.list_optimizers``.

After ``timm.optim.create_optimizer_v2`` and ``pytorch_optimizer.load_optimizer``::

    opt = metaopt.create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    opt = metaopt.create_optimizer(model, "rk4", lr=1e-2)
    opt = metaopt.create_optimizer(model, "garo_quadratics")            # a shipped checkpoint
    opt = metaopt.create_optimizer(model, "runs/garo/optimizer.safetensors")

Names come from the one optimizer registry, ``metaopt.registry`` (its docstring lists the
vocabulary and how a plug-in adds names): matched case-insensitively, ignoring ``_`` and ``-``
(``"AdamW"``, ``"adamw"``, ``"adaptive_rk"``, ``"AdaptiveRK"``), with optional ``torch.optim.`` /
``metaopt.optim.`` prefixes. The kinds, checked in this order:

* ``metaopt``: every optimizer class of ``metaopt.optim`` (``rk4``, ``garo``, ``dcao``, ...);
* ``torch``: every ``torch.optim.Optimizer`` subclass of the installed torch (``adamw``, ...);
* ``preset``: ``sgd_momentum``, ``nesterov``, ``adam_cosine`` (a class with other defaults);
* ``pretrained``: every shipped checkpoint (``metaopt.list_pretrained()``), and any checkpoint
  file or ``save_pretrained`` directory given as a path (via ``metaopt.load_optimizer``);
* then, when installed, any name of ``pytorch_optimizer`` (``lion``, ``lamb``, ``adan``,
  ``prodigy``, ``schedulefree_adamw``, ...; ``metaopt.third_party``), with the same no-decay
  groups; a misspelt name gets close matches from all of them.

No-decay groups (timm's rule): when ``filter_bias_and_norm`` and ``weight_decay > 0``, parameters
with ``ndim <= 1`` (biases, LayerNorm / BatchNorm / GroupNorm scales) and names ending in
``.bias`` or listed by the module's ``no_weight_decay()`` go to a group with
``weight_decay=0``; the rest get ``weight_decay``. Explicit param-group dicts are passed as given.

``weight_decay`` is the usual decay rate, and ``lr=None`` keeps the class default. The learned
optimizers (``GARO`` family and checkpoints) learn their decay: ``weight_decay_scale=s``
multiplies the controller's wd_t (default 1.0) on the decayed group and the no-decay group gets
0 (exempt); ``lr=None`` and ``weight_decay=0.0`` leave their own defaults in place. (A non-zero
``weight_decay`` given to GARO is the deprecated name of ``weight_decay_scale``: it still sets
the multiplier, with a ``DeprecationWarning``.)
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import registry

__all__ = ["NamedOptimizerFactory", "create_optimizer", "list_optimizers", "optimizer_description",
           "param_groups"]


def list_optimizers(kind: str | None = None) -> list[str]:
    """Names ``create_optimizer`` accepts (``kind``: ``"metaopt"``, ``"torch"``, ``"preset"``,
    ``"pretrained"``, any kind a plug-in source added, or None for all), sorted."""
    return registry.names(kind)


def optimizer_description(name: str) -> str:
    """A one-line description: the class docstring's first line, or the checkpoint's summary."""
    return registry.get(name).describe()


def _is_path(name: str | os.PathLike) -> bool:
    text = os.fspath(name)
    return isinstance(name, os.PathLike) or os.sep in text or "/" in text \
        or text.endswith(".safetensors") or Path(text).exists()


def _accepts(build: Any, keyword: str) -> bool:
    parameters = inspect.signature(build).parameters
    return keyword in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                        for p in parameters.values())


def param_groups(model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                 filter_bias_and_norm: bool = True, key: str = "weight_decay"
                 ) -> list[dict[str, Any]] | list[Any]:
    """The parameter list the optimizer receives (see the module doc for the no-decay rule);
    ``key``: the group key that holds the decay (``weight_decay_scale`` for GARO)."""
    if isinstance(model_or_params, nn.Module):
        named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        skip = set(getattr(model_or_params, "no_weight_decay", lambda: ())())
    else:
        items = list(model_or_params)
        if items and isinstance(items[0], dict):
            return items  # explicit groups: the caller decides
        named, skip = [(None, p) for p in items], set()
    if not (filter_bias_and_norm and weight_decay):
        return [p for _, p in named]
    decay, no_decay = [], []
    for n, p in named:
        exempt = p.ndim <= 1 or (n is not None and (n.endswith(".bias") or n in skip))
        (no_decay if exempt else decay).append(p)
    groups = [{"params": no_decay, key: 0.0}, {"params": decay, key: weight_decay}]
    return [g for g in groups if g["params"]]


def create_optimizer(model_or_params: nn.Module | Iterable[Any],
                     name: str | os.PathLike, lr: float | None = None,
                     weight_decay: float = 0.0, filter_bias_and_norm: bool = True,
                     **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (or the checkpoint at that path) for
    ``model_or_params`` (an ``nn.Module``, an iterable of tensors, or of param-group dicts).

    ``kwargs`` go to the optimizer's constructor (for a checkpoint: ``load_optimizer``'s
    overrides). Unknown names raise ``ValueError`` with close matches ("did you mean").
    """
    text = os.fspath(name)
    if _is_path(name) and not Path(text).exists():
        try:
            registry.get(text)
        except ValueError:
            raise FileNotFoundError(f"no checkpoint file or directory {text!r}") from None
    spec = registry.get(text)
    if weight_decay and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    options = dict(kwargs)
    scale = options.get("weight_decay_scale") if spec.learned else None
    if scale:  # GARO's multiplier of wd_t: 0 on the no-decay group, as a rate would be
        params = param_groups(model_or_params, scale, filter_bias_and_norm, "weight_decay_scale")
    else:
        params = param_groups(model_or_params, weight_decay, filter_bias_and_norm)
    if lr is not None:
        options["lr"] = lr
    if weight_decay or not spec.learned:
        options["weight_decay"] = weight_decay
    if "weight_decay" in options and spec.cls is not None \
            and not _accepts(spec.cls, "weight_decay"):
        if options["weight_decay"]:
            raise ValueError(f"optimizer {spec.name!r} ({spec.cls.__name__}) has no weight_decay")
        options.pop("weight_decay")
    try:
        return spec(params, **options)
    except TypeError as exc:
        label = spec.cls.__name__ if spec.cls is not None else spec.kind
        raise ValueError(f"optimizer {spec.name!r} ({label}): {exc}") from None


class NamedOptimizerFactory:
    """``factory(params) = create_optimizer(params, name, **hyperparameters)``: the evaluation
    harness's factory protocol (``label``, ``hyperparameters``, ``with_hyperparameters``) for any
    name or checkpoint path ``create_optimizer`` accepts. Built once on a probe tensor at
    construction, so an unknown name, a bad file or a bad keyword fails before any run."""

    def __init__(self, name: str | os.PathLike, label: str | None = None,
                 **hyperparameters: Any):
        self.name, self.hyperparameters = os.fspath(name), dict(hyperparameters)
        self.label = label or self.name
        self([torch.zeros(2, requires_grad=True)])

    def __call__(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        return create_optimizer(params, self.name, **self.hyperparameters)

    def with_hyperparameters(self, label: str | None = None,
                             **overrides: Any) -> NamedOptimizerFactory:
        return NamedOptimizerFactory(self.name, label if label is not None else self.label,
                                     **{**self.hyperparameters, **overrides})
