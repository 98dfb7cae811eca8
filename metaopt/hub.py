"""Hugging Face Hub-style checkpoint directories (the layout of ``PyTorchModelHubMixin``).

The learned-optimizer community shares controllers as Hub repos (Celo, PyLO load them with
``PyTorchModelHubMixin.from_pretrained``). ``save_pretrained`` writes that layout::

    <dir>/config.json         what rebuilds the optimizer: controller / optimizer class and config
    <dir>/model.safetensors   the metaopt checkpoint itself (tensors + self-describing metadata)
    <dir>/README.md           a model card: training mixture, compute, measured table, usage

``model.safetensors`` *is* a ``metaopt.checkpoint`` file, so a directory converts back and forth
losslessly (a file is copied byte for byte) and ``metaopt.load_optimizer(dir, params)`` reads it.
``config.json`` repeats the metadata for tools that read only JSON; on loading the two must
agree, so an edited ``config.json`` cannot silently disagree with the weights.

``from_pretrained(dir_or_repo_id)`` loads a local directory offline; any other ``owner/name``
is downloaded from the Hub with ``huggingface_hub.snapshot_download`` (the optional extra:
``pip install "metaopt[hub]"``), then loaded the same way. Nothing here touches the network
unless given a repo id that is not a local directory.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Union

import torch

from .atomic import atomic_write
from .checked_files import read_json_object, require_regular_file
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    describe_checkpoint,
    load_checkpoint,
    resolve,
    save_checkpoint,
)
from .pretrained import FIXTURES

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "MODEL_FILE",
    "checkpoint_file",
    "download",
    "from_pretrained",
    "is_repo_id",
    "model_card",
    "save_pretrained",
]

CONFIG_FILE, MODEL_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
#: metadata keys mirrored in config.json (JSON-valued ones decoded)
_JSON_KEYS = ("controller_config", "optimizer_config", "training")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
#: a name ending like a file is a missing local file, never a repo id to download
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json", ".yaml", ".yml")
PathLike = Union[str, os.PathLike]  # noqa: UP007 (a runtime alias, as in checkpoint.py)


def _config_from_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    config = {k: v for k, v in metadata.items() if k not in _JSON_KEYS}
    config.setdefault("optimizer_class", "GARO")
    for key in _JSON_KEYS:
        config[key] = json.loads(metadata.get(key, "{}"))
    return dict(sorted(config.items()))


def save_pretrained(source: Any, save_directory: PathLike, *,
                    training: dict[str, Any] | None = None) -> Path:
    """Write ``source`` as a Hub-style directory; return the directory.

    ``source``: a checkpoint file path or shipped name (copied byte for byte: lossless), a
    ``Checkpoint``, or a runtime optimizer with a ``controller`` (``GARO``; ``training`` is then
    its provenance).
    """
    directory = Path(save_directory)
    if isinstance(source, (str, os.PathLike)):
        path = resolve(source)
        load_checkpoint(path)  # refuse anything that is not a valid checkpoint
        payload = path.read_bytes()
        atomic_write(directory / MODEL_FILE, lambda f: f.write(payload))
    elif isinstance(source, Checkpoint):
        save_checkpoint(directory / MODEL_FILE, source.controller, source.optimizer_config,
                        training=training if training is not None else source.training,
                        optimizer_class=source.metadata.get("optimizer_class", "GARO"))
    elif hasattr(source, "controller") and hasattr(source, "config"):  # a GARO optimizer
        save_checkpoint(directory / MODEL_FILE, source.controller, dict(source.config),
                        training=training, optimizer_class="GARO")
    else:
        raise TypeError("save_pretrained: source must be a checkpoint path or name, a Checkpoint "
                        f"or an optimizer with a controller, got {type(source).__name__}")
    ckpt = load_checkpoint(directory / MODEL_FILE)
    config = json.dumps(_config_from_metadata(ckpt.metadata), indent=2).encode() + b"\n"
    atomic_write(directory / CONFIG_FILE, lambda f: f.write(config))
    description = describe_checkpoint(directory / MODEL_FILE)
    if isinstance(source, str) and source in FIXTURES:  # a shipped fixture's card says so
        description = f"{FIXTURES[source]}: {description}"
    card = model_card(ckpt, name=directory.name, description=description).encode()
    atomic_write(directory / CARD_FILE, lambda f: f.write(card))
    return directory


def checkpoint_file(directory: PathLike) -> Path:
    """The checkpoint file of a ``save_pretrained`` directory, after checking ``config.json``
    agrees with the file's metadata (``CheckpointError`` if not)."""
    directory = Path(directory)
    model, config_path = directory / MODEL_FILE, directory / CONFIG_FILE
    if not os.path.lexists(model):
        raise CheckpointError(f"{directory}: not a save_pretrained directory (no {MODEL_FILE})")
    require_regular_file(model, CheckpointError)
    # Whatever sits at config.json is read (a FIFO, directory or device is an error, not
    # skipped): the agreement check below must not be avoidable.
    if os.path.lexists(config_path):
        config = read_json_object(config_path, error=CheckpointError)
        stored = _config_from_metadata(load_checkpoint(model).metadata)
        differ = sorted(k for k in ("controller_class", "controller_config", "optimizer_class",
                                    "optimizer_config", "format", "format_version")
                        if config.get(k) != stored.get(k))
        if differ:
            raise CheckpointError(f"{config_path} disagrees with {MODEL_FILE} on {differ}")
    return model


