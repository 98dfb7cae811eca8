"""Checkpoint names: which file a name means, the shipped checkpoints, one line about each.

``resolve`` turns a name into a checkpoint file by one rule: a bare shipped name is the shipped
``<name>.safetensors`` in ``metaopt/pretrained``, an existing path is a local file (a directory
its ``save_pretrained`` checkpoint), ``owner/name`` that is not a local path is a Hub repo id
(downloaded with ``huggingface_hub``), anything else is a ``FileNotFoundError``.
``list_pretrained`` lists the shipped names in the order a user should pick them and
``describe_checkpoint`` gives one line about a checkpoint. ``metaopt.checkpoint`` re-exports
these names; ``load_optimizer`` there builds the optimizer from what ``resolve`` finds.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

SUFFIX = ".safetensors"

PathLike = str | os.PathLike


def _pretrained_dir() -> Path:
    return Path(str(resources.files("metaopt.pretrained")))


def list_pretrained(describe: bool = False) -> list[str] | dict[str, str]:
    """Names of the checkpoints shipped in ``metaopt/pretrained`` (for ``load_optimizer``), what a
    user should pick first (``metaopt.pretrained.RECOMMENDED``), pipeline fixtures last
    (``metaopt.pretrained.FIXTURES``); with ``describe=True`` a ``{name: one-line description}``
    dict in that order (``describe_checkpoint``; a fixture's line says it is one)."""
    from .pretrained import FIXTURES, RECOMMENDED

    def rank(name: str) -> tuple[int, int, str]:
        if name in RECOMMENDED:
            return 0, RECOMMENDED.index(name), name
        return (2 if name in FIXTURES else 1), 0, name

    names = sorted((p.name[: -len(SUFFIX)] for p in _pretrained_dir().glob(f"*{SUFFIX}")),
                   key=rank)
    if not describe:
        return names
    lines = {name: describe_checkpoint(_pretrained_dir() / f"{name}{SUFFIX}") for name in names}
    return {name: f"{FIXTURES[name]}: {line}" if name in FIXTURES else line
            for name, line in lines.items()}


def describe_checkpoint(path: PathLike) -> str:
    """One line about a checkpoint: its provenance's ``description`` when it has one, else what
    the metadata says (optimizer, controller options, training task and steps)."""
    from .checkpoint import load_checkpoint  # (metaopt.checkpoint imports this module)
    ckpt = load_checkpoint(resolve(path))
    if ckpt.training.get("description"):
        return str(ckpt.training["description"])
    config = json.loads(ckpt.metadata.get("controller_config", "{}"))
    config = config.get("garo", config)  # a hybrid's HybridControllers: GARO's options
    options = ", ".join(f"{k}={v}" for k, v in sorted(ckpt.optimizer_config.items()))
    trained = ", ".join(f"{k} {ckpt.training[k]}" for k in ("task", "steps") if k in ckpt.training)
    return (f"{ckpt.metadata.get('optimizer_class', 'GARO')} ({options}; features "
            f"{config.get('features', 'seed')}) meta-trained on {trained or 'unknown tasks'}")


def looks_like_path(name: PathLike) -> bool:
    """Written as a path: a ``PathLike``, or text with a path separator, a leading ``.`` or
    ``~``, or a checkpoint file suffix."""
    if not isinstance(name, str):
        return True
    separators = (os.sep, "/") + ((os.altsep,) if os.altsep else ())
    return any(s in name for s in separators) or name.startswith((".", "~")) \
        or name.lower().endswith(SUFFIX)


def resolve(name_or_path: PathLike) -> Path:
    """The checkpoint file ``name_or_path`` names, by one rule:

    1. a bare shipped name (``garo_general``: no separator, no leading ``.``) is the shipped
       checkpoint, whatever lies in the current directory — write ``./garo_general`` for a
       local file or folder of that name;
    2. an existing file is itself, an existing directory its ``save_pretrained`` checkpoint;
    3. ``owner/name`` that is not a local path (``metaopt.hub.is_repo_id``) is a Hub repo,
       downloaded with ``huggingface_hub`` when installed;
    4. anything else is a ``FileNotFoundError`` naming it (a mistyped path never goes to the
       Hub).
    """
    shipped = list_pretrained()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return _pretrained_dir() / f"{name_or_path}{SUFFIX}"
    path = Path(name_or_path).expanduser()
    if path.is_dir():  # Hub-style directory (metaopt.hub): config.json + model.safetensors
        from .hub import checkpoint_file
        return checkpoint_file(path)
    if path.exists() or os.path.lexists(path):  # a file (FIFOs and devices: load_checkpoint)
        return path
    from .hub import download, is_repo_id
    if is_repo_id(name_or_path):
        if _hub_available():
            return download(str(name_or_path))
        raise FileNotFoundError(f"no checkpoint file {str(name_or_path)!r} and no shipped "
                                f"checkpoint of that name; as a Hub repo id it needs "
                                f'huggingface_hub (pip install "metaopt[hub]")')
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"{os.fspath(name_or_path)!r}: no such checkpoint file or "
                                "directory")
    raise FileNotFoundError(f"no checkpoint file {str(name_or_path)!r} and no shipped checkpoint "
                            f"of that name (shipped: {shipped or 'none yet'})")


def _hub_available() -> bool:
    from importlib.util import find_spec
    return find_spec("huggingface_hub") is not None

