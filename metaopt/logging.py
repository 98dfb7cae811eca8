"""One logger interface for every run: JSONL always, Weights & Biases when enabled, or nothing.

    logger = make_logger(out_dir, wandb_mode="offline", config=cfg_dict)
    logger.log({"meta_loss": 0.3, "meta_grad_norm": 1.2}, step=10)
    logger.log_series("hyperparameters", {"lr_t": [...], "momentum_t": [...]}, step=10)
    logger.log_table("evaluation", [{"optimizer": "adam", "loss": 0.1}, ...], step=10)
    logger.log_artifact("runs/x/optimizer.safetensors", name="garo", type="model")
    logger.log_image("basins", "runs/x/basins.png", step=0)
    logger.close()

``JSONLLogger`` appends one JSON object per ``log`` call (``{"step": …, **metrics}``; NaN/inf
are written as null) and flushes it, so a crashed run keeps every record written before the
crash. ``WandbLogger`` sends the same metrics to W&B, series as line plots and files as
artifacts; ``mode="offline"`` never needs a login or the network. ``MultiLogger`` fans out.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write

WANDB_MODES = ("disabled", "offline", "online")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # 0-d tensors / numpy scalars
        return _json_safe(value.item())
    return value


class Logger:
    """The interface; this base class is also the null logger (every call is a no-op)."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Scalar metrics at outer step ``step``."""

    def log_series(self, name: str, series: Mapping[str, Sequence[float]], step: int) -> None:
        """Curves sharing an x axis 0..n−1 (e.g. lr_t along an inner run), drawn as a line plot."""

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """Rows with the same keys (e.g. an evaluation summary)."""

    def log_artifact(self, path: str | os.PathLike, name: str, type: str) -> None:
        """A file produced by the run (e.g. the exported checkpoint)."""

    def log_image(self, name: str, path: str | os.PathLike, step: int) -> None:
        """An image file (e.g. a study's PNG plot) shown under ``name``."""

    def close(self) -> None:
        """Flush and finish."""


NullLogger = Logger


class JSONLLogger(Logger):
    """Appends ``{"step": step, **metrics}`` lines to ``path``; series as
    ``{"series": name, …}``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run)

    def _write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(_json_safe(dict(record)), allow_nan=False) + "\n")
        self._file.flush()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._write({"step": int(step), **metrics})

    def log_series(self, name: str, series: Mapping[str, Sequence[float]], step: int) -> None:
        self._write({"step": int(step), "series": name,
                     **{k: list(map(float, v)) for k, v in series.items()}})

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self._write({"step": int(step), "table": name, "rows": [dict(r) for r in rows]})

    def log_image(self, name: str, path: str | os.PathLike, step: int) -> None:
        self._write({"step": int(step), "image": name, "path": str(path)})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def filter_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Rewrite a JSON-lines file (atomically) with the records ``keep`` accepts; a line cut
    short by a crash, or a record without an integer ``step``, is dropped."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            int(record.get("step", 0))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
        if keep(record):
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(k + "\n" for k in kept).encode("utf-8")))


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> None:
    """Drop records with ``step > max_step`` (a resumed run rewrites what followed its
    checkpoint)."""
    filter_jsonl(path, lambda record: int(record.get("step", 0)) <= max_step)


class WandbLogger(Logger):
    """A W&B run. ``mode`` is ``"offline"`` (default: written under ``directory``, synced later
    with ``wandb sync``) or ``"online"``. ``run_id`` makes a resumed training run continue the
    same W&B run."""

    def __init__(self, directory: str | os.PathLike, *, mode: str = "offline",
                 project: str = "metaopt", entity: str | None = None,
                 name: str | None = None, tags: Sequence[str] = (),
                 config: Mapping[str, Any] | None = None, run_id: str | None = None):
        import wandb
        if mode not in ("offline", "online"):
            raise ValueError(f"mode: must be 'offline' or 'online', got {mode!r}")
        self._wandb = wandb
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(dir=str(directory), mode=mode, project=project, entity=entity,
                              name=name, tags=list(tags), config=dict(config or {}),
                              id=run_id, resume="allow" if run_id else None,
                              # wandb >= 0.19: a bool is deprecated; a new run per logger
                              reinit="finish_previous")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = {k: v for k, v in _json_safe(dict(metrics)).items() if v is not None}
        self.run.log(values, step=int(step))

    def log_series(self, name: str, series: Mapping[str, Sequence[float]], step: int) -> None:
        keys = list(series)
        ys = [list(map(float, series[k])) for k in keys]
        xs = list(range(max(len(y) for y in ys))) if ys else []
        plot = self._wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=name, xname="inner step")
        self.run.log({name: plot}, step=int(step))

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data = [[_json_safe(row.get(c)) for c in columns] for row in rows]
        self.run.log({name: self._wandb.Table(columns=columns, data=data)}, step=int(step))

    def log_artifact(self, path: str | os.PathLike, name: str, type: str) -> None:
        artifact = self._wandb.Artifact(name, type=type)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def log_image(self, name: str, path: str | os.PathLike, step: int) -> None:
        self.run.log({name: self._wandb.Image(str(path))}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class MultiLogger(Logger):
    """Sends every call to each of ``loggers``."""

    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = list(loggers)

    def log(self, metrics, step):
        for logger in self.loggers:
            logger.log(metrics, step)

    def log_series(self, name, series, step):
        for logger in self.loggers:
            logger.log_series(name, series, step)

    def log_table(self, name, rows, step):
        for logger in self.loggers:
            logger.log_table(name, rows, step)

    def log_artifact(self, path, name, type):
        for logger in self.loggers:
            logger.log_artifact(path, name, type)

    def log_image(self, name, path, step):
        for logger in self.loggers:
            logger.log_image(name, path, step)

    def close(self):
        for logger in self.loggers:
            logger.close()


def make_logger(out_dir: str | os.PathLike, *, wandb_mode: str = "offline",
                project: str = "metaopt", entity: str | None = None,
                name: str | None = None, tags: Sequence[str] = (),
                config: Mapping[str, Any] | None = None,
                run_id: str | None = None, jsonl_name: str = "metrics.jsonl") -> Logger:
    """``out_dir/metrics.jsonl`` always, plus W&B under ``out_dir`` unless
    ``wandb_mode="disabled"``."""
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"wandb_mode: must be one of {WANDB_MODES}, got {wandb_mode!r}")
    loggers: list[Logger] = [JSONLLogger(Path(out_dir) / jsonl_name)]
    if wandb_mode != "disabled":
        loggers.append(WandbLogger(out_dir, mode=wandb_mode, project=project, entity=entity,
                                   name=name, tags=tags, config=config, run_id=run_id))
    return MultiLogger(loggers)
