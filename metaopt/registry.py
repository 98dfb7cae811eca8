"""The one name -> optimizer registry of metaopt, and its vocabulary.

Every place that turns a name into an optimizer reads this module: ``metaopt.create_optimizer``,
the evaluation harness (``metaopt.evaluation.make_optimizer``), the analysis toolkit
(``metaopt.analysis.trajectories``, ``metaopt.analysis.batched``), the hybrid's GD/ODE modules
and every config under ``configs/``.

Vocabulary. A name is matched case-insensitively, ignoring ``_`` and ``-``, with optional
``torch.optim.`` / ``metaopt.optim.`` prefixes, so ``"SGD"``, ``"sgd"``, ``"AdaptiveRK"`` and
``"adaptive_rk"`` are one name each; the canonical spelling is lowercase snake case and is the one
configs use. Built in, by kind:

* ``metaopt``: every optimizer class of ``metaopt.optim`` (``garo``, ``dcao``, ``rk4``, ``heun``,
  ``ralston``, ``runge_kutta``, ``adaptive_rk``, ``gradient_flow``, ``hybrid_gdode``, ...);
* ``torch``: every ``torch.optim.Optimizer`` subclass of the installed torch (``sgd``, ``adam``,
  ``adamw``, ``rmsprop``, ``nadam``, ...);
* ``preset``: a torch class with other defaults: ``sgd_momentum`` (SGD, momentum 0.9),
  ``nesterov`` (SGD, momentum 0.9, Nesterov), ``adam_cosine`` (Adam with a cosine-decayed lr,
  ``metaopt.evaluation.schedules.CosineAdam``);
* ``pretrained`` (a fallback source): every shipped checkpoint (``metaopt.list_pretrained()``)
  and any checkpoint file or ``save_pretrained`` directory given as an existing path.

On a clash the earlier kind wins (``metaopt`` over ``torch``); registered names win over the
fallback sources, which are asked in the order they were added. An unknown name raises
``ValueError`` with the close matches ("did you mean ...").

Adding a source of optimizers takes one call:

* one optimizer: ``register("prodigy", "prodigyopt:Prodigy", kind="contender",
  defaults={"lr": 1.0})``; ``build`` is a class, any ``build(params, **options) -> Optimizer``,
  or a ``"package.module:Name"`` string imported on first use (an optional dependency costs
  nothing until that name is built);
* a whole library looked up on demand (e.g. ``pytorch_optimizer``'s hundred optimizers):
  ``register_source(lookup, names=..., kind="third_party")`` with ``lookup(name) ->
  OptimizerSpec | None``; sources are asked after the registered names, so they never shadow one.

The pure update rules (``metaopt.rules``) that share this vocabulary are named with
``match_name(name, choices, what)``, which gives the same case-insensitive matching and the same
did-you-mean error over a fixed list (the hybrid's GD and ODE modules, the batched rules).
"""
from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

__all__ = ["OptimizerSpec", "build", "canonical_name", "get", "key", "kinds", "match_name",
           "names", "register", "register_source"]

_PREFIXES = ("torch.optim.", "metaopt.optim.")


