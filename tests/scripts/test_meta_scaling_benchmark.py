"""``python -m scripts.benchmark meta_throughput --mode scaling``: the commands it times are the
documented ones, and s/meta-step is the difference quotient of two runs (no process started)."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from scripts.benchmarks import meta_scaling, meta_throughput


def test_the_commands_are_the_documented_ones():
    alone = meta_scaling.command("configs/garo.yaml", "loop", 8, 1, 5, "/tmp/x")
    peak = [sys.executable, "-c", meta_scaling._PEAK_RSS]  # the peak-memory wrapper
    assert alone[:5] == [*peak, sys.executable,
                         str(meta_scaling.ROOT / "scripts" / "meta_train.py")]
    two = meta_scaling.command("configs/garo.yaml", "vectorised", 64, 2, 5, "/tmp/x", cpus="0,1")
    assert two[:6] == ["taskset", "-c", "0,1", *peak]
    assert two[6:12] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", "2"]
    for key in ("unroll.engine=vectorised", "unroll.num_tasks=64", "steps=5",
                "wandb.mode=disabled", "evaluation.enabled=false"):
        assert key in two


def test_seconds_per_step_cancel_the_fixed_costs(monkeypatch):
    """wall(N) = 7 + 2·N, 1 process; 7 + 1.25·N, 2 processes: 2 and 1.25 s/step, speedup 1.6."""
    def timed(cmd):
        steps = int(next(a for a in cmd if a.startswith("steps=")).split("=")[1])
        per_step = 1.25 if "torch.distributed.run" in cmd else 2.0
        return 7 + per_step * steps, 3 + per_step * steps, 100.0 + steps
    monkeypatch.setattr(meta_scaling, "_timed", timed)
    for key, value in {"METAOPT_BENCH_STEPS": "2,6", "METAOPT_BENCH_CONFIGS": "configs/garo.yaml",
                       "METAOPT_BENCH_ENGINES": "loop", "METAOPT_BENCH_SIZES": "8"}.items():
        monkeypatch.setenv(key, value)
    rows = meta_throughput.run(SimpleNamespace(mode="scaling", device="cpu", seed=0))
    assert [(r["procs"], r["s_per_step"], r["cpu_s_per_step"]) for r in rows] == \
        [(1, 2.0, 2.0), (2, 1.25, 1.25)]
    assert rows[1]["speedup"] == pytest.approx(1.6) and "->" in rows[1]["load"]
    assert rows[0]["peak_rss_mib"] == 106  # the N-step command's


def test_the_wrapper_reports_the_peak_memory_of_the_command():
    wall, cpu, peak = meta_scaling._timed(
        [sys.executable, "-c", meta_scaling._PEAK_RSS, sys.executable, "-c",
         "import numpy; a = numpy.ones(40 * 2 ** 20 // 8); a += 1"])  # 40 MiB, touched
    assert wall > 0 and cpu > 0 and 40 < peak < 400


def test_an_unknown_mode_is_one_line():
    with pytest.raises(SystemExit, match="--mode must be one of"):
        meta_throughput.run(SimpleNamespace(mode="nonsense", device="cpu", seed=0))
