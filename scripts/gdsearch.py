"""One command per GDSearch study (the analysis studies of ``scripts/studies``).

    python scripts/gdsearch.py STUDY [--config configs/gdsearch/STUDY.yaml] [key=value ...]
        --out DIR
    python scripts/gdsearch.py --list

A study is a module of ``scripts/studies`` (``NAME``, ``DESCRIPTION``, dataclass ``Config``,
``run(cfg, out_dir, logger) -> dict``). Its typed config is built as an OmegaConf structured config:
dataclass defaults <- YAML <- ``key=value`` overrides, each layer merged on its own so that an
unknown key, a value of the wrong type, a non-finite number or a value the study's
``Config.__post_init__`` refuses stops the command with one line naming the key, before any work.
The run writes ``config.yaml``, CSV + PNG + ``report.md`` (by the study) and ``metrics.jsonl`` into
``--out``, plus a W&B run (offline by default; ``--wandb disabled|offline|online``).
The ``metaopt analyze ...`` console command calls :func:`main` with its arguments.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metaopt.logging import WANDB_MODES, make_logger
from scripts.studies import discover

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIG_DIR = REPO_ROOT / "configs" / "gdsearch"


class ConfigError(ValueError):
    """A configuration problem found before any work (the message names the key)."""


def _non_finite(node: Any, prefix: str = "") -> str | None:
    """The dotted key of the first non-finite float in a nested config, or None."""
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, Sequence) and not isinstance(node, str):
        items = ((f"[{i}]", v) for i, v in enumerate(node))
    else:
        return prefix if isinstance(node, float) and not math.isfinite(node) else None
    for key, value in items:
        key = str(key)
        path = f"{prefix}{key}" if key.startswith("[") or not prefix else f"{prefix}.{key}"
        found = _non_finite(value, path)
        if found is not None:
            return found
    return None


def load_config(config_cls: type, config_path: str | os.PathLike | None,
                overrides: Sequence[str]) -> Any:
    """``config_cls`` defaults <- YAML <- overrides, validated whole; returns a ``config_cls``
    instance (its ``__post_init__`` has run). Raises ``ConfigError`` naming the offending key."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    merged = OmegaConf.structured(config_cls)
    layers: list[tuple[Any, str | None]] = [] if config_path is None else [(config_path, None)]
    layers += [(None, o) for o in overrides]
    for path, override in layers:
        try:
            layer = OmegaConf.load(path) if path is not None else OmegaConf.from_dotlist([override])
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or (override or "").split("=")[0]
            source = f"override {override!r}" if override else f"config {str(path)!r}"
            message = str(error).splitlines()[0]
            raise ConfigError(f"invalid config key {key!r} ({source}): {message}") from error
        except OSError as error:
            raise ConfigError(f"cannot read config {str(path)!r}: {error}") from error
    key = _non_finite(OmegaConf.to_container(merged))
    if key is not None:
        raise ConfigError(f"invalid config key {key!r}: must be finite, "
                          f"got {OmegaConf.select(merged, key)!r}")
    try:
        return OmegaConf.to_object(merged)  # runs the dataclass __post_init__ checks
    except (OmegaConfBaseException, ValueError, TypeError) as error:
        cause = error.__cause__ if isinstance(error, OmegaConfBaseException) and error.__cause__ \
            else error
        raise ConfigError(f"invalid config: {str(cause).splitlines()[0]}") from error


def list_studies() -> str:
    studies = discover()
    width = max((len(n) for n in studies), default=0)
    return "\n".join(f"{name:<{width}}  {module.DESCRIPTION}" for name, module in studies.items())


def run_study(name: str, out_dir: str | os.PathLike, *,
              config_path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
              wandb_mode: str = "offline", num_threads: int = 1) -> dict[str, Any]:
    """Validate the config of study ``name``, then run it into ``out_dir``; returns its results."""
    studies = discover()
    if name not in studies:
        raise ConfigError(f"unknown study {name!r}; known studies: {', '.join(studies)}")
    if wandb_mode not in WANDB_MODES:
        raise ConfigError(f"--wandb must be one of {WANDB_MODES}, got {wandb_mode!r}")
    study = studies[name]
    if config_path is None and (CONFIG_DIR / f"{name}.yaml").exists():
        config_path = CONFIG_DIR / f"{name}.yaml"
    cfg = load_config(study.Config, config_path, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), out / "config.yaml")
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    config_dict = {"study": name, **dataclasses.asdict(cfg)}
    logger = make_logger(out, wandb_mode=wandb_mode, project="metaopt-gdsearch", name=name,
                         tags=("gdsearch", name), config=config_dict)
    start = time.perf_counter()
    try:
        results = study.run(cfg, out, logger)
    finally:
        logger.close()
    results = dict(results)
    results.setdefault("seconds", time.perf_counter() - start)
    return results


def _prog() -> str:
    """``metaopt analyze`` when run by the ``metaopt`` command (it sets ``sys.argv[0]``)."""
    return sys.argv[0] if sys.argv and sys.argv[0].startswith("metaopt ") else "gdsearch"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=_prog(), description="Run one GDSearch analysis study (CSV + PNG + report.md).")
    parser.add_argument("study", nargs="?", help="study name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--config", default=None,
                        help="YAML config (default: configs/gdsearch/STUDY.yaml when present)")
    parser.add_argument("--out", default=None, help="output directory (required to run)")
    parser.add_argument("--wandb", default=os.environ.get("WANDB_MODE", "offline"),
                        choices=WANDB_MODES, help="W&B mode (default: offline)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (0 leaves torch's default)")
    args = parser.parse_intermixed_args(argv)
    if args.list:
        print(list_studies())
        return 0
    if args.study is None or args.out is None:
        parser.error("give a STUDY and --out DIR (or --list)")
    try:
        results = run_study(args.study, args.out, config_path=args.config,
                            overrides=args.overrides, wandb_mode=args.wandb,
                            num_threads=args.threads)
    except ConfigError as error:
        print(f"gdsearch: {error}", file=sys.stderr)
        return 2
    for key, value in results.items():
        if isinstance(value, (int, float, str)):
            print(f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
