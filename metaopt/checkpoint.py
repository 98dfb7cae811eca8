"""Self-describing controller checkpoints (weights plus the config to rebuild them) and
``load_optimizer``.

A checkpoint is one safetensors file. Its tensors are the controller's ``state_dict()`` (GRU and
head weights, and the feature-statistics buffers ``init_feature_mean`` / ``init_feature_var``);
its string metadata says everything needed to rebuild the runtime optimizer from the file alone:

=====================  =====================================================================
``format``             ``"metaopt.garo"``
``format_version``     ``"1"`` (files of any other version are refused)
``metaopt_version``    the package version that wrote it
``controller_class``   ``"GAROController"``, ``"SwitchingPolicy"`` or ``"HybridControllers"``
                       (``CONTROLLER_CLASSES``; the last: a hybrid's policy and its GARO GD
                       module, both trained)
``optimizer_class``    ``"GARO"`` (the default when absent) or ``"HybridGDODE"``
``controller_config``  JSON: ``GAROController`` constructor arguments
``optimizer_config``   JSON: ``GARO`` options (direction, granularity, beta2, eps)
``created_at``         ISO-8601 UTC time of writing
``git_commit``         the metaopt source commit, when it is a git checkout (else "")
``training``           JSON: whatever provenance the caller passes (steps, tasks, meta-loss…)
=====================  =====================================================================

Loading never executes code: safetensors holds raw tensors and JSON, and this module refuses
pickles and ``torch.save`` archives outright instead of handing them to ``pickle``.
Writes are atomic: a temporary file in the target directory, fsync'ed, then ``os.replace``.
Which file a name means (shipped name, local path, Hub repo id), the shipped list and the
one-line descriptions are ``metaopt.checkpoint_names``, importable from here as well.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_bytes

from .atomic import atomic_write
from .checkpoint_names import (  # noqa: F401  (all but resolve: public names kept here)
    SUFFIX,
    _pretrained_dir,
    describe_checkpoint,
    list_pretrained,
    looks_like_path,
    resolve,
)
from .garo.controller import GAROController
from .hub_mixin import PretrainedCheckpointMixin
from .hybrid.garo_module import HybridControllers
from .hybrid.policy import SwitchingPolicy

FORMAT = "metaopt.garo"
FORMAT_VERSION = 1
#: the ``GARO`` constructor options a checkpoint may store
OPTIMIZER_CONFIG_KEYS = frozenset({"lr", "weight_decay_scale", "weight_decay", "direction",
                                   "granularity", "beta2", "eps", "scale"})
#: GARO options stored under an older name -> the current one (read, never written)
RENAMED_GARO_OPTIONS = {"weight_decay": "weight_decay_scale"}
#: ``controller_class`` metadata -> module class (files without ``optimizer_class`` are GARO's)
CONTROLLER_CLASSES = {"GAROController": GAROController, "SwitchingPolicy": SwitchingPolicy,
                      "HybridControllers": HybridControllers}
#: ``optimizer_class`` metadata -> the controller class it takes
OPTIMIZER_CLASSES = {"GARO": "GAROController", "HybridGDODE": "SwitchingPolicy"}
#: ... and every controller class it accepts (a hybrid with a GARO GD module carries both)
OPTIMIZER_CONTROLLERS = {"GARO": ("GAROController",),
                         "HybridGDODE": ("SwitchingPolicy", "HybridControllers")}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
#: the largest stored base ``lr`` accepted: the runtime step is lr·lr_t/lr₀, which overflows long
#: before lr = 1e308, and no optimizer's base rate is anywhere near 1e6
MAX_LR = 1e6

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A file that is not a loadable metaopt checkpoint (the message says why)."""


@dataclass
class Checkpoint(PretrainedCheckpointMixin):
    controller: torch.nn.Module  # a CONTROLLER_CLASSES instance
    optimizer_config: dict[str, Any]
    metadata: dict[str, str]
    training: dict[str, Any] = field(default_factory=dict)


def _metaopt_version() -> str:
    from . import __version__
    return __version__


def _git_commit() -> str:
    """The commit of the metaopt source tree, or "" when it is not a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def save_checkpoint(path: PathLike, controller: torch.nn.Module,
                    optimizer_config: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None,
                    optimizer_class: str = "GARO") -> Path:
    """Write ``controller`` (+ optimizer options and provenance) to ``path`` atomically.

    ``optimizer_config`` is typically ``GARO(...).config``; ``training`` is free JSON provenance.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in controller.state_dict().items()}
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # load_checkpoint would refuse the file: never write it
        raise CheckpointError(f"{path}: refusing to write a checkpoint with non-finite values in "
                              f"{bad}")
    if type(controller).__name__ not in OPTIMIZER_CONTROLLERS.get(optimizer_class, ()):
        raise CheckpointError(f"{path}: optimizer_class {optimizer_class!r} does not take a "
                              f"{type(controller).__name__} (known: {OPTIMIZER_CONTROLLERS})")
    if optimizer_class == "GARO":
        _check_optimizer_options(optimizer_config or {}, path)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "metaopt_version": _metaopt_version(),
        "controller_class": type(controller).__name__,
        "optimizer_class": optimizer_class,
        "controller_config": json.dumps(controller.config, sort_keys=True),
        "optimizer_config": json.dumps(optimizer_config or {}, sort_keys=True),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "training": json.dumps(training or {}, sort_keys=True),
    }
    payload = _safetensors_bytes(tensors, metadata=metadata)
    return atomic_write(path, lambda f: f.write(payload))


