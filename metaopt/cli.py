"""The ``metaopt`` command (``python -m metaopt`` does the same).

    metaopt train --config configs/garo.yaml task=mlp steps=100   # scripts/meta_train.py
    metaopt evaluate --config configs/eval_baselines.yaml         # scripts/evaluate.py
    metaopt benchmark rk                                          # scripts/benchmark.py
    metaopt analyze ...                                           # scripts/gdsearch.py (studies)
    metaopt list [optimizers|pretrained|tasks]                    # what can be built / loaded
    metaopt tasks [NAME ...]                                      # families, keywords, defaults
    metaopt train --import my_tasks.py --config my.yaml           # a user's families too

``train``, ``evaluate``, ``benchmark`` and ``analyze`` call ``main(argv)`` of the entry-point
modules of the ``scripts`` package (``scripts.meta_train``, ...), imported as a package, never run
by file path. ``scripts`` ships with a source checkout (``pip install -e .``, what ``make setup``
does, makes it importable). ``list`` and ``tasks`` need only the library: task families come from
the task registry (``metaopt.task_registry``), which installed plug-ins fill. ``--import MODULE`` (a
module name or a ``.py`` file; ``train``, ``evaluate``, ``list``, ``tasks``) imports the user's
module first, so the task families it
registers can be named (``metaopt.user_modules``).
"""
from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

#: subcommand -> (module of the scripts package, one-line help)
SCRIPTS = {
    "train": ("scripts.meta_train", "meta-train a learned optimizer (key=value config overrides)"),
    "evaluate": ("scripts.evaluate", "evaluate optimizers x task families x seeds from a config"),
    "benchmark": ("scripts.benchmark", "cost benchmarks with side-by-side ratios"),
    "analyze": ("scripts.gdsearch", "the analysis studies (GDSearch)"),
}
#: the scripts' bad-input errors (by class name): one line on stderr and exit 2, as documented
ONE_LINE_ERRORS = {"ConfigError": "config error", "RunDirError": "run directory error",
                   "TrainingStateError": "run directory error"}
LOCAL = {"list": "list optimizers, pretrained checkpoints and task families",
         "tasks": "task families with their keyword arguments and defaults"}


def _usage() -> str:
    lines = ["usage: metaopt COMMAND [ARGS ...]   (metaopt COMMAND --help for its options)", "",
             "commands:"]
    for name, (_, text) in SCRIPTS.items():
        lines.append(f"  {name:<10} {text}")
    for name, text in LOCAL.items():
        lines.append(f"  {name:<10} {text}")
    return "\n".join(lines)


def _load_script(command: str) -> Callable[..., Any]:
    module_name = SCRIPTS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in ("scripts", module_name):
            raise
        raise FileNotFoundError(
            f"metaopt {command}: module {module_name} not found. `metaopt {command}` runs the "
            "scripts package of a source checkout: install with `pip install -e .` from a clone "
            "(make setup)") from None
    if not callable(getattr(module, "main", None)):
        raise FileNotFoundError(f"metaopt {command}: {module_name} has no main(argv)")
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
    from .task_registry import family_factory, family_names
    return {name: family_factory(name) for name in family_names()}


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
        import difflib
        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, factories, n=3)})
        hint = f"did you mean {', '.join(close)}? " if close else ""
        print(f"unknown task family {unknown}; {hint}known: {', '.join(factories)}",
              file=sys.stderr)
        return 2
    for name in names or list(factories):
        factory = factories[name]
        print(f"{name}: {_first_line(_signature_target(factory))}")
        for key, default in family_keywords(factory):
            print(f"    {key} = {default}")
    print("\nuse: metaopt train --config configs/garo.yaml task=NAME [task.kwargs.KEY=VALUE ...]")
    return 0


def print_list(what: list[str]) -> int:
    from . import third_party
    from .factory import list_optimizers, optimizer_description
    sections = what or ["optimizers", "pretrained", "tasks"]
    bad = sorted(set(sections) - {"optimizers", "pretrained", "tasks", "third_party"})
    if bad:
        print(f"metaopt list: unknown section(s) {bad}; choose from optimizers, pretrained, "
              "tasks, third_party", file=sys.stderr)
        return 2
    for section in sections:
        if section == "optimizers":
            from .registry import kinds
            # pytorch_optimizer's names only on request: importing it costs ~0.6 s
            for kind in (k for k in kinds() if k not in ("pretrained", third_party.KIND)):
                print(f"optimizers ({kind}; metaopt.create_optimizer(model, NAME)):")
                for name in list_optimizers(kind):
                    print(f"  {name:<22} {optimizer_description(name)}")
            if third_party.available():
                print("  (and pytorch_optimizer's optimizers by name: metaopt list third_party)")
        elif section == "third_party":
            print(f"optimizers ({third_party.KIND}; metaopt.create_optimizer(model, NAME)):")
            for name in list_optimizers(third_party.KIND):
                print(f"  {name}")
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


def _import_first(args: list[str]) -> list[str]:
    """Import the ``--import MODULE`` modules of ``args`` (metaopt.user_modules); the rest."""
    from .user_modules import UserModuleError, import_user_modules
    specs, rest, it = [], [], iter(args)
    for arg in it:
        if arg == "--import" or arg.startswith("--import="):
            spec = arg.partition("=")[2] or next(it, "")
            if not spec:
                raise UserModuleError("--import needs a module name or a .py file")
            specs.append(spec)
        else:
            rest.append(arg)
    import_user_modules(specs)
    return rest


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
        if command in LOCAL:
            rest = _import_first(rest)  # --import MODULE: the user's families too
            return print_list(rest) if command == "list" else print_tasks(rest)
    except ImportError as error:  # metaopt.user_modules.UserModuleError: one line
        print(error, file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"metaopt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