def key(name: str) -> str:
    """The matching key of a name: lowercase, without ``_`` and ``-``."""
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


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: ``spec(params, **options)`` builds it with ``defaults`` under
    the caller's ``options``.

    ``learned`` marks optimizers that learn their weight decay ``wd_t`` (GARO and its
    checkpoints): they take a multiplier, ``weight_decay_scale``, not a decay rate, and
    ``create_optimizer`` builds their no-decay groups with it.
    """

    name: str
    kind: str
    build: Callable[..., torch.optim.Optimizer] | str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    learned: bool = False

    @property
    def target(self) -> Callable[..., torch.optim.Optimizer]:
        """``build``, with a ``"package.module:Name"`` string imported on first use (so a
        source can list names without importing its library)."""
        if not isinstance(self.build, str):
            return self.build
        module, _, attribute = self.build.partition(":")
        return getattr(import_module(module), attribute)

    @property
    def cls(self) -> type | None:
        """The optimizer class, or None when ``build`` is a function (e.g. a checkpoint loader)."""
        target = self.target
        return target if isinstance(target, type) else None

    def describe(self) -> str:
        """``description``, else the first line of the class docstring."""
        if self.description:
            return self.description
        doc = inspect.getdoc(self.target) or ""
        return doc.splitlines()[0] if doc else getattr(self.target, "__name__", self.name)

    def __call__(self, params: Iterable[Any], **options: Any) -> torch.optim.Optimizer:
        return self.target(params, **{**self.defaults, **options})


Lookup = Callable[[str], "OptimizerSpec | None"]

_ENTRIES: dict[str, OptimizerSpec] = {}
_SOURCES: list[tuple[str, Lookup, Callable[[], Iterable[str]] | None]] = []
_BUILTINS_LOADED = False


def register(name: str, build: Callable[..., torch.optim.Optimizer] | str, *, kind: str = "user",
             defaults: Mapping[str, Any] | None = None, description: str = "",
             learned: bool = False, overwrite: bool = False) -> OptimizerSpec:
    """Register ``build`` under ``name``: a class, a ``build(params, **options)`` function, or
    ``"package.module:Name"`` imported when first used."""
    if not isinstance(name, str) or not name or not (callable(build) or (
            isinstance(build, str) and ":" in build)):
        raise ValueError(f"register: needs a non-empty name and a callable or 'module:Name', "
                         f"got {name!r}, {build!r}")
    _load_builtins()
    spec = OptimizerSpec(name, kind, build, dict(defaults or {}), description, learned)
    if key(name) in _ENTRIES and not overwrite:
        raise ValueError(f"optimizer {name!r} is already registered "
                         f"(as {_ENTRIES[key(name)].name!r}); pass overwrite=True to replace it")
    _ENTRIES[key(name)] = spec
    return spec


def register_source(lookup: Lookup, *, kind: str,
                    names: Callable[[], Iterable[str]] | None = None) -> None:
    """Add a fallback: ``lookup(name) -> OptimizerSpec | None`` is asked for names nobody
    registered; ``names()`` (optional) lists what it offers for ``names()`` and did-you-mean."""
    _load_builtins()
    _SOURCES.append((kind, lookup, names))


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def get(name: str | os.PathLike) -> OptimizerSpec:
    """The spec registered as ``name`` (see the module doc for matching); ValueError if none."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"optimizer name must be a non-empty string, got {name!r}")
    _load_builtins()
    bare = _strip(name)
    spec = _ENTRIES.get(key(bare))
    if name.startswith("torch.optim."):  # the prefix asks for torch's class, whatever clashes
        cls = getattr(torch.optim, bare, None)
        if spec is not None and spec.kind == "torch":
            return spec
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            return OptimizerSpec(bare.lower(), "torch", cls)
        spec = None
    if spec is not None:
        return spec
    for _, lookup, _ in _SOURCES:
        found = lookup(name)
        if found is not None:
            return found
    known = names()
    raise ValueError(f"unknown optimizer {name!r}{_did_you_mean(bare, known)} "
                     f"(metaopt.list_optimizers() lists all {len(known)}; a checkpoint path "
                     "must exist)")


def canonical_name(name: str) -> str:
    """The registry's spelling of ``name`` (``"SGD"`` -> ``"sgd"``); ValueError if unknown."""
    return get(name).name


def build(name: str | os.PathLike, params: Iterable[Any], **options: Any
          ) -> torch.optim.Optimizer:
    """``get(name)(params, **options)``: the optimizer with its registered defaults under
    ``options`` (no weight-decay grouping; ``create_optimizer`` adds that)."""
    return get(name)(params, **options)


def kinds() -> list[str]:
    """Every kind of name known now (built-in kinds first, then the added ones)."""
    _load_builtins()
    out = list(dict.fromkeys(spec.kind for spec in _ENTRIES.values()))
    out += [k for k, _, _ in _SOURCES if k not in out]
    return out


