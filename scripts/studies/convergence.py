"""Convergence detection and automated anomaly detection in training logs (GDSearch
instruments ``metaopt.analysis.convergence`` and ``metaopt.analysis.anomalies``).

Each run writes its loss per step to its own ``logs/<label>.jsonl`` (``metaopt.logging``'s JSONL
format); the detectors then read those logs back, as they would read any run's metrics.jsonl,
and report divergence onsets, loss spikes, stalls, steps to target and plateaus. The default runs
are chosen to contain each anomaly: heavy-ball momentum's divergence, SGD bouncing across
Rosenbrock's valley, SGD starting next to the six-hump camel's saddle, and an MLP on digits with a
too-large lr that spikes and collapses to chance level.
Instruments: ``metaopt.analysis.anomalies``, ``metaopt.analysis.convergence``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tasks
from metaopt.analysis.anomalies import detect_anomalies_jsonl, load_metric
from metaopt.analysis.convergence import analyze_convergence
from metaopt.analysis.sensitivity import function_run
from metaopt.evaluation import make_optimizer
from metaopt.logging import JSONLLogger
from tasks.test_functions import TEST_FUNCTIONS_2D

from .common import markdown_table, save_figure, write_csv, write_report

NAME = "convergence"
DESCRIPTION = ("Convergence (steps to target, plateaus) and anomaly detection (divergence onset, "
               "spikes, stalls) read back from each run's metrics JSONL")
SMOKE = ["runs=[{label: div, problem: rosenbrock, start: [-1.5, 2.0], optimizer: sgd_momentum, "
         "options: {lr: 0.01, momentum: 0.99}, steps: 20}, {label: mlp, problem: mlp_digits, "
         "optimizer: sgd, options: {lr: 0.1}, steps: 10}]", "mlp_width=8"]
MLP = "mlp_digits"


@dataclass
class RunSpec:
    label: str = "run"
    problem: str = "rosenbrock"  # a 2-D test function, or "mlp_digits"
    start: list[float] = field(default_factory=lambda: [-1.5, 2.0])  # 2-D problems only
    optimizer: str = "sgd"       # a metaopt.evaluation optimizer name
    options: dict[str, Any] = field(default_factory=dict)  # its hyperparameters, lr included
    steps: int = 500


@dataclass
class Config:
    runs: list[RunSpec] = field(default_factory=lambda: [
        RunSpec("sgdm_beta0.99_lr0.01", "rosenbrock", [-1.5, 2.0], "sgd_momentum",
                {"lr": 0.01, "momentum": 0.99}, 500),
        RunSpec("sgd_lr0.002", "rosenbrock", [-1.5, 2.0], "sgd", {"lr": 0.002}, 500),
        RunSpec("adam_lr0.1", "rosenbrock", [-1.5, 2.0], "adam", {"lr": 0.1}, 500),
        RunSpec("sgd_near_saddle", "six_hump_camel", [1e-4, 1e-4], "sgd", {"lr": 0.01}, 500),
        RunSpec("mlp_sgdm_lr0.3", MLP, [], "sgd_momentum", {"lr": 0.3, "momentum": 0.9}, 300),
        RunSpec("mlp_sgdm_lr0.05", MLP, [], "sgd_momentum", {"lr": 0.05, "momentum": 0.9}, 300)])
    mlp_width: int = 32
    mlp_batch_size: int = 32
    seed: int = 0
    target_gap: float = 1e-3   # converged: loss ≤ f* + target_gap (MLP: f* = 0 → mean batch loss)
    mlp_target: float = 0.1
    spike_factor: float = 3.0
    window: int = 20
    divergence_factor: float = 10.0
    stall_window: int = 50
    stall_tol: float = 1e-3
    stall_gap: float = 0.5

    def __post_init__(self):
        if not self.runs:
            raise ValueError("runs: need at least one run")
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels) or any(not label.replace("_", "").replace(".", "")
                                                  .replace("-", "").isalnum() for label in labels):
            raise ValueError(f"runs: labels must be unique file-name-safe words, got {labels}")
        for i, r in enumerate(self.runs):
            if r.problem != MLP and r.problem not in TEST_FUNCTIONS_2D:
                raise ValueError(f"runs[{i}].problem: unknown {r.problem!r}; choose "
                                 f"{MLP!r} or from {sorted(TEST_FUNCTIONS_2D)}")
            if r.problem != MLP and len(r.start) != 2:
                raise ValueError(f"runs[{i}].start: needs 2 coordinates, got {r.start}")
            if r.steps < 1:
                raise ValueError(f"runs[{i}].steps: must be >= 1, got {r.steps}")
            if "lr" not in r.options:
                raise ValueError(f"runs[{i}].options.lr: required")
            try:
                make_optimizer(r.optimizer, **dict(r.options))
            except ValueError as error:
                raise ValueError(f"runs[{i}].optimizer: {error}") from None
        for key in ("spike_factor", "divergence_factor"):
            if not getattr(self, key) > 1:
                raise ValueError(f"{key}: must be > 1, got {getattr(self, key)}")
        for key in ("window", "stall_window", "mlp_width", "mlp_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("target_gap", "mlp_target", "stall_tol", "stall_gap"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")


def _mlp_losses(cfg: Config, spec: RunSpec) -> list[float]:
    """Minibatch training losses of an MLP on digits (what a training log records)."""
    task = tasks.get("mlp", datasets=("digits",), width=(cfg.mlp_width, cfg.mlp_width),
                     depth=(2, 2), activations=("relu",), batch_sizes=(cfg.mlp_batch_size,),
                     train_fraction=(1.0, 1.0)).sample(torch.Generator().manual_seed(cfg.seed))
    module = task.module()
    optimizer = make_optimizer(spec.optimizer, **dict(spec.options))(module.parameters())
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    for _ in range(spec.steps):
        optimizer.zero_grad()
        loss = task.module_loss(module, task.train_batch(batches))
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        optimizer.step()
    return losses


def run(cfg: Config, out_dir: Path, logger) -> dict:
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    detect = {"spike_factor": cfg.spike_factor, "window": cfg.window,
              "divergence_factor": cfg.divergence_factor, "stall_window": cfg.stall_window,
              "stall_tol": cfg.stall_tol, "stall_gap": cfg.stall_gap}
    anomaly_rows, convergence_rows, traces = [], [], {}
    for spec in cfg.runs:
        if spec.problem == MLP:
            losses, minimum, target = _mlp_losses(cfg, spec), 0.0, cfg.mlp_target
        else:
            fn = TEST_FUNCTIONS_2D[spec.problem]
            options = {k: v for k, v in dict(spec.options).items() if k != "lr"}
            factory = make_optimizer(spec.optimizer, **options)
            run_fn = function_run(fn.function, spec.start,
                                  lambda p, lr, _f=factory: _f.with_hyperparameters(lr=lr)(p),
                                  spec.steps)
            losses = run_fn(float(spec.options["lr"])).tolist()
            minimum = fn.minimum_value or 0.0
            target = minimum + cfg.target_gap
        path = log_dir / f"{spec.label}.jsonl"
        path.unlink(missing_ok=True)
        log = JSONLLogger(path)
        for t, value in enumerate(losses):
            log.log({"loss": value}, step=t)
            if not math.isfinite(value):
                break  # the log of a crashed run ends at its first non-finite loss
        log.close()
        # Everything below reads the log back, as for any run's metrics.jsonl.
        steps, values = load_metric(path, "loss")
        found = detect_anomalies_jsonl(path, "loss", target=target, minimum=minimum, **detect)
        report = analyze_convergence(values, target, minimum=minimum, window=cfg.stall_window,
                                     rel_tol=cfg.stall_tol)
        traces[spec.label] = (steps, values, found, minimum)
        for a in found:
            anomaly_rows.append({"run": spec.label, "kind": a.kind, "start": a.start,
                                 "end": a.end, "value": a.value, "detail": a.detail})
        convergence_rows.append({
            "run": spec.label, "problem": spec.problem, "optimizer": spec.optimizer,
            "lr": spec.options["lr"], "logged_steps": len(values),
            "initial_loss": report.initial_loss, "final_loss": report.final_loss,
            "best_loss": report.best_loss, "best_step": report.best_step, "target": target,
            "steps_to_target": report.steps_to_target,
            "plateaus": " ".join(f"[{p.start},{p.end}]@{p.level:.3g}" for p in report.plateaus),
            **{kind: sum(a.kind == kind for a in found)
               for kind in ("divergence", "spike", "stall")}})
        logger.log({f"{spec.label}/{k}": v for k, v in convergence_rows[-1].items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=0)
    write_csv(out_dir / "anomalies.csv", anomaly_rows,
              ["run", "kind", "start", "end", "value", "detail"])
    write_csv(out_dir / "convergence.csv", convergence_rows)
    logger.log_table("anomalies", anomaly_rows, step=0)

    def draw(*axes):
        colours = {"divergence": "tab:red", "spike": "tab:orange", "stall": "tab:purple"}
        for ax, (label, (steps, values, found, minimum)) in zip(axes, traces.items()):
            gap = [v - minimum if math.isfinite(v) and v - minimum > 0 else math.nan
                   for v in values]
            ax.plot(steps, gap, lw=0.8, color="tab:blue", label="loss − f*")
            seen = set()
            for a in found:
                name = a.kind if a.kind not in seen else None
                seen.add(a.kind)
                if a.kind == "stall":
                    ax.axvspan(a.start, a.end, color=colours[a.kind], alpha=0.2, label=name)
                elif a.kind == "divergence":
                    ax.axvline(a.start, color=colours[a.kind], ls="--", label="divergence onset")
                else:
                    ax.axvspan(a.start - 0.5, a.end + 0.5, color=colours[a.kind], alpha=0.6,
                               label=name)
            ax.set_yscale("log")
            ax.set_xlabel("logged step")
            ax.set_ylabel("loss − known minimum")
            ax.set_title(label, fontsize="small")
            ax.legend(fontsize="x-small")
    save_figure(out_dir / "anomalies.png", draw, ncols=len(traces), size=(4.0, 3.2),
                logger=logger)

    findings = []
    for row in convergence_rows:
        mine = [a for a in anomaly_rows if a["run"] == row["run"]]
        parts = []
        for kind in ("divergence", "spike", "stall"):
            of_kind = [a for a in mine if a["kind"] == kind]
            if of_kind:
                first = of_kind[0]
                parts.append(f"{len(of_kind)} {kind}(s), first [{first['start']}, {first['end']}] "
                             f"({first['detail']})")
        text = "; ".join(parts) or "no anomaly"
        reached = (f"reaches {row['target']:.4g} at step {row['steps_to_target']}"
                   if row["steps_to_target"] is not None else
                   f"never reaches {row['target']:.4g} (best {row['best_loss']:.4g})")
        findings.append(f"{row['run']}: {reached}; {text}.")
    write_report(out_dir / "report.md", "Convergence and anomaly detection in training logs", [
        ("Findings", "\n".join(f"- {f}" for f in findings)),
        ("Convergence", markdown_table(convergence_rows)),
        ("Anomalies", markdown_table(anomaly_rows)),
        ("Rules", f"divergence: non-finite or > {cfg.divergence_factor:g} x the initial loss to "
                  "the end, onset = the last new best before; spike: > "
                  f"{cfg.spike_factor:g} x the median of the previous {cfg.window} losses and "
                  f"back under later; stall: {cfg.stall_window}-step windows changing by ≤ "
                  f"{cfg.stall_tol:g} of the remaining gap, at a level ≥ {cfg.stall_gap:g} of the "
                  "gap above the run's best or above the target. Files: logs/*.jsonl, "
                  "anomalies.csv, convergence.csv, anomalies.png."),
    ])
    return {"anomalies": len(anomaly_rows),
            **{f"{r['run']}_anomalies": r["divergence"] + r["spike"] + r["stall"]
               for r in convergence_rows}}
