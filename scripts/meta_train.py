"""Meta-train a GARO controller over a task distribution; resumable, logged to JSONL and W&B.

    python scripts/meta_train.py --config configs/garo.yaml [key=value ...]

Writes ``out_dir``: ``config.yaml``, ``metrics.jsonl``, ``state.pt`` (resumable training state,
``torch.load(weights_only=True)``, written atomically) and ``optimizer.safetensors`` (the trained
controller: ``metaopt.load_optimizer(path, model.parameters())``), plus the W&B run (offline by
default). Re-running the same command resumes from ``state.pt``; a larger ``steps`` trains further.
At the end it prints the held-out meta-loss of the untrained and the trained controller and an
evaluation table (harness) of the learned optimizer vs the untrained one vs tuned baselines.
The typed config is ``scripts/meta_train_config.py``.

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
import copy
import functools
import hashlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

import tasks
from metaopt.checkpoint import SUFFIX, save_checkpoint
from metaopt.evaluation import (
    SUMMARY_COLUMNS,
    format_table,
    make_optimizer,
)
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.logging import Logger, make_logger
from metaopt.meta import (
    GAROLearnedRule,
    InnerRunPool,
    MetaLoss,
    MetaTrainer,
    distributed_world,
    leave_process_group,
    make_estimator,
    make_horizon,
)
from metaopt.meta.training_state import TrainingStateError
from metaopt.meta.vectorised import VectorisedPool
from metaopt.meta.warm_start import load_controller_weights, provenance
from scripts import distributed_run, hybrid_train, run_dir
from scripts.meta_train_config import ConfigError, MetaTrainConfig, load_config
from scripts.meta_train_eval import EVAL_COLUMNS, evaluation_table, run_validation
from scripts.meta_train_resume import STATE_FILE, prepare_run_dir, read_run_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

EXPORT_FILE = "optimizer.safetensors"


def init_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group: gloo on CPU, nccl on CUDA,
    one GPU per process. Returns ``(rank, world_size, device)``."""
    return distributed_run.init_distributed(device, ConfigError)[:3]


def _key_error(section: str, error: Exception, names) -> ConfigError:
    """A library error as a ConfigError naming ``section.<argument>`` when its message starts
    with one of ``names`` (library ValueErrors read "argument: why"), else ``section``."""
    head = str(error).split(":", 1)[0].strip()
    key = f"{section}.{head}" if head in list(names) else section
    return ConfigError(f"invalid config key {key!r}: {error}")


def build(cfg: MetaTrainConfig, device: str | None = None,
          shard: tuple[int, int] | None = None):
    """Validation family, learned rule and trainer from the config (plain arguments below).

    The training family lives in the trainer's pool; the returned family is the one validation
    and the final table use (``validation.task``, else the training family's held-out seeds).
    ``shard=(rank, world)``: the pool holds that rank's share of the meta-batch (default: this
    process's place in ``torch.distributed``, the whole meta-batch outside it).
    """
    kwargs = OmegaConf.to_container(cfg.task.kwargs, resolve=True)
    device = device or cfg.device
    try:
        family = tasks.get(cfg.task.name, device=device, dtype=cfg.dtype, **kwargs)
    except (TypeError, ValueError) as error:  # TypeError: an unknown keyword
        section = "task.name" if cfg.task.name not in tasks.names() else "task.kwargs"
        raise _key_error(section, error, kwargs) from error
    held_out = family
    if cfg.validation.task:  # families never seen in training (held-out validation)
        try:
            held_out = tasks.get(cfg.validation.task, device=device, dtype=cfg.dtype,
                                 **OmegaConf.to_container(cfg.validation.task_kwargs,
                                                          resolve=True))
        except (TypeError, ValueError) as error:
            raise _key_error("validation.task", error, ()) from error
    c = cfg.controller
    # Library constructors validate their own arguments; their ValueErrors name the argument,
    # and the section is added here so the message names the full config key.
    try:
        controller = GAROController(
            hidden_size=c.hidden_size, num_step_frequencies=c.num_step_frequencies,
            init_lr=c.init_lr, init_momentum=c.init_momentum,
            init_weight_decay=c.init_weight_decay, features=c.features,
            lr_schedule=c.lr_schedule, generator=torch.Generator().manual_seed(cfg.seed),
        ).to(device=device, dtype=getattr(torch, cfg.dtype))
        rule = GARORule(direction=c.direction, feature_gradients=c.feature_gradients,
                        scale=c.scale)
    except ValueError as error:
        raise _key_error("controller", error, c) from error
    if c.init_from is not None:  # fine-tuning (a resume then loads its own weights over these)
        try:
            load_controller_weights(controller, rule, c.init_from)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"invalid config key 'controller.init_from': {error}") from error
    if c.kind == "garo":
        learned = GAROLearnedRule(controller, rule)
    else:  # the GD/ODE switching policy, alone or with GARO (scripts/hybrid_train.py)
        try:
            learned = hybrid_train.build_learned(cfg, controller, rule, device,
                                                 getattr(torch, cfg.dtype))
        except ValueError as error:
            raise _key_error("hybrid", error, cfg.hybrid) from error
    u, m = cfg.unroll, cfg.meta_loss
    try:
        meta_loss = MetaLoss(m.kind, m.split, m.log_eps, m.divergence_threshold)
    except ValueError as error:
        raise _key_error("meta_loss", error, m) from error
    for i, spec in enumerate(cfg.evaluation.baselines):  # fail now, not after training
        try:
            make_optimizer(spec.name, **OmegaConf.to_container(spec.hyperparameters))
        except (TypeError, ValueError) as error:
            raise _key_error(f"evaluation.baselines[{i}].hyperparameters", error,
                             spec.hyperparameters) from error
    horizon = make_horizon(u.schedule, u.horizon, u.min_horizon, u.max_horizon)
    engine = {"vectorised": functools.partial(VectorisedPool, compile=u.compile)}.get(
        u.engine, InnerRunPool)  # same runs and numbers; vectorised: one program per task shape
    try:
        pool = engine(learned, family, u.num_tasks, u.truncation_length, horizon, meta_loss,
                      second_order=u.second_order, shard=shard or distributed_world())
    except ValueError as error:  # fewer runs than processes
        raise ConfigError(f"invalid config key 'unroll.num_tasks': {error}") from error
    estimator = make_estimator(cfg.estimator.name, cfg.estimator.num_pairs, cfg.estimator.sigma)
    trainer = MetaTrainer(learned, pool, estimator, outer_lr=cfg.outer.lr,
                          clip_norm=cfg.outer.clip_norm, seed=cfg.seed)
    return held_out, learned, trainer


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


