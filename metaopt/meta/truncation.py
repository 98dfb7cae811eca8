"""Truncation schedules: how long each inner run is, before its task is replaced.

Long inner horizons are cut into segments of ``truncation_length`` steps (truncated BPTT /
truncated ES); the *total* horizon ``N`` of each inner run is drawn from a schedule when the run
starts, after learned_optimization's ``truncation_schedule``:

    constant:     N = length
    log_uniform:  N = round(exp(U(log min_length, log max_length)))

Drawing ``N`` per run (log-uniform) desynchronises the runs of a meta-batch, so every meta-step
sees early and late phases of optimisation, and covers several horizons with one training run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TRUNCATION_SCHEDULES = ("constant", "log_uniform")


@dataclass(frozen=True)
class ConstantHorizon:
    """Every inner run lasts ``length`` steps."""

    length: int

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"length: must be >= 1, got {self.length!r}")

    def sample(self, generator: torch.Generator) -> int:
        return self.length


@dataclass(frozen=True)
class LogUniformHorizon:
    """Inner runs last ``round(exp(U(log min_length, log max_length)))`` steps."""

    min_length: int
    max_length: int

    def __post_init__(self):
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got "
                             f"{self.min_length!r}, {self.max_length!r}")

    def sample(self, generator: torch.Generator) -> int:
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        log_n = math.log(self.min_length) + u * (math.log(self.max_length)
                                                 - math.log(self.min_length))
        return int(min(self.max_length, max(self.min_length, round(math.exp(log_n)))))


def make_horizon(schedule: str, length: int = 100, min_length: int = 10,
                 max_length: int = 1000):
    """The schedule named ``schedule`` (one of ``TRUNCATION_SCHEDULES``) from plain arguments."""
    if schedule == "constant":
        return ConstantHorizon(length)
    if schedule == "log_uniform":
        return LogUniformHorizon(min_length, max_length)
    raise ValueError(f"schedule: must be one of {TRUNCATION_SCHEDULES}, got {schedule!r}")


def segment_length(truncation_length: int, inner_step: int, horizon: int) -> int:
    """Steps in the next segment: ``min(truncation_length, horizon − inner_step)``."""
    return max(0, min(truncation_length, horizon - inner_step))
