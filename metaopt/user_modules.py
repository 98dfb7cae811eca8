"""``--import MODULE``: run a user's module before a command, so the task families (or
optimizers) it registers are known to ``metaopt train`` / ``metaopt evaluate``.

``MODULE`` is a module name importable from the current directory or ``sys.path``
(``my_tasks``, ``pkg.tasks``) or the path of a ``.py`` file (``./sine_task.py``); the module
registers its families with ``tasks.register(name, factory)`` at import time, as a plugin does.
A file is imported under its stem, so pickling and dataclasses find it like any module.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["UserModuleError", "import_user_modules"]


class UserModuleError(ImportError):
    """A ``--import`` that could not be imported (one line: which, and why)."""


def import_user_modules(specs: list[str]) -> list[ModuleType]:
    """Import every ``spec`` (module name or ``.py`` path) in order; return the modules."""
    return [_import_one(spec) for spec in specs]


def _import_one(spec: str) -> ModuleType:
    path = Path(spec)
    try:
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            if not path.is_file():
                raise UserModuleError(f"--import {spec!r}: no such file")
            name = path.stem
            loaded = sys.modules.get(name)
            if loaded is not None and getattr(loaded, "__file__", None) \
                    and Path(loaded.__file__).resolve() == path.resolve():
                return loaded  # imported already (e.g. by the user's session): once only
            loader_spec = importlib.util.spec_from_file_location(name, path.resolve())
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return module
        local = Path.cwd() / (spec.replace(".", os.sep) + ".py")
        if importlib.util.find_spec(spec.split(".")[0]) is None and local.is_file():
            return _import_one(str(local))  # a module beside the caller, as `python -m` finds it
        return importlib.import_module(spec)
    except UserModuleError:
        raise
    except Exception as error:  # the user's module failed: say which and why, in one line
        message = " ".join(str(error).split())
        raise UserModuleError(f"--import {spec!r} failed: {type(error).__name__}: "
                              f"{message}") from error