def _check_safetensors_framing(path: Path) -> None:
    """Refuse pickles, torch.save zips, truncated and garbage files before parsing anything."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
    if len(head) < 9 or head[8:9] != b"{" or header_len > _MAX_HEADER:
        # (a safetensors file is <u64 header length><JSON header>; byte 8 is always "{")
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(
                f"{path}: looks like a pickle / torch.save file; metaopt never unpickles "
                "checkpoints (unpickling can execute arbitrary code). Export controllers with "
                "metaopt.checkpoint.save_checkpoint (safetensors).")
        if size < 10:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file "
                                  "(truncated or not a checkpoint)")
        raise CheckpointError(f"{path}: not a safetensors file (bad header)")
    if 8 + header_len > size:
        raise CheckpointError(f"{path}: truncated (header says {header_len} bytes, the file has "
                              f"{size - 8})")


def _json_field(metadata: dict[str, str], key: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(metadata.get(key, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata {key!r} must be a JSON object")
    return value


def _check_optimizer_options(options: dict[str, Any], path: Path) -> None:
    """Stored GARO options must be values GARO can step with (finite; lr bounded by ``MAX_LR``)."""
    bounds = {"lr": (0.0, MAX_LR, False), "weight_decay": (0.0, math.inf, False),
              "weight_decay_scale": (0.0, math.inf, False),
              "eps": (0.0, math.inf, True), "beta2": (0.0, 1.0, None)}
    for key, (low, high, low_open) in bounds.items():
        if key not in options:
            continue
        value = options[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and (value > low if low_open else value >= low) \
            and (value < high if low_open is None else value <= high)
        if not ok:
            raise CheckpointError(f"{path}: optimizer_config {key!r} = {value!r} is out of range "
                                  f"(finite, {'>' if low_open else '>='} {low:g}, "
                                  f"{'<' if low_open is None else '<='} {high:g})")


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; refuse anything else with a clear error."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    from .checked_files import require_regular_file
    require_regular_file(path, CheckpointError)  # a FIFO would block, a device never ends
    _check_safetensors_framing(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metaopt GARO checkpoint "
                              f"(format {metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: unknown format_version {metadata.get('format_version')!r}; this metaopt "
            f"({_metaopt_version()}) reads version {FORMAT_VERSION}")
    optimizer_class = metadata.get("optimizer_class", "GARO")  # files before the registry: GARO
    if optimizer_class not in OPTIMIZER_CLASSES:
        raise CheckpointError(f"{path}: unknown optimizer_class {optimizer_class!r} "
                              f"(known: {sorted(OPTIMIZER_CLASSES)})")
    if metadata.get("controller_class") not in OPTIMIZER_CONTROLLERS[optimizer_class]:
        raise CheckpointError(f"{path}: unknown controller_class "
                              f"{metadata.get('controller_class')!r} for {optimizer_class}")
    controller_cls = CONTROLLER_CLASSES[metadata["controller_class"]]
    config = _json_field(metadata, "controller_config", path)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {bad}")
    negative = [k for k, t in tensors.items() if k.endswith("_var") and bool((t < 0).any())]
    if negative:  # variances normalise the controller's features by their square root
        raise CheckpointError(f"{path}: negative variances in {negative}")
    try:
        # Shapes are checked on a meta-device twin first: a tiny file whose config asks for a
        # huge network is refused before anything the size of that network is allocated.
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in controller_cls(**config).state_dict().items()}
        stored = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != stored:
            mismatched = sorted(k for k in expected.keys() | stored.keys()
                                if expected.get(k) != stored.get(k))
            raise ValueError(f"tensor shapes differ from the config's for {mismatched}")
        controller = controller_cls(**config)
        controller.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: controller does not match its config ({exc})") from None
    optimizer_config = _json_field(metadata, "optimizer_config", path)
    if optimizer_class != "GARO":  # HybridGDODE validates its own options when rebuilt
        return Checkpoint(controller=controller.to(map_location),
                          optimizer_config=optimizer_config, metadata=metadata,
                          training=_json_field(metadata, "training", path))
    unknown = sorted(set(optimizer_config) - OPTIMIZER_CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown optimizer_config keys {unknown}; expected a "
                              f"subset of {sorted(OPTIMIZER_CONFIG_KEYS)}")
    _check_optimizer_options(optimizer_config, path)
    return Checkpoint(controller=controller.to(map_location), optimizer_config=optimizer_config,
                      metadata=metadata, training=_json_field(metadata, "training", path))


def load_optimizer(name_or_path: PathLike, params, **overrides):
    """Rebuild the runtime optimizer (``GARO``, or ``HybridGDODE`` when the metadata's
    ``optimizer_class`` says so) from a checkpoint file or shipped name.

    ``overrides`` replace the stored optimizer options or add group defaults (``lr``,
    ``weight_decay_scale``, ``direction``, ``granularity``, …). A GARO file that stored the
    multiplier under its old name ``weight_decay`` loads as ``weight_decay_scale``.
    """
    from .garo.optimizer import GARO
    from .hybrid.garo_optimizer import unpack_controllers
    from .hybrid.optimizer import HybridGDODE
    path = resolve(name_or_path)
    ckpt = load_checkpoint(path)
    name = ckpt.metadata.get("optimizer_class", "GARO")
    stored = dict(ckpt.optimizer_config)
    if name == "GARO":  # files written before the multiplier said what it was
        stored = {RENAMED_GARO_OPTIONS.get(k, k): v for k, v in stored.items()}
    options = {**stored, **overrides}
    try:
        if name == "HybridGDODE":  # the learned switching policy (and GARO) inside a hybrid
            # (an override wins here too: policy="gd" pins the switch, keeping the trained GARO)
            return HybridGDODE(params, **{**unpack_controllers(ckpt.controller), **options})
        return GARO(params, controller=ckpt.controller, **options)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {name} with options {options} "
                              f"(stored optimizer_config plus overrides): {exc}") from None
