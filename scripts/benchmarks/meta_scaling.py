"""Meta-training across processes, measured on the user's own commands, end to end.

    python -m scripts.benchmark meta_throughput --mode scaling

For each config (``configs/garo.yaml``, the quick start, and the shipped checkpoints' configs
``configs/garo_general.yaml`` and ``configs/hybrid_general.yaml``), engine (``unroll.engine`` =
loop | vectorised), meta-batch (``unroll.num_tasks`` = 8, 64) and number of processes P (1:
``python scripts/meta_train.py``; 2: ``torchrun --standalone --nproc_per_node 2
scripts/meta_train.py``, each rank unrolling half the runs), the command runs twice into fresh
run directories, for M and for N meta-steps, and

    s/meta-step = (wall(N) − wall(M)) / (N − M)

so start-up, imports, the process group, the first meta-step's task construction and the final
validation and export (the same in both runs) cancel. N − M is chosen per config so that the
difference is tens of seconds of work (quick start: M, N = 5, 45; garo_general: 3, 19;
hybrid_general: 2, 6): the start-up of a process varies by seconds on a busy machine, which a
few fast meta-steps would not outweigh. With ``METAOPT_BENCH_REPEATS=k`` each pair runs k times
and the median is reported. W&B is off (``wandb.mode=disabled``), validation is reduced to one
short held-out task (only at the start and the end, which cancel), the evaluation table is off.
``cpu s/step`` is the same difference of the CPU time of the command's whole process tree
(``RUSAGE_CHILDREN``): with P processes on P free cores the wall time per step approaches it
divided by P. ``speedup`` = s/step with 1 process / with 2 (target ≥ 1.7). ``peak_rss_mib``: the
peak resident memory of the N-step command's largest process (one rank under torchrun), start-up
included. ``load`` is ``os.getloadavg()``'s 1-minute figure before → after the pair of runs: a
machine whose load exceeds its free cores makes the 2-process figure meaningless.

Knobs (environment): ``METAOPT_BENCH_STEPS="M,N"`` (every config), ``METAOPT_BENCH_CONFIGS``
(comma-separated config paths), ``METAOPT_BENCH_ENGINES``, ``METAOPT_BENCH_SIZES`` (default
8,64), ``METAOPT_BENCH_PROCS`` (default 1,2), ``METAOPT_BENCH_CPUS`` (e.g. ``0,1``: run every
command under ``taskset -c``), ``METAOPT_BENCH_REPEATS`` (default 1).
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("configs/garo.yaml", "configs/garo_general.yaml", "configs/hybrid_general.yaml")
# (M, N); other configs: (3, 11). hybrid_general's meta-steps cost seconds each (RK4 stages)
STEPS = {"garo.yaml": (5, 45), "garo_general.yaml": (3, 19), "hybrid_general.yaml": (2, 6)}
QUIET = ["wandb.mode=disabled", "progress=false", "evaluation.enabled=false",
         "validation.every=1000000", "validation.num_tasks=1", "validation.horizon=10",
         "checkpoint_every=1000000"]


def _env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def command(config: str, engine: str, runs: int, procs: int, steps: int, out_dir: str,
            cpus: str | None = None) -> list[str]:
    """The user's command (``torchrun`` as ``python -m torch.distributed.run``, the same
    launcher) with the benchmark's overrides."""
    launcher = [sys.executable] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", str(procs)]
    pin = ["taskset", "-c", cpus] if cpus else []
    return [*pin, sys.executable, "-c", _PEAK_RSS, *launcher,
            str(ROOT / "scripts" / "meta_train.py"), "--config",
            str(ROOT / config), f"out_dir={out_dir}", f"unroll.engine={engine}",
            f"unroll.num_tasks={runs}", f"steps={steps}", *QUIET]


# Runs the command it is given and reports, last on stderr, the peak RSS of its largest process
# (a fresh parent per command: RUSAGE_CHILDREN's maximum never resets within one process).
_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "file=sys.stderr); sys.exit(code)")


def _timed(cmd: list[str]) -> tuple[float, float, float]:
    """Wall and CPU seconds (the whole process tree) of ``cmd`` and the peak RSS in MiB of its
    largest process; raises on a non-zero exit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(cmd[-12:])}: exit {proc.returncode}: {tail[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = [line.split()[1] for line in proc.stderr.splitlines()
            if line.startswith("peak_rss_kib ")]
    return wall, cpu, int(peak[-1]) / 1024 if peak else float("nan")


def measure(config: str, engine: str, runs: int, procs: int, steps: tuple[int, int],
            cpus: str | None = None, repeats: int = 1) -> dict:
    """s/meta-step (wall and CPU) of one command, from M-step and N-step runs (median of
    ``repeats`` pairs)."""
    load_before = os.getloadavg()[0]
    walls, cpus_per_step, peaks = [], [], []
    span = steps[1] - steps[0]
    for _ in range(repeats):
        times = []
        for count in steps:
            with tempfile.TemporaryDirectory() as out_dir:
                times.append(_timed(command(config, engine, runs, procs, count,
                                            str(Path(out_dir) / "run"), cpus)))
        (wall_m, cpu_m, _), (wall_n, cpu_n, peak) = times
        walls.append((wall_n - wall_m) / span)
        cpus_per_step.append((cpu_n - cpu_m) / span)
        peaks.append(peak)
    return {"config": Path(config).name, "engine": engine, "runs": runs, "procs": procs,
            "steps": f"{steps[0]}->{steps[1]}", "s_per_step": statistics.median(walls),
            "cpu_s_per_step": statistics.median(cpus_per_step),
            "peak_rss_mib": round(max(peaks)),
            "load": f"{load_before:.2f}->{os.getloadavg()[0]:.2f}"}


def run(args) -> list[dict]:
    fixed = _env_list("METAOPT_BENCH_STEPS", "")
    if fixed:
        m, n = (int(x) for x in fixed)
        if not 1 <= m < n:
            raise ValueError(f"METAOPT_BENCH_STEPS: need 1 <= M < N, got {m},{n}")
    cpus = os.environ.get("METAOPT_BENCH_CPUS") or None
    repeats = int(os.environ.get("METAOPT_BENCH_REPEATS", "1"))
    print(f"meta scaling: {os.cpu_count()} CPUs, s/meta-step = (wall(N) - wall(M))/(N - M)"
          f"{', pinned to CPUs ' + cpus if cpus else ''}", flush=True)
    rows = []
    for config in _env_list("METAOPT_BENCH_CONFIGS", ",".join(CONFIGS)):
        steps = (m, n) if fixed else STEPS.get(Path(config).name, (3, 11))
        for engine in _env_list("METAOPT_BENCH_ENGINES", "loop,vectorised"):
            for runs in (int(x) for x in _env_list("METAOPT_BENCH_SIZES", "8,64")):
                alone = None
                for procs in (int(x) for x in _env_list("METAOPT_BENCH_PROCS", "1,2")):
                    row = measure(config, engine, runs, procs, steps, cpus, repeats)
                    if procs == 1:
                        alone = row["s_per_step"]
                    row["speedup"] = alone / row["s_per_step"] if alone and procs > 1 else ""
                    row["target"] = ">= 1.7" if procs == 2 else ""
                    rows.append(row)
                    print(row, flush=True)
    return rows
