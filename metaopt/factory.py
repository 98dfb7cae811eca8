"""Build any optimizer by name: ``metaopt.create_optimizer`` / ``metaopt.list_optimizers``.

After ``timm.optim.create_optimizer_v2`` and ``pytorch_optimizer.load_optimizer``::

    opt = metaopt.create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05)
    opt = metaopt.create_optimizer(model, "rk4", lr=1e-2)
    opt = metaopt.create_optimizer(model, "garo_quadratics")            # a shipped checkpoint
    opt = metaopt.create_optimizer(model, "runs/garo/optimizer.safetensors")

Names are matched case-insensitively, ignoring ``_`` and ``-`` (``"AdamW"``, ``"adamw"``,
``"adaptive_rk"``, ``"AdaptiveRK"``), with optional ``torch.optim.`` / ``metaopt.optim.``
prefixes. Three kinds, checked in this order:

* ``metaopt``: every optimizer class of ``metaopt.optim`` (``rk4``, ``garo``, ``dcao``, ...);
* ``torch``: every ``torch.optim.Optimizer`` subclass of the installed torch (``adamw``, ...);
* ``pretrained``: every shipped checkpoint (``metaopt.list_pretrained()``), and any checkpoint
  file or ``save_pretrained`` directory given as a path (via ``metaopt.load_optimizer``);
* then, when installed, any name of ``pytorch_optimizer`` (``lion``, ``lamb``, ``adan``,
  ``prodigy``, ``schedulefree_adamw``, ...; ``metaopt.third_party``), with the same no-decay
  groups; a misspelt name gets close matches from all of them.

No-decay groups (timm's rule): when ``filter_bias_and_norm`` and ``weight_decay > 0``, parameters
with ``ndim <= 1`` (biases, LayerNorm / BatchNorm / GroupNorm scales) and names ending in
``.bias`` or listed by the module's ``no_weight_decay()`` go to a group with
``weight_decay=0``; the rest get ``weight_decay``. Explicit param-group dicts are passed as given.

``lr=None`` and ``weight_decay=0.0`` leave the optimizer's own default in place for the
learned optimizers (``GARO`` family and checkpoints), where ``weight_decay`` multiplies the
controller's wd_t (default 1.0) rather than being a rate; for them a non-zero ``weight_decay``
sets that multiplier on the decayed group and the no-decay group gets 0 (exempt). For every other
optimizer ``weight_decay`` is the usual rate and ``lr=None`` keeps the class default.
"""
from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["NamedOptimizerFactory", "create_optimizer", "list_optimizers", "optimizer_description",
           "param_groups"]

KINDS = ("metaopt", "torch", "pretrained")
#: metaopt classes whose ``weight_decay`` multiplies a learned wd_t (default 1.0), not a rate
_LEARNED = frozenset({"GARO", "GlobalAdaptiveSGD"})


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _snake(name: str) -> str:
    """``AdaptiveRK`` -> ``adaptive_rk``, ``RK4`` -> ``rk4``, ``RMSprop`` -> ``rmsprop``."""
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or
                                   (i + 1 < len(name) and name[i + 1].islower()
                                    and name[i - 1].isupper())) and name[i - 1] != "_":
            out += "_"
        out += ch.lower()
    return out


def _classes(module) -> dict[str, type]:
    names = getattr(module, "__all__", None) or dir(module)
    return {n: getattr(module, n) for n in names
            if isinstance(getattr(module, n, None), type)
            and issubclass(getattr(module, n), torch.optim.Optimizer)
            and getattr(module, n) is not torch.optim.Optimizer}


def _registry() -> dict[str, tuple[str, str, Any]]:
    """``key -> (display name, kind, class or checkpoint name)``; metaopt wins a clash."""
    from . import optim
    from .checkpoint import list_pretrained
    reg: dict[str, tuple[str, str, Any]] = {}
    for name in list_pretrained():
        reg[_key(name)] = (name, "pretrained", name)
    for name, cls in _classes(torch.optim).items():
        reg[_key(name)] = (name.lower(), "torch", cls)  # timm's names: adamw, nadam, rmsprop
    for name, cls in _classes(optim).items():
        reg[_key(name)] = (_snake(name), "metaopt", cls)
    return reg


