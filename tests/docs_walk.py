"""Walk the shell commands of README.md and docs/*.md in the order written (the docs site's nav
order after the README), as a newcomer would type them into a fresh clone.

``commands()`` yields ``(doc, line, argv)``: the fenced ```bash blocks, backslash continuations
joined, comments dropped (``shlex``), with the files that the docs ask to save (```yaml
title="FILE"`` and ```python title="FILE"`` blocks) interleaved as ``("write", FILE, text)``.
``classify(argv)`` says how the walk treats a command:

* ``("metaopt", args)``: ``metaopt ...``, ``python -m metaopt ...`` and the scripts that
  ``metaopt`` dispatches to (``.venv/bin/python scripts/meta_train.py ...`` is ``train``);
* ``("make", target)``: a Makefile target (``make quickstart`` is the train run it documents);
* ``("help", script)``: other scripts (long studies and benchmarks): only ``--help``;
* ``("torchrun", (nproc, args))``: ``torchrun ... scripts/meta_train.py ...`` (or ``-m
  scripts.meta_train``): the ``metaopt`` args of the script, run by ``nproc`` processes.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r'^```(\w*)([^\n]*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
SCRIPT_COMMANDS = {"meta_train.py": "train", "evaluate.py": "evaluate",
                   "benchmark.py": "benchmark", "gdsearch.py": "analyze"}
#: metaopt subcommands that run for minutes whatever the step counts: the walk checks --help
LONG = {"benchmark", "analyze"}


def documents() -> list[Path]:
    """README.md, then docs/*.md in the mkdocs nav order (any page not in the nav last)."""
    nav = re.findall(r"^\s*-\s.*?([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(),
                     re.MULTILINE)
    pages = [ROOT / "docs" / p for p in dict.fromkeys(nav) if (ROOT / "docs" / p).is_file()]
    pages += sorted(p for p in (ROOT / "docs").glob("*.md") if p not in pages)
    return [ROOT / "README.md", *pages]


def commands(docs: list[Path] | None = None):
    for doc in docs or documents():
        text = doc.read_text()
        for match in FENCE.finditer(text):
            language, info, code = match.groups()
            line = text[: match.start()].count("\n") + 1
            title = re.search(r'title="([^"]+)"', info)
            if title and language in ("yaml", "python"):
                yield doc, line, ("write", title.group(1), code)
            elif language in ("bash", "sh", "shell", "console"):
                for command in code.replace("\\\n", " ").splitlines():
                    argv = shlex.split(command, comments=True)
                    if argv:
                        yield doc, line, argv


def classify(argv: list[str]) -> tuple[str, object]:
    if Path(argv[0]).name == "torchrun":
        return "torchrun", _torchrun(argv)
    if argv[0] == "make":
        return "make", argv[1] if len(argv) > 1 else "all"
    if argv[0] == "metaopt":
        return "metaopt", argv[1:]
    if argv[0].endswith("python") or argv[0].endswith("python3"):
        if argv[1:3] == ["-m", "metaopt"]:
            return "metaopt", argv[3:]
        if argv[1] == "-m" and len(argv) > 2 and argv[2].startswith("scripts."):
            argv = [argv[0], argv[2].split(".", 1)[1] + ".py", *argv[3:]]  # python -m scripts.X
        script = Path(argv[1]).name
        if script in SCRIPT_COMMANDS:
            return "metaopt", [SCRIPT_COMMANDS[script], *argv[2:]]
        return "help", argv[1]
    raise ValueError(f"the docs' command {shlex.join(argv)!r}: the walk does not know how to run "
                     "it (extend tests/docs_walk.py)")


def _torchrun(argv: list[str]) -> tuple[int, list[str]]:
    """``(nproc_per_node, metaopt args)`` of a torchrun command of a ``SCRIPT_COMMANDS`` script."""
    nproc, rest = 1, argv[1:]
    while rest:
        head = rest.pop(0)
        if head == "--nproc_per_node":
            nproc = int(rest.pop(0))
        elif head == "-m" and rest[0].startswith("scripts."):
            script = rest.pop(0).split(".", 1)[1] + ".py"
            break
        elif head.endswith(".py"):
            script = Path(head).name
            break
    else:
        raise ValueError(f"the docs' command {shlex.join(argv)!r}: torchrun of what script?")
    return nproc, [SCRIPT_COMMANDS[script], *rest]


def make_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target (``$(PY)`` etc. left as written)."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", text, re.MULTILINE)
    assert match, f"make {target}: no such target in the Makefile"
    return [line.strip() for line in match.group(1).splitlines()]


# ------------------------------------------------------------------ tiny work, same meaning
TINY_CONFIG = {"controller": {"hidden_size": 4},
               "unroll": {"num_tasks": 2, "truncation_length": 3, "schedule": "constant",
                          "horizon": 6}, "steps": 2}
TINY_TRAIN = ["progress=false", "wandb.mode=disabled", "checkpoint_every=1", "validation.every=1",
              "validation.num_tasks=1", "validation.horizon=4", "evaluation.steps=4",
              "evaluation.num_tasks=1", "evaluation.tuning_steps=3",
              "evaluation.tuning_lrs=[0.01,0.1]"]
TINY_EVALUATE = ["steps=4", "eval_every=2", "task_seeds=[0]", "tuning.num_lrs=2",
                 "tuning.steps=3", "tuning.task_seeds=[10000]", "track_memory=false"]
MAX_STEPS = 3


def tiny_train(args: list[str], workdir: Path) -> list[str]:
    """``--config FILE`` -> a tiny copy under .walk/ with the same stem; ``steps=N`` capped."""
    out, it = [], iter(args)
    for arg in it:
        if arg == "--config":
            source = Path(next(it))
            data = yaml.safe_load(source.read_text()) or {}
            for key, value in TINY_CONFIG.items():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
            copy = workdir / ".walk" / source.parent / source.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(yaml.safe_dump(data))
            out += ["--config", str(copy)]
        elif arg.startswith("steps="):
            out.append(f"steps={min(int(arg.split('=')[1]), MAX_STEPS)}")
        else:
            out.append(arg)
    return [*out, *TINY_TRAIN]


def metaopt_argv(args: list[str], workdir: Path, run: bool) -> tuple[list[str], bool]:
    """(argv for metaopt.cli.main, whether it ends in argparse's --help exit)."""
    command = args[0] if args else ""
    if "--help" in args or "-h" in args:
        return args, True
    if command in LONG or (command == "evaluate" and not run):
        return [*args, "--help"], True
    if command == "train":
        tiny = tiny_train(args[1:], workdir)
        return (["train", *tiny] if run else ["train", *tiny, "--check"]), False
    if command == "evaluate":
        return [*args, *TINY_EVALUATE], False
    return args, False
