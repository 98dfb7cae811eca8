"""Per-step traces of what an optimizer's controller decided (for plots and W&B charts).

``optimizer_trace(opt)`` reads, after a step, whatever the optimizer exposes:

* ``hyperparams`` (``GARO``): the controller's ``lr_t``, ``momentum_t``, ``wd_t`` (the mean over
  segments when the granularity is per group or per tensor);
* ``last_curvature`` + ``effective_hyperparameters`` (``DCAO``): the probe's ``spectral_radius``
  and ``spectral_gap`` and the scheduled ``lr_t``, ``momentum_t``, ``wd_t`` of the first group;
* ``mode`` (``HybridGDODE``, which switches between a GD and an ODE regime): recorded as given
  ("gd" / "ode"), with the numbers of its ``last_trace`` (gate, switching criteria, gradient
  evaluations).

``TracingFactory`` wraps a harness factory: every optimizer it builds gets a
``register_step_post_hook`` that appends ``optimizer_trace`` to a fresh trace, one per run, in
build order. The hook runs inside ``step()``, so a traced run's ``ms_per_step`` includes a few
microseconds of reading (a host sync on GPU); trace only when that does not matter.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["TracingFactory", "optimizer_trace", "traceable"]


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        values = [float(v) for v in value if v is not None]
        return sum(values) / len(values) if values else None
    return float(value)


def traceable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` exposes anything ``optimizer_trace`` reads."""
    return any(hasattr(optimizer, name)
               for name in ("hyperparams", "last_curvature", "mode", "last_trace"))


def optimizer_trace(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The controller's current decisions as plain numbers (see the module doc); {} if none."""
    out: dict[str, Any] = {}
    hyper = getattr(optimizer, "hyperparams", None)
    if isinstance(hyper, dict):
        for key, name in (("lr", "lr_t"), ("momentum", "momentum_t"), ("weight_decay", "wd_t")):
            value = _scalar(hyper.get(key))
            if value is not None:
                out[name] = value
    probe = getattr(optimizer, "last_curvature", None)
    if probe is not None:
        out["spectral_radius"] = float(probe.spectral_radius)
        out["spectral_gap"] = float(probe.spectral_gap)
    if hasattr(optimizer, "effective_hyperparameters") and optimizer.param_groups:
        lr, momentum, weight_decay = optimizer.effective_hyperparameters(optimizer.param_groups[0])
        out.update(lr_t=float(lr), momentum_t=float(momentum), wd_t=float(weight_decay))
    mode = getattr(optimizer, "mode", None)
    if mode is not None:
        out["mode"] = mode if isinstance(mode, str) else _scalar(mode)
    last = getattr(optimizer, "last_trace", None)  # HybridGDODE: gate, criteria, evaluations
    if isinstance(last, dict):
        out.update({k: float(v) for k, v in last.items()
                    if k not in out and isinstance(v, (int, float))})
    return out


class TracingFactory:
    """``factory(params)`` as given, plus a per-step trace of each optimizer it builds.

    ``traces`` holds one ``{name: [value per step]}`` per built optimizer, in build order (an
    optimizer that exposes nothing gets an empty trace). ``label``, ``hyperparameters`` and
    ``with_hyperparameters`` are those of the wrapped factory.
    """

    def __init__(self, factory: Any):
        self.factory = factory
        self.label = getattr(factory, "label", None)
        self.hyperparameters = dict(getattr(factory, "hyperparameters", {}))
        self.traces: list[dict[str, list[Any]]] = []

    def __call__(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        optimizer = self.factory(params)
        trace: dict[str, list[Any]] = {}
        self.traces.append(trace)
        if traceable(optimizer):
            def record(opt, args, kwargs):
                for key, value in optimizer_trace(opt).items():
                    trace.setdefault(key, []).append(value)
            optimizer.register_step_post_hook(record)
        return optimizer

    def with_hyperparameters(self, label: str | None = None, **overrides: Any) -> TracingFactory:
        return TracingFactory(self.factory.with_hyperparameters(label, **overrides))