def names(kind: str | None = None) -> list[str]:
    """Sorted canonical names (of one ``kind``, or all)."""
    if kind is not None and kind not in kinds():
        raise ValueError(f"kind must be one of {tuple(kinds())} or None, got {kind!r}")
    out = {spec.name for spec in _ENTRIES.values() if kind in (None, spec.kind)}
    for source_kind, _, listing in _SOURCES:
        if listing is not None and kind in (None, source_kind):
            out.update(n for n in listing() if key(n) not in _ENTRIES)
    return sorted(out)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    by_key = {key(k): k for k in known}
    close = difflib.get_close_matches(key(name), list(by_key), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(by_key[c]) for c in close)}?" if close else ""


def match_name(name: str, choices: Iterable[str], what: str = "name") -> str:
    """The entry of ``choices`` that ``name`` spells (same matching as the registry), else a
    one-line ``ValueError`` naming ``what``, the choices and the close matches."""
    choices = list(choices)
    if isinstance(name, str):
        for choice in choices:
            if key(_strip(name)) == key(choice):
                return choice
    hint = _did_you_mean(name, choices) if isinstance(name, str) else ""
    raise ValueError(f"{what}: unknown {name!r}{hint} (choose from {', '.join(choices)})")


# ------------------------------------------------------------------------------ built-in names
def _optimizer_classes(module) -> dict[str, type]:
    listed = getattr(module, "__all__", None) or dir(module)
    return {n: getattr(module, n) for n in listed
            if isinstance(getattr(module, n, None), type)
            and issubclass(getattr(module, n), torch.optim.Optimizer)
            and getattr(module, n) is not torch.optim.Optimizer}


def _is_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith(".safetensors") or Path(name).exists()


def _pretrained(name: str) -> OptimizerSpec | None:
    """Shipped checkpoints by name, and existing checkpoint paths."""
    from .checkpoint import describe_checkpoint, list_pretrained, load_optimizer
    shipped = {key(n): n for n in list_pretrained()}
    target = shipped.get(key(name))
    if target is None and _is_path(name) and Path(name).exists():
        target = name
    if target is None:
        return None

    def load(params, **options):
        return load_optimizer(target, params, **options)
    load.__doc__ = describe_checkpoint(target) if target in shipped.values() else target
    return OptimizerSpec(target, "pretrained", load, learned=True)


def _pretrained_names() -> list[str]:
    from .checkpoint import list_pretrained
    return list_pretrained()


def _third_party(name: str) -> OptimizerSpec | None:
    from . import third_party
    found = third_party.lookup(name)
    return None if found is None else OptimizerSpec(found[0], third_party.KIND, found[2])


def _load_builtins() -> None:
    """Fill the registry on first use, so ``import metaopt.registry`` stays cheap and importing
    it from ``metaopt.optim`` creates no cycle."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from . import optim
    entries: dict[str, OptimizerSpec] = {}
    for name, cls in _optimizer_classes(optim).items():
        entries[key(name)] = OptimizerSpec(_snake(name), "metaopt", cls,
                                           learned=name in ("GARO", "GlobalAdaptiveSGD"))
    for name, cls in _optimizer_classes(torch.optim).items():
        entries.setdefault(key(name), OptimizerSpec(name.lower(), "torch", cls))
    presets = {
        "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9},
                         "SGD with heavy-ball momentum 0.9: v <- 0.9 v + g, x <- x - lr v"),
        "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True},
                     "SGD with Nesterov momentum 0.9"),
        "adam_cosine": ("metaopt.evaluation.schedules:CosineAdam", {},
                        "Adam with a cosine-decayed lr over total_steps"),
    }
    for name, (cls, defaults, text) in presets.items():
        entries.setdefault(key(name), OptimizerSpec(name, "preset", cls, defaults, text))
    _ENTRIES.update({k: v for k, v in entries.items() if k not in _ENTRIES})
    _SOURCES.insert(0, ("pretrained", _pretrained, _pretrained_names))
    from . import third_party  # pytorch_optimizer's names, asked after everything else
    _SOURCES.append((third_party.KIND, _third_party, third_party.names))