def is_repo_id(name: PathLike) -> bool:
    """``owner/name`` that is not a local path: it does not exist, does not end like a file,
    and ``owner`` is not a local directory (``runs/garo_typo`` beside a ``runs/`` folder is a
    mistyped path, never sent to the Hub)."""
    text = os.fspath(name)
    return bool(_REPO_ID.match(text)) and not text.lower().endswith(_FILE_SUFFIXES) \
        and not Path(text).exists() and not Path(text.split("/", 1)[0]).is_dir()


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch a Hub repo's checkpoint files (needs ``huggingface_hub`` and a network)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"loading the Hub repo {repo_id!r} needs huggingface_hub: "
                          'pip install "metaopt[hub]" (local directories need nothing)') from None
    try:  # through huggingface_hub's cache: a cached repo loads offline too
        local = snapshot_download(repo_id, revision=revision,
                                  allow_patterns=[CONFIG_FILE, MODEL_FILE, CARD_FILE])
    except FileNotFoundError as error:  # LocalEntryNotFoundError: offline and not cached
        raise FileNotFoundError(_not_cached(repo_id, error)) from None
    except Exception as exc:  # noqa: BLE001 (not found, gated, network: one line naming it)
        first = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{repo_id!r}: no local file or directory of that name, and "
                              f"fetching it as a Hub repo failed ({type(exc).__name__}: "
                              f"{first})") from None
    return checkpoint_file(local)


def _not_cached(repo_id: str, error: Exception) -> str:
    from huggingface_hub import constants
    offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else \
        "the Hub is unreachable (HF_HUB_OFFLINE unset)"
    return (f"Hub repo {repo_id!r} is not in the huggingface_hub cache and {offline}: download "
            f"it once with a network (unset HF_HUB_OFFLINE), or pass a local save_pretrained "
            f"directory ({type(error).__name__})")


def from_pretrained(dir_or_repo_id: PathLike, map_location: str | torch.device = "cpu",
                    revision: str | None = None) -> Checkpoint:
    """A ``Checkpoint`` from a local ``save_pretrained`` directory, or a Hub repo id."""
    path = Path(dir_or_repo_id)
    if path.is_dir():
        return load_checkpoint(checkpoint_file(path), map_location)
    if is_repo_id(dir_or_repo_id):
        return load_checkpoint(download(os.fspath(dir_or_repo_id), revision), map_location)
    raise FileNotFoundError(f"{os.fspath(dir_or_repo_id)!r} is neither a local directory nor a "
                            "Hub repo id (owner/name)")


# ----------------------------------------------------------------------------- model card
def _mixture(training: dict[str, Any]) -> str:
    for key in ("mixture", "task_config", "tasks"):
        if key in training:
            return "```json\n" + json.dumps(training[key], indent=1, sort_keys=True) + "\n```"
    kwargs = training.get("task_kwargs")
    if "task" in training and isinstance(kwargs, dict):
        components = kwargs.get("components") if training["task"] == "mixture" else None
        if isinstance(components, dict):  # one row per family of the mixture
            rows = [f"| `{name}` | `{json.dumps(args or {}, sort_keys=True)}` |"
                    for name, args in sorted(components.items())]
            weights = f"\n\nWeights: `{json.dumps(kwargs['weights'])}`" \
                if kwargs.get("weights") else ""
            return "\n".join(["| family | keyword arguments |", "|---|---|", *rows]) + weights
        return f"Task family `{training['task']}`: `{json.dumps(kwargs, sort_keys=True)}`"
    if "task" in training:
        return f"Task family `{training['task']}` (see the training config for its keyword " \
               "arguments)."
    return "Not recorded in the checkpoint's provenance."


def _compute(training: dict[str, Any], metadata: dict[str, str]) -> list[str]:
    rows = [("meta-training steps", training.get("steps")),
            ("estimator", training.get("estimator")), ("meta-loss", training.get("meta_loss")),
            ("seed", training.get("seed")),
            ("wall-clock seconds", training.get("seconds", training.get("train_seconds"))),
            ("hardware", training.get("hardware", training.get("compute"))),
            ("metaopt version", metadata.get("metaopt_version")),
            ("source commit", metadata.get("git_commit") or None),
            ("written", metadata.get("created_at"))]
    return [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]


def _measured(training: dict[str, Any]) -> list[str]:
    lines = []
    held = training.get("held_out_meta_loss")
    if isinstance(held, dict) and held:
        lines += ["| held-out meta-loss | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
                  for k, v in held.items()]
    table = training.get("benchmark") or training.get("table")
    if isinstance(table, list) and table and isinstance(table[0], dict):
        columns = list(table[0])
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in table]
    return lines or ["No measurements recorded in the checkpoint's provenance."]


def model_card(ckpt: Checkpoint, name: str = "metaopt-optimizer", description: str = "") -> str:
    """The README.md of a Hub-style directory, from the checkpoint's metadata and provenance
    (``description``: the one line of ``metaopt.checkpoint.describe_checkpoint``)."""
    meta, training = ckpt.metadata, ckpt.training
    optimizer_class = meta.get("optimizer_class", "GARO")
    controller = json.loads(meta.get("controller_config", "{}"))
    lines = ["---", "library_name: metaopt", "license: mit",
             "tags: [pytorch, learned-optimizer, metaopt, model_hub_mixin]", "---", "",
             f"# {name}", "", description, "",
             f"A learned `{optimizer_class}` optimizer for PyTorch "
             f"(controller `{meta.get('controller_class')}`: "
             + ", ".join(f"{k}={v}" for k, v in sorted(controller.items())) + ").", "",
             "## Training mixture", "", _mixture(training), "",
             "## Compute", "", "| | |", "|---|---|", *_compute(training, meta), "",
             "## Measured", "", *_measured(training), "",
             "## Usage", "", "```python", "import metaopt",
             f'opt = metaopt.load_optimizer("{name}", model.parameters())  # this directory',
             "# or metaopt.hub.from_pretrained(\"owner/repo\") with metaopt[hub] installed",
             "```", ""]
    return "\n".join(lines)
