"""The GDSearch studies run by ``scripts/gdsearch.py``: one module per study in this package.

A study module exposes ``NAME`` (the command-line name), ``DESCRIPTION`` (one line), a dataclass
``Config`` (its typed configuration, defaults = the committed quick run) and
``run(cfg, out_dir: Path, logger) -> dict`` (writes CSV + PNG + ``report.md`` into ``out_dir``,
logs scalars/images through ``logger`` and returns the headline numbers). Modules are discovered
here, so adding a study is adding a file; helper modules without ``NAME`` (``common``) are skipped.

Optional: ``SMOKE``, a list of ``key=value`` overrides that make the study finish in a second or
two; ``tests/scripts/test_gdsearch.py`` runs every discovered study with them into a tmp dir.
Validation of values (ranges, choices) goes in ``Config.__post_init__`` and raises ``ValueError``
starting with the key name; the driver reports it before any work.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

REQUIRED = ("NAME", "DESCRIPTION", "Config", "run")


def discover() -> dict[str, ModuleType]:
    """``{NAME: module}`` of every study module in this package, sorted by name."""
    studies: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if not hasattr(module, "NAME"):
            continue
        missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
        if missing:
            raise ImportError(f"study module {module.__name__} lacks {missing}")
        if module.NAME in studies:
            raise ImportError(f"two study modules are named {module.NAME!r}")
        studies[module.NAME] = module
    return dict(sorted(studies.items()))