def train(cfg: MetaTrainConfig, rank: int, world: int, device: str) -> dict[str, Any]:
    """Meta-train, checkpoint, export and evaluate (rank 0 alone logs, exports and evaluates)."""
    family, learned, trainer = build(cfg, device)
    if rank == 0 and isinstance(trainer.pool, VectorisedPool):  # once: what takes the loop, why
        print(trainer.pool.describe(learned.meta_parameters()), flush=True)
    untrained = copy.deepcopy(learned.module)
    out_dir = Path(cfg.out_dir)
    prepare_run_dir(cfg, out_dir, rank, world, trainer)
    run_id = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12]
    logger = Logger() if rank > 0 else make_logger(
        out_dir, wandb_mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
        name=cfg.wandb.run_name, tags=cfg.wandb.tags,
        config=OmegaConf.to_container(cfg, resolve=True), run_id=run_id)
    started = time.perf_counter()
    before = run_validation(cfg, learned, family, dict(untrained.named_parameters())) \
        if rank == 0 else None
    if rank == 0 and trainer.step_count == 0:
        logger.log({"val/meta_loss": before["meta_loss"], "val/diverged": before["diverged"]}, 0)
        logger.log_series("hyperparameters_untrained", _named(before["traces"]), 0)
        if cfg.controller.init_from is not None:  # the starting point is a candidate too
            _export(cfg, learned, out_dir / "snapshots" / f"step_{0:06d}{SUFFIX}",
                    {"steps": 0, "val_meta_loss": before["meta_loss"]})

    def checkpoint():  # a collective under torchrun: rank 0 writes every rank's part
        distributed_run.save_state(trainer.state_dict(), out_dir / STATE_FILE, world)

    bar = tqdm(total=cfg.steps, initial=min(trainer.step_count, cfg.steps), desc="meta-train",
               disable=not cfg.progress or rank > 0, dynamic_ncols=True)
    stop = run_dir.GracefulStop()
    try:
        with stop:
            _train_loop(cfg, trainer, logger, bar, checkpoint, stop, learned, family, rank, world)
    except BaseException:
        bar.close()
        logger.close()
        raise
    bar.close()
    checkpoint()
    if trainer.step_count > 0 and trainer.skipped_updates >= trainer.step_count:
        # Exporting now would ship the untrained controller as if it had been trained.
        logger.close()
        raise TrainingFailed(
            f"all {trainer.step_count} meta-updates were skipped (non-finite meta-gradients, "
            f"non-finite updates or every inner run diverged); {out_dir / EXPORT_FILE} not "
            f"written, {out_dir / STATE_FILE} kept for inspection")
    if rank > 0:  # the controllers are identical on every rank: rank 0 reports for all
        return {"trainer": trainer, "out_dir": out_dir}
    return _finish(cfg, trainer, learned, family, untrained, logger, before, started, out_dir,
                   run_id)


class TrainingFailed(RuntimeError):
    """Training produced nothing worth exporting (the message says why)."""


