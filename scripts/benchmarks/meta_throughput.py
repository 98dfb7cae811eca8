"""Meta-training throughput: the loop engine vs the vectorised one, side by side.

A meta-step is ``MetaTrainer.step`` as ``scripts/meta_train.py`` builds it from
``configs/garo.yaml`` (GARO controller, truncated BPTT over 20 inner steps, second order,
log-uniform horizons 50–200), with ``unroll.num_tasks`` = 4, 32, 128 and ``unroll.engine`` =
loop | vectorised, on

(a) the quick-start task distribution (the config's quadratics, dims 2–20, half noisy);
(b) digits MLPs of one architecture (64-32-10 tanh, batch 64; data subset and initialisation
    sampled) — what vectorises;
(c) the full digits MLP family (width 8–128, depth 1–3, three activations, three batch sizes
    sampled) with ``padding=false``: runs group by architecture and batch size, mostly groups of
    one;
(d) the same family padded (the default): widths, batch sizes and activations padded or carried
    as data (``tasks.dense.DenseBatch``), runs group by depth (at most 3 groups), paid for in
    memory. (Padding parameters needs a rule that pads exactly; GARO's ``scale="none"``, the
    config's, does.)

Inner steps per second = inner steps advanced (Σ over runs of the segment length) / wall time of
refresh + meta-step, the two engines interleaved round by round (same seed: both trainers follow
the same trajectory, so every round does the same work), median over rounds. Peak memory: each
engine in a fresh process (``spawn``): peak RSS of the process (``VmHWM``; not ``ru_maxrss``,
which keeps the forking parent's RSS across ``exec``) over one meta-step minus the RSS once the
trainer is built, so one engine's heap never hides the other's.

``METAOPT_BENCH_COMPILE=1`` adds ``unroll.compile=true`` (``torch.compile`` of the batched rule
step) on (a) at 32 tasks: its first meta-steps include the compilation.

``--mode scaling`` measures something else: seconds per meta-step of the user's commands end to
end, one process vs two under torchrun (``scripts/benchmarks/meta_scaling.py``).
"""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1]
CONFIG = SCRIPTS.parent / "configs" / "garo.yaml"
SIZES = (4, 32, 128)
FAMILIES = {
    "(a) quick-start quadratics": None,  # the config's own task
    "(b) digits MLP, one architecture": {
        "datasets": ["digits"], "width": [32, 32], "depth": [1, 1], "activations": ["tanh"],
        "batch_sizes": [64]},
    "(c) digits MLP, sampled architectures": {"datasets": ["digits"], "padding": False},
    "(d) digits MLP, sampled architectures, padded": {"datasets": ["digits"], "padding": True},
}
ROUNDS = {4: 3, 32: 2, 128: 1}


def _trainer(family: str, num_tasks: int, engine: str, seed: int, compile: bool = False):
    from scripts import meta_train
    from scripts.meta_train_config import load_config

    overrides = [f"unroll.num_tasks={num_tasks}", f"unroll.engine={engine}", f"seed={seed}",
                 f"unroll.compile={str(compile).lower()}", "wandb.mode=disabled"]
    kwargs = FAMILIES[family]
    if kwargs is not None:
        overrides.append("task.name=mlp")
    cfg = load_config(str(CONFIG), overrides)
    if kwargs is not None:
        cfg.task.kwargs = kwargs
    return meta_train.build(cfg)[2]


def _meta_step(trainer) -> int:
    """Refresh, count the inner steps the segment will take, then one meta-step."""
    from metaopt.meta import segment_length

    pool = trainer.pool
    pool.refresh(trainer.learned.meta_parameters(), trainer.generator)
    steps = sum(segment_length(pool.truncation_length, r.step, r.horizon) for r in pool.runs)
    trainer.step()
    return steps


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's peak RSS (``VmHWM``, bytes)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _peak_memory(family: str, num_tasks: int, engine: str, seed: int) -> float:
    """In a fresh process: peak RSS over one meta-step above the built trainer's RSS (MiB)."""
    torch.set_num_threads(1)
    trainer = _trainer(family, num_tasks, engine, seed)
    base = _rss()
    _meta_step(trainer)
    return (_peak_rss() - base) / 2 ** 20


def _memory(family, num_tasks, engine, seed) -> float:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(_peak_memory, family, num_tasks, engine, seed).result()


def _throughput(family: str, num_tasks: int, seed: int, compile: bool = False) -> dict:
    engines = {"loop": _trainer(family, num_tasks, "loop", seed),
               "vectorised": _trainer(family, num_tasks, "vectorised", seed)}
    if compile:
        engines["compiled"] = _trainer(family, num_tasks, "vectorised", seed, compile=True)
    first = {}
    for name, trainer in engines.items():  # warm-up (and, compiled, the compilation)
        start = time.perf_counter()
        _meta_step(trainer)
        first[name] = time.perf_counter() - start
    rates = {name: [] for name in engines}
    for _ in range(ROUNDS[num_tasks]):
        for name, trainer in engines.items():
            start = time.perf_counter()
            steps = _meta_step(trainer)
            rates[name].append(steps / (time.perf_counter() - start))
    out = {name: statistics.median(values) for name, values in rates.items()}
    out["first_s"] = first
    return out


MODES = ("engines", "scaling")


def run(args) -> list[dict]:
    mode = getattr(args, "mode", None) or "engines"
    if mode not in MODES:
        raise SystemExit(f"meta_throughput: --mode must be one of {MODES}, got {mode!r}")
    if mode == "scaling":
        from .meta_scaling import run as scaling
        return scaling(args)
    if torch.device(args.device).type != "cpu":
        print("meta throughput: the configs train on the CPU; measured there")
    rows = []
    only = os.environ.get("METAOPT_BENCH_FAMILY")  # e.g. "(b)": one family (parallel runs)
    for family in [f for f in FAMILIES if only is None or f.startswith(only)]:
        for n in SIZES:
            rate = _throughput(family, n, args.seed)
            memory = {e: _memory(family, n, e, args.seed) for e in ("loop", "vectorised")}
            rows.append({
                "benchmark": "throughput: inner steps/s of meta-training", "model": family,
                "tasks": n, "loop_steps_s": rate["loop"], "vec_steps_s": rate["vectorised"],
                "speedup": rate["vectorised"] / rate["loop"],
                "loop_MiB": memory["loop"], "vec_MiB": memory["vectorised"],
                "mem_per_task_ratio": memory["vectorised"] / max(memory["loop"], 1e-9),
                "target": {"(a)": ">= 10x at 32", "(b)": ">= 3x at 32"}.get(family[:3], "")})
            print(rows[-1], flush=True)
    if os.environ.get("METAOPT_BENCH_COMPILE") == "1":
        from .common import print_table

        family = next(iter(FAMILIES))
        rate = _throughput(family, 32, args.seed, compile=True)
        print_table([{"model": family, "tasks": 32,
                      "eager_steps_s": rate["vectorised"], "compiled_steps_s": rate["compiled"],
                      "ratio": rate["compiled"] / rate["vectorised"],
                      "eager_first_step_s": rate["first_s"]["vectorised"],
                      "compiled_first_step_s": rate["first_s"]["compiled"]}],
                    "meta: torch.compile of the batched rule step (unroll.compile)")
    return rows