def list_optimizers(kind: str | None = None) -> list[str]:
    """Names ``create_optimizer`` accepts (``kind``: ``"metaopt"``, ``"torch"``, ``"pretrained"``
    or None for all), sorted."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return sorted(display for display, k, _ in _registry().values() if kind in (None, k))


def optimizer_description(name: str) -> str:
    """A one-line description: the class docstring's first line, or the checkpoint's summary."""
    _, kind, target = _lookup(name)
    if kind == "pretrained":
        from .checkpoint import describe_checkpoint
        return describe_checkpoint(target)
    doc = inspect.getdoc(target) or ""
    return doc.splitlines()[0] if doc else target.__name__


def _is_path(name: str | os.PathLike) -> bool:
    text = os.fspath(name)
    return isinstance(name, os.PathLike) or os.sep in text or "/" in text \
        or text.endswith(".safetensors") or Path(text).exists()


def _lookup(name: str) -> tuple[str, str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"optimizer name must be a non-empty string, got {name!r}")
    bare = name
    for prefix in ("torch.optim.", "metaopt.optim."):
        if name.startswith(prefix):
            bare = name[len(prefix):]
    reg = _registry()
    entry = reg.get(_key(bare))
    if entry is not None and not (name.startswith("torch.optim.") and entry[1] != "torch"):
        return entry
    if name.startswith("torch.optim.") and hasattr(torch.optim, bare):
        return bare.lower(), "torch", getattr(torch.optim, bare)
    from . import third_party  # pytorch_optimizer's names, after ours (metaopt.third_party)
    if not name.startswith(("torch.optim.", "metaopt.optim.")):
        entry = third_party.lookup(bare)
        if entry is not None:
            return entry
    known = sorted({display for display, _, _ in reg.values()} | set(third_party.names()))
    close = difflib.get_close_matches(_key(bare), [_key(k) for k in known], n=3, cutoff=0.6)
    by_key = {_key(k): k for k in known}
    hint = f"; did you mean {', '.join(repr(by_key[c]) for c in close)}?" if close else ""
    raise ValueError(f"unknown optimizer {name!r}{hint} (metaopt.list_optimizers() lists "
                     f"metaopt's and torch's, metaopt.third_party.names() pytorch_optimizer's; "
                     f"a checkpoint path must exist)")


def param_groups(model_or_params: nn.Module | Iterable[Any], weight_decay: float,
                 filter_bias_and_norm: bool = True) -> list[dict[str, Any]] | list[Any]:
    """The parameter list the optimizer receives (see the module doc for the no-decay rule)."""
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
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": weight_decay}]
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
    if _is_path(name) and _key(os.fspath(name)) not in _registry():
        kind, target, display = "pretrained", os.fspath(name), os.fspath(name)
        if not Path(target).exists():
            raise FileNotFoundError(f"no checkpoint file or directory {target!r}")
    else:
        display, kind, target = _lookup(os.fspath(name))
    learned = kind == "pretrained" or getattr(target, "__name__", "") in _LEARNED
    if weight_decay and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = param_groups(model_or_params, weight_decay, filter_bias_and_norm)
    options = dict(kwargs)
    if lr is not None:
        options["lr"] = lr
    if weight_decay or not learned:
        options["weight_decay"] = weight_decay
    if kind == "pretrained":
        from .checkpoint import load_optimizer
        return load_optimizer(target, params, **options)
    if "weight_decay" in options and "weight_decay" not in inspect.signature(target).parameters:
        if options["weight_decay"]:
            raise ValueError(f"optimizer {display!r} ({target.__name__}) has no weight_decay")
        options.pop("weight_decay")
    try:
        return target(params, **options)
    except TypeError as exc:
        raise ValueError(f"optimizer {display!r} ({target.__name__}): {exc}") from None


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
