"""Anomaly detection on synthetic loss curves whose anomalies are known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from metaopt.analysis.anomalies import detect_anomalies, detect_anomalies_jsonl, load_metric
from metaopt.logging import JSONLLogger


def _decay(n=400, rate=100.0):
    return torch.exp(-torch.arange(n, dtype=torch.float64) / rate) + 0.01


def _noisy(curve, seed=0, amplitude=0.05):
    g = torch.Generator().manual_seed(seed)
    noise = 2 * torch.rand(curve.shape, generator=g, dtype=curve.dtype) - 1
    return curve * (1 + amplitude * noise)


def test_clean_and_noisy_decay_have_no_anomaly():
    assert detect_anomalies(_decay()) == []
    assert detect_anomalies(_noisy(_decay())) == []


def test_spike_located_exactly():
    curve = _noisy(_decay())
    curve[150:153] *= 20.0
    curve[300] *= 8.0
    found = detect_anomalies(curve)
    assert [(a.kind, a.start, a.end) for a in found] == [("spike", 150, 152), ("spike", 300, 300)]
    assert found[0].value == pytest.approx(float(curve[150:153].max()))


@pytest.mark.parametrize("tail", ["overflow", "nan_after_inf", "large"])
def test_divergence_onset_and_crossing(tail):
    onset = 120
    head = _noisy(_decay(onset + 1), seed=1, amplitude=0.01)
    head = torch.cummin(head, 0).values  # strictly a new best at the onset
    growth = head[-1] * 1.3 ** torch.arange(1, 400, dtype=torch.float64)
    curve = torch.cat([head, growth])
    bar = 10 * float(curve[0])
    crossing = int(torch.nonzero(curve > bar)[0])
    if tail == "overflow":
        curve = torch.cat([curve[:crossing + 5], torch.tensor([math.inf] * 3, dtype=torch.float64)])
    elif tail == "nan_after_inf":
        curve = torch.cat([curve[:crossing], torch.tensor([math.inf, math.nan, 1.0])])
    found = detect_anomalies(curve)
    assert [a.kind for a in found] == ["divergence"]
    assert (found[0].start, found[0].end) == (onset, crossing)


def test_overflow_straight_from_a_healthy_run():
    curve = torch.cat([_decay(200), torch.tensor([math.inf])])
    (found,) = detect_anomalies(curve)
    assert (found.kind, found.start, found.end) == ("divergence", 199, 200)
    assert found.value == math.inf


def test_stall_versus_convergence():
    t = torch.arange(600, dtype=torch.float64)
    stalled = torch.where(t < 100, 1.0 - 0.005 * t,
                          torch.where(t < 300, 0.5, 0.5 * 0.98 ** (t - 299)))
    found = detect_anomalies(stalled, stall_window=50)
    assert [(a.kind, a.start, a.end) for a in found] == [("stall", 100, 299)]
    # Converging to a final level and staying there is no stall...
    converged = torch.where(t < 100, 1.0 - 0.005 * t, torch.full_like(t, 0.5))
    assert detect_anomalies(converged) == []
    # ...unless the level is above the target the caller asked for.
    (stall,) = detect_anomalies(converged, target=0.1)
    assert (stall.kind, stall.start, stall.end) == ("stall", 100, 599)


def test_metrics_jsonl_round_trip(tmp_path):
    curve = _decay(300)
    curve[100] *= 30
    curve = torch.cat([curve, torch.tensor([math.nan])])  # JSONL writes it as null
    logger = JSONLLogger(tmp_path / "metrics.jsonl")
    for i, value in enumerate(curve.tolist()):
        logger.log({"loss": value, "other": 1.0}, step=10 * i)
        if i % 50 == 0:
            logger.log({"eval": 0.0}, step=10 * i)
    logger.close()
    steps, values = load_metric(tmp_path / "metrics.jsonl", "loss")
    assert len(values) == 301 and steps[:3] == [0, 10, 20] and math.isnan(values[-1])
    found = detect_anomalies_jsonl(tmp_path / "metrics.jsonl", "loss")
    assert [(a.kind, a.start, a.end) for a in found] == [("spike", 1000, 1000),
                                                         ("divergence", 2990, 3000)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="spike_factor"):
        detect_anomalies([1.0, 2.0], spike_factor=1.0)


def test_heavy_minibatch_noise_is_not_a_spike_but_a_real_jump_is():
    """Log-uniform noise of ±1.5 nats (×4.5 either way, like minibatch losses near zero) never
    leaves the MAD bar (3 · 1.4826 · 0.75 ≈ 3.3 nats); a ×1000 jump does."""
    g = torch.Generator().manual_seed(4)
    noise = (3 * torch.rand(400, generator=g, dtype=torch.float64) - 1.5).exp()
    curve = 0.02 * noise
    assert detect_anomalies(curve) == []
    curve[250] *= 1000
    assert [(a.kind, a.start, a.end) for a in detect_anomalies(curve)] == [("spike", 250, 250)]
