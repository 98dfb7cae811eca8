"""The logger interface: JSONL always (strict JSON, flushed, resumable), W&B offline, null."""
from __future__ import annotations

import json
import math

from metaopt.logging import JSONLLogger, Logger, make_logger, truncate_jsonl


def test_jsonl_records_strict_json_and_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = JSONLLogger(path)
    logger.log({"meta_loss": 0.5, "grad": math.inf}, step=1)
    logger.log_series("hyperparameters", {"lr_t": [0.01, 0.02]}, step=1)
    logger.log({"meta_loss": math.nan}, step=2)
    records = [json.loads(line) for line in path.read_text().splitlines()]  # readable mid-run
    assert records[0] == {"step": 1, "meta_loss": 0.5, "grad": None}
    assert records[1] == {"step": 1, "series": "hyperparameters", "lr_t": [0.01, 0.02]}
    assert records[2] == {"step": 2, "meta_loss": None}
    logger.close()
    with open(path, "a") as f:
        f.write('{"step": 3, "meta_lo')  # a line cut short by a crash
    truncate_jsonl(path, max_step=1)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 1]


def test_null_logger_accepts_everything(tmp_path):
    logger = Logger()
    logger.log({"x": 1.0}, 0)
    logger.log_series("s", {"a": [1.0]}, 0)
    logger.log_artifact(tmp_path / "missing", name="n", type="model")
    logger.close()


def test_wandb_offline_run_is_hermetic(tmp_path):
    artifact = tmp_path / "optimizer.safetensors"
    artifact.write_bytes(b"weights")
    logger = make_logger(tmp_path, wandb_mode="offline", config={"seed": 0}, run_id="testrun01")
    logger.log({"meta_loss": 0.25, "bad": math.nan}, step=1)
    logger.log_series("hyperparameters", {"lr_t": [0.01, 0.02, 0.03],
                                          "momentum_t": [0.0, 0.1, 0.2]}, step=1)
    logger.log_table("evaluation", [{"optimizer": "adam", "loss": 0.1},
                                    {"optimizer": "sgd", "loss": math.nan}], step=1)
    logger.log_artifact(artifact, name="garo-test", type="model")
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*testrun01"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["meta_loss"] == 0.25
    assert lines[-1]["rows"][1] == {"optimizer": "sgd", "loss": None}


def test_disabled_wandb_writes_only_jsonl(tmp_path):
    logger = make_logger(tmp_path, wandb_mode="disabled")
    logger.log({"a": 1}, 0)
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_log_image_reaches_jsonl_and_the_offline_wandb_run(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "plot.png")
    plt.close(fig)
    logger = make_logger(tmp_path / "run", wandb_mode="offline", run_id="imagerun01")
    logger.log_image("plot", tmp_path / "plot.png", step=3)
    logger.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (record,) = [json.loads(x) for x in lines]
    assert record == {"step": 3, "image": "plot", "path": str(tmp_path / "plot.png")}
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*imagerun01")
    assert list(run.rglob("plot_*.png"))  # the image was copied into the W&B run's media
