"""``unroll.engine``: the vectorised engine trains what the loop trains, and a run switches engines
on resume (same numbers up to rounding, same state format)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "meta_train.py"
TINY = ["unroll.num_tasks=3", "unroll.truncation_length=4", "unroll.schedule=log_uniform",
        "unroll.min_horizon=5", "unroll.max_horizon=12", "controller.hidden_size=4",
        "validation.every=2", "validation.num_tasks=2", "validation.horizon=8",
        "evaluation.enabled=false", "wandb.mode=disabled", "progress=false", "dtype=float64",
        "checkpoint_every=100"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("meta_train_engine_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, out_dir, *extra):
    return script.main(["--config", str(ROOT / "configs" / "garo.yaml"), f"out_dir={out_dir}",
                        *TINY, *extra])


def test_engines_train_the_same_controller_and_resume_across(script, tmp_path):
    from metaopt.meta import InnerRunPool, VectorisedPool

    loop = _run(script, tmp_path / "loop", "steps=4", "unroll.engine=loop")
    vectorised = _run(script, tmp_path / "vec", "steps=2", "unroll.engine=vectorised")
    assert type(vectorised["trainer"].pool) is VectorisedPool
    assert type(loop["trainer"].pool) is InnerRunPool
    resumed = _run(script, tmp_path / "vec", "steps=4", "unroll.engine=loop")  # switch engines
    assert resumed["trainer"].step_count == 4
    a = loop["trainer"].learned.module.state_dict()
    b = resumed["trainer"].learned.module.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-10, atol=1e-12)


def test_unknown_engine_is_a_config_error(script, tmp_path):
    with pytest.raises(script.ConfigError, match="unroll.engine"):
        _run(script, tmp_path, "unroll.engine=jit")


def test_the_vectorised_engine_says_once_at_start_what_takes_the_loop(script, tmp_path, capsys):
    _run(script, tmp_path / "vec", "steps=2", "unroll.engine=vectorised")
    out = capsys.readouterr().out
    assert out.count("vectorised engine:") == 1 and "probe runs batched" in out, out
    _run(script, tmp_path / "loop", "steps=1", "unroll.engine=loop")
    assert "vectorised engine:" not in capsys.readouterr().out