def _train_loop(cfg, trainer, logger, bar, checkpoint, stop, learned, family, rank, world):
    while trainer.step_count < cfg.steps:
        if _stop_requested(stop, world):
            checkpoint()
            name = signal.Signals(stop.signum or signal.SIGTERM).name
            raise run_dir.Interrupted(
                f"{name}: stopped at meta-step {trainer.step_count}, checkpoint saved to "
                f"{Path(cfg.out_dir) / STATE_FILE}; re-run the same command to resume",
                stop.signum or signal.SIGTERM)
        metrics = trainer.step()
        step = trainer.step_count
        logger.log(metrics, step)
        bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4g}",
                        lr_t=f"{metrics.get('lr_t', float('nan')):.3g}")
        bar.update(1)
        if rank == 0 and (step % cfg.validation.every == 0 or step == cfg.steps):
            val = run_validation(cfg, learned, family)
            logger.log({"val/meta_loss": val["meta_loss"], "val/diverged": val["diverged"],
                        "val/final_normalized_loss": val["final_normalized_loss"]}, step)
            logger.log_series("hyperparameters", _named(val["traces"]), step)
            _export(cfg, learned, Path(cfg.out_dir) / "snapshots" / f"step_{step:06d}{SUFFIX}",
                    {"steps": step, "val_meta_loss": val["meta_loss"]})  # selection candidates
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()


def _export(cfg: MetaTrainConfig, learned, path: Path, training: dict) -> Path:
    """The trained controller(s) as a ``load_optimizer`` checkpoint: GARO's, or a hybrid's."""
    if cfg.controller.kind == "garo":
        return _export_garo(cfg, learned, path, training)
    return hybrid_train.export(cfg, learned, path, training)


def _export_garo(cfg: MetaTrainConfig, learned, path: Path, training: dict) -> Path:
    """The trained controller as a ``load_optimizer`` checkpoint with its GARO options."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(
        path, learned.module,
        optimizer_config={"direction": cfg.controller.direction, "granularity": "global",
                          "scale": cfg.controller.scale},
        training=training)


def _stop_requested(stop: run_dir.GracefulStop, world: int) -> bool:
    """Every rank stops at the same meta-step (a rank alone would hang in the all-reduce)."""
    flag = stop.signum is not None
    if world > 1:
        agreed = torch.tensor([stop.signum or 0])
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
        stop.signum = int(agreed) or None
        flag = stop.signum is not None
    return flag


def _finish(cfg, trainer, learned, family, untrained, logger, before, started, out_dir, run_id):
    """Rank 0: held-out validation, export, evaluation table, final log records."""
    after = run_validation(cfg, learned, family)
    training = {"steps": trainer.step_count, "task": cfg.task.name, "seed": cfg.seed,
                "meta_loss": f"{cfg.meta_loss.kind}/{cfg.meta_loss.split}",
                "estimator": cfg.estimator.name,
                "held_out_meta_loss": {"untrained": before["meta_loss"],
                                       "trained": after["meta_loss"]},
                # the Hub model card's "training mixture" and "compute" (metaopt.hub)
                "task_kwargs": OmegaConf.to_container(cfg.task.kwargs, resolve=True),
                "seconds": round(time.perf_counter() - started, 1),
                "hardware": f"{cfg.device}, {torch.get_num_threads()} threads"}
    if cfg.controller.init_from is not None:  # fine-tuned: the card names the starting point
        training.update(provenance(cfg.controller.init_from))
    export = _export(cfg, learned, out_dir / EXPORT_FILE, training)
    logger.log_artifact(export, name=f"garo-{run_id}", type="model")
    train_seconds = time.perf_counter() - started
    print(f"held-out meta-loss ({cfg.validation.kind}/{cfg.validation.split}, "
          f"{cfg.validation.num_tasks} tasks x {cfg.validation.horizon} steps): "
          f"untrained {before['meta_loss']:.4g} -> trained {after['meta_loss']:.4g} "
          f"after {trainer.step_count} meta-steps ({train_seconds:.0f}s); "
          f"inner runs reset: {trainer.resets}, skipped updates: {trainer.skipped_updates}")
    summary = []
    if cfg.evaluation.enabled:
        summary = evaluation_table(cfg, learned, family, untrained)
        print(format_table(summary, [c for c in EVAL_COLUMNS if c in SUMMARY_COLUMNS]))
        logger.log_table("evaluation", summary, trainer.step_count)
        for row in summary:
            logger.log({f"eval/{row['optimizer']}/final_norm_loss_median":
                        row["final_norm_loss_median"]}, trainer.step_count)
    logger.log({"held_out_meta_loss_untrained": before["meta_loss"],
                "held_out_meta_loss_trained": after["meta_loss"]}, trainer.step_count)
    from scripts.plots import meta_training_curve  # scripts/plots.py; None without matplotlib
    curve = meta_training_curve(out_dir / "metrics.jsonl", out_dir / "meta_training.png")
    if curve is not None:
        logger.log_image("meta_training", curve, trainer.step_count)
    logger.close()
    print(f"wrote {out_dir}/{EXPORT_FILE}, {STATE_FILE}, config.yaml, metrics.jsonl", flush=True)
    return {"before": before["meta_loss"], "after": after["meta_loss"], "summary": summary,
            "trainer": trainer, "out_dir": out_dir}


def _named(traces: dict) -> dict:
    return {f"{k}_t": v for k, v in traces.items()}


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
