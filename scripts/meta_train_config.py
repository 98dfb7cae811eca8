"""Typed configuration of ``scripts/meta_train.py`` (OmegaConf structured config).

YAML <- ``key=value`` overrides are merged into the dataclasses of ``scripts.meta_train_schema``;
an unknown key or a value of the wrong type raises ``ConfigError`` naming the key, before any
work. Values with a fixed set of
choices are checked by ``check`` with the same guarantee. Config stops here: the script turns it
into plain constructor arguments.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scripts.config_checks import check_values, one_line, schema_int_keys
from scripts.meta_train_schema import MetaTrainConfig

# Keys that may change between a run and its resumption (everything else must match).
RESUMABLE_CHANGES = ("unroll.engine", "unroll.compile",  # same numbers, same state format
                     "steps", "checkpoint_every", "num_threads", "progress", "validation",
                     "evaluation", "wandb", "out_dir")

CHOICES = {
    "controller.kind": ("garo", "hybrid", "hybrid_garo"),
    "hybrid.gd": ("sgd", "adam", "rmsprop"),
    "hybrid.ode": ("bosh3", "dopri5", "euler", "heun", "heun2", "heun3", "midpoint", "ralston",
                   "rk4", "rk4_38", "gradient_flow", "nesterov_flow"),
    "hybrid.gate": ("auto", "relaxed", "straight_through", "hard"),
    "controller.direction": ("sgd", "adam"),
    "controller.features": ("seed", "relative"),
    "controller.scale": ("none", "distance", "prodigy"),
    "unroll.schedule": ("constant", "log_uniform"),
    "unroll.engine": ("loop", "vectorised"),
    "meta_loss.kind": ("mean", "final", "log"),
    "meta_loss.split": ("train", "test"),
    "validation.kind": ("mean", "final", "log"),
    "validation.split": ("train", "test"),
    "estimator.name": ("bptt", "es", "pes"),
    "wandb.mode": ("disabled", "offline", "online"),
    "dtype": ("float32", "float64"),
}
POSITIVE = ("controller.init_lr", "meta_loss.log_eps", "meta_loss.divergence_threshold",
            "steps", "checkpoint_every", "unroll.num_tasks", "unroll.truncation_length",
            "unroll.horizon", "unroll.min_horizon", "unroll.max_horizon", "validation.every",
            "validation.num_tasks", "validation.horizon", "estimator.num_pairs", "outer.lr",
            "outer.clip_norm", "estimator.sigma", "evaluation.steps", "evaluation.num_tasks",
            "evaluation.tuning_steps", "hybrid.lr", "hybrid.ode_lr", "hybrid.min_dwell",
            "hybrid.window", "hybrid.policy_hidden")


# Closed/open bounds a type cannot express: (low, high, low_open, high_open). Every float of
# the config must also be finite and every schema int >= 0 (config_checks.check_values).
RANGES = {
    "seed": (0, 2**63 - 1, False, False),  # torch.Generator.manual_seed's range
    "controller.hidden_size": (1, 1024, False, False),  # a GRU of 1024 units is already huge
    "controller.init_momentum": (0.0, 1.0, False, True),
    "controller.init_weight_decay": (0.0, math.inf, False, True),
    "evaluation.target": (0.0, 1.0, True, True),  # a fraction of the initial optimality gap
    "hybrid.momentum": (0.0, 1.0, False, True),
    "hybrid.init_ode_probability": (0.0, 1.0, True, True),
    "hybrid.weight_decay": (0.0, math.inf, False, True),
    "hybrid.ode_cfl": (0.0, math.inf, False, True),
    "hybrid.ode_scale": (0.0, math.inf, True, True),
    "hybrid.compute_cost": (0.0, math.inf, False, True),
}
POSITIVE_LISTS = ("evaluation.tuning_lrs",)  # the lr grid of tuned baselines


class ConfigError(ValueError):
    """A configuration problem found before any work was done (one line; names the key)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def load_config(config_path: str | None, overrides: list[str]) -> MetaTrainConfig:
    """Schema <- YAML <- overrides, each merged on its own so an error names its key."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    merged = OmegaConf.structured(MetaTrainConfig)
    layers = [] if config_path is None else [(config_path, None)]
    for path, override in layers:
        try:
            layer = OmegaConf.load(path) if path is not None else OmegaConf.from_dotlist([override])
            if isinstance(layer, ListConfig):
                raise ConfigError(f"config {path!r}: the top level must be a mapping of keys, "
                                  "got a list")
            merged = OmegaConf.merge(merged, layer)
        except ConfigError:
            raise
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or (override or "").split("=")[0]
            source = f"override {override!r}" if override else f"config {path!r}"
            raise ConfigError(f"invalid config key {key!r} ({source}): {error}") from error
        except OSError as error:
            raise ConfigError(f"cannot read config {path!r}: {error}") from error
        except yaml.YAMLError as error:  # duplicate keys, !!python tags, syntax errors
            raise ConfigError(f"config {path!r} is not valid YAML: {error}") from error
        except (TypeError, ValueError) as error:  # e.g. a top-level list
            raise ConfigError(f"config {path!r}: {error}") from error
    # Overrides: config groups (task=mlp replaces the section), stale task.kwargs cleared on a
    # family change, key={}/null clears a free-form dict; see scripts/config_groups.py.
    from scripts.config_groups import apply_overrides
    merged = apply_overrides(merged, overrides, MetaTrainConfig, ConfigError)
    named = any(o.split("=", 1)[0].strip() == "out_dir" for o in overrides)
    if not merged.out_dir and not named:  # (an explicit out_dir="" is refused by check)
        merged.out_dir = default_out_dir(config_path, overrides)
    check(merged)
    return merged


def default_out_dir(config_path: str | None, overrides: list[str]) -> str:
    """``runs/<config stem>``, suffixed by the overrides that change what is trained (Hydra's
    ``override_dirname`` convention): ``--config configs/garo.yaml task=mlp steps=100`` ->
    ``runs/garo-task=mlp``; ``steps``, ``wandb.*`` and the other keys a resumed run may change
    leave the name alone, so re-running with a larger ``steps`` resumes."""
    stem = Path(config_path).stem if config_path else "meta_train"
    changed = [o.strip() for o in overrides
               if not any(o.split("=", 1)[0].strip() == key
                          or o.split("=", 1)[0].strip().startswith(key + ".")
                          for key in RESUMABLE_CHANGES)]
    suffix = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(changed))
    if len(suffix) > 80:  # a long override list: a stable short name instead
        suffix = suffix[:60] + "-" + hashlib.sha1(suffix.encode()).hexdigest()[:10]
    return str(Path("runs") / (f"{stem}-{suffix}" if suffix else stem))


def check(cfg: MetaTrainConfig) -> None:
    """Choices and positivity, named by key."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"invalid config key {key!r}: must be one of {list(choices)}, "
                              f"got {value!r}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if not value > 0:
            raise ConfigError(f"invalid config key {key!r}: must be > 0, got {value!r}")
    if cfg.unroll.min_horizon > cfg.unroll.max_horizon:
        raise ConfigError("invalid config key 'unroll.min_horizon': exceeds unroll.max_horizon")
    check_values(cfg, ConfigError, schema_ints=schema_int_keys(MetaTrainConfig),
                 positive=POSITIVE, ranges=RANGES, positive_lists=POSITIVE_LISTS)
    check_device(cfg.device)
    check_out_dir(cfg.out_dir)
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise ConfigError(f"invalid config key 'out_dir': {cfg.out_dir!r} exists and is not a "
                          "directory")


