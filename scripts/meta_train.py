"""Meta-train a GARO controller over a task distribution; resumable, logged to JSONL and W&B.

    python scripts/meta_train.py --config configs/garo.yaml [key=value ...]

Writes ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``state.pt`` (resumable training state,
``torch.load(weights_only=True)``, written atomically) and ``optimizer.safetensors`` (the trained
controller: ``metaopt.load_optimizer(path, model.parameters())``), plus the W&B run (offline by
default). Re-running the same command resumes from ``state.pt``; a larger ``steps`` trains further.
At the end it prints the held-out meta-loss of the untrained and the trained controller and an
evaluation table (harness) of the learned optimizer vs the untrained one vs tuned baselines.
The typed config is ``scripts/meta_train_schema.py`` (loaded and checked by
``scripts/meta_train_config.py``); what it builds is
``scripts/meta_train_build.py`` and the run itself ``scripts/meta_train_run.py``.

Reliability (``scripts/run_dir.py``): the whole config is validated first (every float finite,
ranges, choices; ``--check`` stops there and also validates a resume, writing nothing). A resume
is checked (saved config, ``state.pt`` version/keys/finite weights, loadable) before anything in
``out_dir`` is touched; ``out_dir`` is locked against a second process. SIGINT/SIGTERM finish the
running meta-step, save ``state.pt`` and exit 128+signal; a run whose meta-updates were all
skipped exits 3 without writing ``optimizer.safetensors``; bad input exits 2; every error is one
line naming its key or file. ``--config`` is required (no silent default run); ``out_dir`` may be
neither empty (the current directory) nor the filesystem root.

Under torchrun (``torchrun --standalone --nproc_per_node 2 scripts/meta_train.py --config ...``)
each process unrolls its share of the ``unroll.num_tasks`` runs and the meta-gradients are
combined into the 1-process one of the same runs; rank 0 alone writes ``state.pt`` (every rank's
part in one file), the logs, W&B and the export. A resume is checked on every rank, and unless
every rank can resume the same ``state.pt`` all of them refuse before anything trains or is
written (``scripts/distributed_run.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from metaopt.meta import leave_process_group
from metaopt.meta.training_state import TrainingStateError
from scripts import distributed_run, run_dir
from scripts.meta_train_build import build
from scripts.meta_train_config import ConfigError, MetaTrainConfig, load_config
from scripts.meta_train_resume import read_run_dir
from scripts.meta_train_run import TrainingFailed, train

REPO_ROOT = Path(__file__).resolve().parents[1]


def init_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group: gloo on CPU, nccl on CUDA,
    one GPU per process. Returns ``(rank, world_size, device)``."""
    return distributed_run.init_distributed(device, ConfigError)[:3]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    wants_help = {"-h", "--help"} & set(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],  # (epilog: ~0.2 s)
                                     epilog=_help_epilog(argv) if wants_help else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,  # no silent 200-step default run
                        help="YAML file typed by MetaTrainConfig (e.g. configs/garo.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config (and a resumed run's files) and exit; "
                             "writes nothing")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE", help="a module name or .py file to import first: "
                        "registers your task families (repeatable; metaopt.user_modules)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
    args = parser.parse_args(argv)
    _import_user_modules(args.imports)
    cfg = load_config(args.config, args.overrides)
    if args.check:
        return _check(cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    rank, world, device, created = distributed_run.init_distributed(cfg.device, ConfigError)
    try:
        return train(cfg, rank, world, device)
    finally:
        run_dir.release_all()
        if created:
            leave_process_group()


def _check(cfg: MetaTrainConfig) -> dict[str, Any]:
    """``--check``: the config, and a resume's files with every rank's part loaded into a trainer
    built for that rank; writes nothing."""
    _, _, trainer = build(cfg, cfg.device)
    state = read_run_dir(cfg, Path(cfg.out_dir), world=None)
    world = int(state.get("world_size", 1)) if state else 1
    for rank in range(world):
        if world > 1:
            _, _, trainer = build(cfg, cfg.device, shard=(rank, world))
        read_run_dir(cfg, Path(cfg.out_dir), rank, world, trainer)
    processes = f" with {world} processes" if world > 1 else ""
    print(f"config OK ({'resumes step ' + str(state['step']) + processes if state else 'new run'})")
    return {"config": cfg, "state": state}


def _import_user_modules(imports: list[str]) -> None:
    from metaopt.user_modules import UserModuleError, import_user_modules
    try:
        import_user_modules(imports)
    except UserModuleError as error:
        raise ConfigError(str(error)) from None


def _help_epilog(argv: list[str] | None) -> str:
    """Every key with its type and value: the ``--config`` file's (and overrides') values when
    one is given and loads, else the schema defaults."""
    from scripts.config_groups import describe_keys
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config")
    probe.add_argument("overrides", nargs="*")
    probe.add_argument("--import", dest="imports", action="append", default=[])
    known, _ = probe.parse_known_args([a for a in (sys.argv[1:] if argv is None else argv)
                                       if a not in ("-h", "--help")])
    if known.config:
        try:
            _import_user_modules(known.imports)
            cfg = load_config(known.config, known.overrides)
            return describe_keys(MetaTrainConfig, values=cfg, source=known.config)
        except ConfigError as error:
            return f"({known.config}: {error})\n" + describe_keys(MetaTrainConfig)
    return describe_keys(MetaTrainConfig)


def cli(argv: list[str] | None = None) -> int:
    """``main`` with one-line errors and exit codes: 2 bad config / run directory / state file,
    3 training produced nothing to export, 128 + signal number when interrupted (checkpoint
    saved)."""
    try:
        main(argv)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except (run_dir.RunDirError, TrainingStateError) as error:
        print(f"run directory error: {error}", file=sys.stderr)
        return 2
    except TrainingFailed as error:
        print(f"training failed: {error}", file=sys.stderr)
        return 3
    except run_dir.Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return 128 + error.signum
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
