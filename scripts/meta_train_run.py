"""One meta-training run of ``scripts/meta_train.py``: its meta-steps and what closes the run.

``train`` builds the objects (``scripts/meta_train_build.py``), prepares or resumes the run
directory (``scripts/meta_train_resume.py``), then loops: a meta-step, its log record,
every ``validation.every`` steps the held-out meta-loss and a snapshot export (the selection
candidates), every ``checkpoint_every`` steps ``state.pt``. SIGINT/SIGTERM stop every rank at
the same meta-step with the state saved; a run whose meta-updates were all skipped exports
nothing (``TrainingFailed``). Rank 0 then validates, exports ``optimizer.safetensors`` with its
provenance (what the Hub model card reads), prints the evaluation table and plots the curve.
"""
from __future__ import annotations

import copy
import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from metaopt.checkpoint import SUFFIX, save_checkpoint
from metaopt.evaluation import SUMMARY_COLUMNS, format_table
from metaopt.logging import Logger, make_logger
from metaopt.meta.vectorised import VectorisedPool
from metaopt.meta.warm_start import provenance
from scripts import distributed_run, hybrid_train, run_dir
from scripts.meta_train_build import build
from scripts.meta_train_config import MetaTrainConfig
from scripts.meta_train_eval import EVAL_COLUMNS, evaluation_table, run_validation
from scripts.meta_train_resume import STATE_FILE, prepare_run_dir

EXPORT_FILE = "optimizer.safetensors"


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