def check_out_dir(out_dir: str) -> None:
    """A run directory of its own: not empty (that is the current directory) and not the
    filesystem root (the run writes, locks and cleans up temp files in it)."""
    if not str(out_dir).strip():
        raise ConfigError("invalid config key 'out_dir': empty; name a run directory of its own "
                          "(e.g. out_dir=runs/garo)")
    resolved = Path(os.path.expanduser(out_dir)).resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(f"invalid config key 'out_dir': {out_dir!r} is the filesystem root; "
                          "name a run directory of its own (e.g. out_dir=runs/garo)")


def check_device(device: str) -> None:
    """A device string torch parses and this machine has."""
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ConfigError(f"invalid config key 'device': {device!r} is not a torch device "
                          f"({error})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid config key 'device': {device!r} but CUDA is not available")
    if parsed.type == "cuda" and parsed.index is not None \
            and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"invalid config key 'device': {device!r} but this machine has "
                          f"{torch.cuda.device_count()} CUDA devices")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"invalid config key 'device': {device!r} but MPS is not available")


def training_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring ``RESUMABLE_CHANGES``."""
    def flatten(d, prefix=""):
        out = {}
        for k, v in d.items():
            if (prefix + k) in RESUMABLE_CHANGES:
                continue
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out
    a, b = flatten(saved), flatten(current)
    # A key added to the schema after the run was saved, left at its default, changes nothing
    # the run did: such a run resumes (its config.yaml simply predates the key).
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(MetaTrainConfig)))
    # The hybrid section configures the switching policy only: a GARO run never read it.
    garo_only = a.get("controller.kind", "garo") == b.get("controller.kind", "garo") == "garo"
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                  and not (k not in a and k in defaults and b.get(k) == defaults[k])
                  and not (garo_only and k.startswith("hybrid.")))
