"""The task-family registry: name -> ``factory(**kwargs) -> TaskFamily``.

The library defines the registry; families fill it. The ``tasks`` package of this repository
registers its families when it is imported, and so can a user's own module::

    from metaopt.task_registry import register_family
    register_family("my_family", MyFamily)          # MyFamily(**kwargs) -> TaskFamily

``metaopt`` itself never imports ``tasks`` (the library stands alone; see docs/architecture.md).
Installed packages announce their families through the entry-point group
``metaopt.task_families`` (an entry names a module whose import registers families; this
repository's ``pyproject.toml`` names ``tasks``); those modules are imported the first time a name
is looked up or listed, so ``import metaopt`` stays cheap and a command such as ``metaopt tasks``
finds every family without knowing where they live.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

__all__ = ["ENTRY_POINT_GROUP", "family_factory", "family_names", "get_family",
           "register_family"]

ENTRY_POINT_GROUP = "metaopt.task_families"

_FAMILIES: dict[str, Callable[..., Any]] = {}
_PLUGINS_LOADED = False


def register_family(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> TaskFamily`` under ``name``."""
    if not isinstance(name, str) or not name or not callable(factory):
        raise ValueError(f"register_family: needs a non-empty name and a callable, got {name!r}")
    if name in _FAMILIES and not overwrite:
        raise ValueError(f"task family {name!r} is already registered")
    _FAMILIES[name] = factory


def _load_plugins() -> None:
    """Import every module of the ``metaopt.task_families`` entry points, once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        import_module(entry.value.split(":")[0])


def family_names() -> list[str]:
    """Sorted names of all registered task families."""
    _load_plugins()
    return sorted(_FAMILIES)


def family_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; ``ValueError`` naming the known families if none."""
    _load_plugins()
    if name not in _FAMILIES:
        known = ", ".join(family_names()) or "none (import the module that registers them)"
        raise ValueError(f"unknown task family {name!r}; known families: {known}")
    return _FAMILIES[name]


def _check_kwargs(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = {key for key, p in parameters.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              inspect.Parameter.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"task family {name!r} got unknown keyword argument(s) {unknown}; "
                         f"accepted: {sorted(accepted)}")


def get_family(name: str, **kwargs: Any):
    """Build the family registered as ``name`` with ``kwargs``.

    Raises ``ValueError`` naming the family if it is unknown, or the offending keyword if the
    family does not accept it; a family's own validation errors (bad values) propagate as
    ``ValueError`` with the family name prefixed.
    """
    factory = family_factory(name)
    _check_kwargs(name, factory, kwargs)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"task family {name!r}: {error}") from error

