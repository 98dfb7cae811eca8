"""A run directory read and made ready by ``scripts/meta_train.py``: a resume validated whole
before anything in ``out_dir`` is touched (saved config, state file, every rank's part), then
the lock, stale temp files, ``metrics.jsonl`` cut back to the checkpoint and ``config.yaml``
(``scripts/run_dir.py`` holds those pieces; under torchrun every rank agrees first:
``scripts/distributed_run.py``)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from metaopt.atomic import atomic_write
from metaopt.meta import MetaTrainer, load_training_state
from metaopt.meta.training_state import TrainingStateError, rank_state
from scripts import distributed_run, run_dir
from scripts.meta_train_config import ConfigError, MetaTrainConfig, training_differences

STATE_FILE = "state.pt"


def read_run_dir(cfg: MetaTrainConfig, out_dir: Path, rank: int = 0, world: int | None = 1,
                 trainer: MetaTrainer | None = None) -> dict | None:
    """A resumed run's saved state, validated without writing anything (None for a new run):
    the saved config must be readable and match, the state file readable, of a known version,
    complete and finite (every rank's part of it), written by ``world`` processes (None: any)
    and (given ``trainer``) rank ``rank``'s part loadable into it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"invalid config key 'out_dir': {str(out_dir)!r} is not a directory")
    path = out_dir / STATE_FILE
    legacy = sorted(p.name for p in out_dir.glob("state.rank*.pt")) if out_dir.is_dir() else []
    if legacy:  # one file per rank: an older layout whose ranks could disagree
        raise TrainingStateError(f"{out_dir}: {', '.join(legacy)} from an older metaopt that "
                                 "kept one state file per rank; resume with that version or "
                                 "train into a new out_dir")
    if not path.exists():
        return None
    saved = run_dir.read_config(out_dir / "config.yaml")
    differ = training_differences(saved, OmegaConf.to_container(cfg, resolve=True))
    if differ:
        raise ConfigError(f"{out_dir} holds a run with a different config ({', '.join(differ)}"
                          f" differ); use another out_dir or the same settings to resume")
    state = load_training_state(path)
    if world is not None and int(state.get("world_size", 1)) != world:
        raise ConfigError(f"{out_dir} was trained with {state.get('world_size', 1)} "
                          f"processes; resume it with the same number (got {world})")
    if trainer is not None:
        try:
            trainer.load_state_dict(rank_state(state, rank))
        except Exception as error:  # noqa: BLE001 (a state from other code: shapes, pool…)
            raise TrainingStateError(f"{path}: does not fit this run's trainer "
                                     f"({type(error).__name__}: {error})") from None
    return state


def prepare_run_dir(cfg: MetaTrainConfig, out_dir: Path, rank: int = 0, world: int = 1,
                    trainer: MetaTrainer | None = None) -> dict | None:
    """Validate a resume (``read_run_dir``, nothing written), then lock ``out_dir`` (rank 0),
    remove stale temp files, cut ``metrics.jsonl`` back to the checkpoint and write
    ``config.yaml``; return the saved state (or None)."""
    try:
        if rank == 0 and out_dir.is_dir():
            run_dir.lock(out_dir)  # before reading: another process may be training into it
        state, failure = read_run_dir(cfg, out_dir, rank, world, trainer), None
    except Exception as error:  # noqa: BLE001 (under torchrun any failure must reach every rank,
        if world == 1:          # or the others wait for it in the gather below for ever)
            raise
        state, failure = None, error  # reported after the other ranks heard of it
    if world > 1:  # (the gather is also the barrier: every rank has read the old config.yaml
        # before rank 0 replaces it)
        distributed_run.agree_on_resume(state, failure, out_dir / STATE_FILE, out_dir, world)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_dir.lock(out_dir)
        run_dir.remove_stale_temp_files(out_dir)
        if state is not None:
            run_dir.cut_metrics(out_dir / "metrics.jsonl", int(state["step"]), _is_final_record)
        yaml = OmegaConf.to_yaml(cfg).encode("utf-8")
        atomic_write(out_dir / "config.yaml", lambda f: f.write(yaml))
    return state


def _is_final_record(record: dict) -> bool:
    """Records written once when a run finishes (rewritten by a re-run, so dropped on resume)."""
    return "table" in record or "image" in record or \
        any(k.startswith(("eval/", "held_out_meta_loss")) for k in record)
