"""The ``metaopt`` command (``python -m metaopt`` does the same).

    metaopt train --config configs/garo.yaml task=mlp steps=100   # scripts/meta_train.py
    metaopt evaluate --config configs/eval_baselines.yaml         # scripts/evaluate.py
    metaopt benchmark rk                                          # scripts/benchmark.py
    metaopt analyze ...                                           # scripts/gdsearch.py (studies)
    metaopt list [optimizers|pretrained|tasks]                    # what can be built / loaded
    metaopt tasks [NAME ...]                                      # families, keywords, defaults

``train``, ``evaluate``, ``benchmark`` and ``analyze`` run the scripts of the source checkout
(``main(argv)`` of the module, loaded by path; the scripts stay the implementation and can still
be run directly). ``scripts/`` is not part of the installed package: the command finds it next to
the ``metaopt`` package, which is where an editable install (``pip install -e .``, what
``make setup`` does) leaves it, or in the folder named by ``METAOPT_SCRIPTS``. ``list`` and
``tasks`` need only the installed packages.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "scripts_dir"]

#: subcommand -> (script file, one-line help)
SCRIPTS = {
    "train": ("meta_train.py", "meta-train a learned optimizer (key=value config overrides)"),
    "evaluate": ("evaluate.py", "evaluate optimizers x task families x seeds from a config"),
    "benchmark": ("benchmark.py", "cost benchmarks with side-by-side ratios"),
    "analyze": ("gdsearch.py", "the analysis studies (GDSearch)"),
}
#: the scripts' bad-input errors (by class name): one line on stderr and exit 2, as documented
ONE_LINE_ERRORS = {"ConfigError": "config error", "RunDirError": "run directory error",
                   "TrainingStateError": "run directory error"}
LOCAL = {"list": "list optimizers, pretrained checkpoints and task families",
         "tasks": "task families with their keyword arguments and defaults"}


def scripts_dir() -> Path:
    """``$METAOPT_SCRIPTS``, else ``scripts/`` beside the ``metaopt`` package (source checkout)."""
    if os.environ.get("METAOPT_SCRIPTS"):
        return Path(os.environ["METAOPT_SCRIPTS"])
    return Path(__file__).resolve().parents[1] / "scripts"


def _usage() -> str:
    lines = ["usage: metaopt COMMAND [ARGS ...]   (metaopt COMMAND --help for its options)", "",
             "commands:"]
    for name, (_, text) in SCRIPTS.items():
        lines.append(f"  {name:<10} {text}")
    for name, text in LOCAL.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", f"scripts folder: {scripts_dir()} (set METAOPT_SCRIPTS to move it)"]
    return "\n".join(lines)


def _load_script(command: str) -> Callable[..., Any]:
    filename = SCRIPTS[command][0]
    path = scripts_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"metaopt {command}: {path} not found. `metaopt {command}` runs scripts/{filename} "
            "of a source checkout: install with `pip install -e .` from a clone (make setup), or "
            "set METAOPT_SCRIPTS to the checkout's scripts/ folder"
            + (" (the analysis studies may not exist in this version)"
               if command == "analyze" else ""))
    spec = importlib.util.spec_from_file_location(f"metaopt_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise FileNotFoundError(f"metaopt {command}: {path} has no main(argv)")
    return module.main


def _run_script(command: str, argv: list[str]) -> int:
    main_fn = _load_script(command)
    saved = sys.argv
    sys.argv = [f"metaopt {command}", *argv]  # argparse's prog in usage and errors
    try:
        result = main_fn(argv)
    except Exception as error:  # the scripts' own one-line errors, whatever module raised them
        prefix = ONE_LINE_ERRORS.get(type(error).__name__)
        if prefix is not None:
            print(f"{prefix}: {error}", file=sys.stderr)
            return 2
        raise
    finally:
        sys.argv = saved
    return result if isinstance(result, int) else 0


# ------------------------------------------------------------------------------- list / tasks
def _family_factories() -> dict[str, Callable[..., Any]]:
    import tasks
    # tasks keeps its registry private; names() and get() are public, the factory signatures
    # (what `metaopt tasks` prints) are only reachable through it
    return {name: tasks._REGISTRY[name] for name in tasks.names()}


def _signature_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(factory, "func", factory)  # functools.partial -> the wrapped class


def family_keywords(factory: Callable[..., Any]) -> list[tuple[str, str]]:
    """``(name, default)`` of a family factory's keyword arguments (device/dtype left out)."""
    out = []
    for name, p in inspect.signature(factory).parameters.items():
        if name in ("device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append((name, "required" if p.default is p.empty else repr(p.default)))
    return out


def _first_line(obj: Any, width: int = 100) -> str:
    """The docstring's first sentence, on one line, at most ``width`` characters."""
    paragraph = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 1].rstrip() + "…"


def print_tasks(names: list[str]) -> int:
    factories = _family_factories()
    unknown = [n for n in names if n not in factories]
    if unknown:
        print(f"unknown task family {unknown}; known: {', '.join(factories)}", file=sys.stderr)
        return 2
    for name in names or list(factories):
        factory = factories[name]
        print(f"{name}: {_first_line(_signature_target(factory))}")
        for key, default in family_keywords(factory):
            print(f"    {key} = {default}")
    print("\nuse: metaopt train --config configs/garo.yaml task=NAME [task.kwargs.KEY=VALUE ...]")
    return 0


def print_list(what: list[str]) -> int:
    from .factory import list_optimizers, optimizer_description
    sections = what or ["optimizers", "pretrained", "tasks"]
    bad = sorted(set(sections) - {"optimizers", "pretrained", "tasks"})
    if bad:
        print(f"metaopt list: unknown section(s) {bad}; choose from optimizers, pretrained, "
              "tasks", file=sys.stderr)
        return 2
    for section in sections:
        if section == "optimizers":
            for kind in ("metaopt", "torch"):
                print(f"optimizers ({kind}.optim; metaopt.create_optimizer(model, NAME)):")
                for name in list_optimizers(kind):
                    print(f"  {name:<22} {optimizer_description(name)}")
        elif section == "pretrained":
            print("pretrained checkpoints (metaopt.load_optimizer(NAME, params)):")
            names = list_optimizers("pretrained")
            for name in names:
                print(f"  {name:<22} {optimizer_description(name)}")
            if not names:
                print("  (none shipped)")
        else:
            print("task families (`metaopt tasks` for their keyword arguments):")
            for name, factory in _family_factories().items():
                print(f"  {name:<22} {_first_line(_signature_target(factory))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(f"metaopt {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in SCRIPTS:
            return _run_script(command, rest)
        if command == "list":
            return print_list(rest)
        if command == "tasks":
            return print_tasks(rest)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"metaopt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
