"""Automated anomaly detection in training logs (a GDSearch
instrument: when an anomaly appears, find and document it).

Three kinds, each found by a rule that is exact on curves built to have them:

* **divergence**: the loss becomes non-finite, or exceeds ``divergence_factor`` × max(L_0, floor)
  and stays above it until the end. Its *onset* is the last step at which the loss set a new
  running best before that crossing — the point from which it only got worse (heavy-ball's
  "unbounded velocity accumulation" starts there).
* **spike**: on the gap g_t = L_t − L* (L* = ``minimum``), log g_t exceeds the median of the
  previous ``window`` log-gaps by more than max(log ``spike_factor``, ``spike_z``·1.4826·MAD):
  at least ×spike_factor *and* well outside the recent noise (minibatch losses near zero jump by
  large factors all the time), for a stretch of consecutive steps after which the loss comes back
  under that bar (a loss that never comes back is a divergence, not a spike).
* **stall**: a plateau (``convergence.detect_plateaus``) whose level is still far from where the
  run ends up — level − best ≥ ``stall_gap`` · (|best − L*| + floor), best = the run's best
  loss — or above ``target`` when one is given. A plateau at the final level is convergence.

``detect_anomalies`` takes a loss sequence; ``load_metric`` / ``detect_anomalies_jsonl`` read
``metrics.jsonl`` as written by ``metaopt.logging.JSONLLogger`` (null = a non-finite value).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .convergence import as_losses, detect_plateaus

__all__ = ["Anomaly", "detect_anomalies", "detect_anomalies_jsonl", "load_metric"]


@dataclass(frozen=True)
class Anomaly:
    kind: str     # "divergence" | "spike" | "stall"
    start: int    # index into the sequence (divergence: the onset)
    end: int      # last index (inclusive; divergence: the first non-finite / over-threshold index)
    value: float  # divergence: loss at ``end``; spike: peak loss; stall: plateau level
    detail: str = ""


def _divergence(values: torch.Tensor, factor: float, floor: float) -> Anomaly | None:
    n = values.numel()
    first = float(values[0])
    bar = factor * max(first, floor) if math.isfinite(first) else -math.inf
    bad = ~torch.isfinite(values) | (values > bar)
    nonfinite = torch.nonzero(~torch.isfinite(values)).flatten()
    if nonfinite.numel():  # once NaN/inf appeared, later finite log lines are no recovery
        bad[int(nonfinite[0]):] = True
    good = torch.nonzero(~bad).flatten()
    crossing = int(good[-1]) + 1 if good.numel() else 0  # bad from here to the end
    if crossing >= n:
        return None
    value = float(values[crossing])
    kind = "non-finite" if not math.isfinite(value) else f"> {factor:g} x initial"
    if crossing == 0:
        return Anomaly("divergence", 0, 0, value, f"{kind} from the first step")
    head = values[:crossing]
    new_best = torch.nonzero(head <= torch.cummin(head, 0).values).flatten()
    onset = int(new_best[-1])
    return Anomaly("divergence", onset, crossing, value,
                   f"{kind} at step {crossing}, growing since step {onset}")


def _spikes(gaps: torch.Tensor, stop: int, factor: float, z: float, window: int) -> list[Anomaly]:
    spikes: list[Anomaly] = []
    t, data = 1, gaps.tolist()
    while t < stop:
        history = torch.tensor([v for v in data[max(0, t - window):t]
                                if math.isfinite(v) and v > 0], dtype=torch.float64)
        if history.numel() < 2:
            t += 1
            continue
        logs = history.log()
        centre = float(logs.median())
        mad = float((logs - centre).abs().median())
        # log-space bar: at least ×factor, and z robust standard deviations of the recent noise
        bar = max(math.log(factor), z * 1.4826 * mad)

        def high(v, centre=centre, bar=bar):
            return math.isfinite(v) and v > 0 and math.log(v) - centre > bar
        if high(data[t]):
            start = t
            while t + 1 < stop and high(data[t + 1]):
                t += 1
            if t + 1 < stop:  # it came back under the bar: a spike, not the divergence
                peak = max(data[start:t + 1])
                spikes.append(Anomaly("spike", start, t, peak,
                                      f"{peak / math.exp(centre):.3g} x the running median"))
        t += 1
    return spikes


def detect_anomalies(losses, *, spike_factor: float = 3.0, spike_z: float = 3.0, window: int = 20,
                     divergence_factor: float = 10.0, stall_window: int = 50,
                     stall_tol: float = 1e-3, stall_gap: float = 0.5,
                     target: float | None = None, minimum: float = 0.0,
                     floor: float = 1e-12) -> list[Anomaly]:
    """Divergence onset, loss spikes and stalls in one loss curve, sorted by start step."""
    for name, value in (("spike_factor", spike_factor), ("divergence_factor", divergence_factor)):
        if not value > 1:
            raise ValueError(f"{name}: must be > 1, got {value}")
    if window < 1 or stall_window < 1:
        raise ValueError("window and stall_window must be >= 1")
    values = as_losses(losses)
    if values.numel() == 0:
        return []
    divergence = _divergence(values, divergence_factor, floor)
    stop = divergence.end if divergence is not None else values.numel()
    found = _spikes(values - minimum, stop, spike_factor, spike_z, window)
    if divergence is not None:
        found.append(divergence)
    healthy = values[:stop]
    if healthy.numel():
        finite = healthy[torch.isfinite(healthy)]
        best = float(finite.min()) if finite.numel() else math.nan
        for p in detect_plateaus(healthy, stall_window, stall_tol, minimum=minimum, floor=floor):
            far = p.level - best >= stall_gap * (abs(best - minimum) + floor)
            if far or (target is not None and p.level > target):
                found.append(Anomaly("stall", p.start, p.end, p.level,
                                     f"{p.length} steps at {p.level:.4g} (best {best:.4g})"))
    return sorted(found, key=lambda a: (a.start, a.kind))


def load_metric(path: str | os.PathLike, key: str = "loss") -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` from a metrics.jsonl (records without it are skipped;
    null → NaN). Lines cut short by a crash are ignored."""
    steps, values = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in record and not isinstance(record[key], (list, dict, str)):
            steps.append(int(record.get("step", len(steps))))
            values.append(math.nan if record[key] is None else float(record[key]))
    return steps, values


def detect_anomalies_jsonl(path: str | os.PathLike, key: str = "loss",
                           **kwargs) -> list[Anomaly]:
    """``detect_anomalies`` on ``key`` of a metrics.jsonl; anomaly start/end are logged steps."""
    steps, values = load_metric(path, key)
    found = detect_anomalies(values, **kwargs)
    return [Anomaly(a.kind, steps[a.start], steps[a.end], a.value, a.detail) for a in found]
