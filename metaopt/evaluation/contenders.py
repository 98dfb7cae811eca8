"""Tuning-free optimizers a user would pick instead of a learned one, at their documented defaults.

They come from their authors' packages (the ``bench`` extra: ``pip install 'metaopt[bench]'``)
and are registered by name in ``make_optimizer`` (``metaopt.evaluation.optimizers``):

    prodigy             Prodigy(lr=1.0)                       Mishchenko & Defazio 2023, prodigyopt
    prodigy_cosine      Prodigy(lr=1.0), lr multiplied by ½(1 + cos(π t / T)) over the horizon T
                        (torch's CosineAnnealingLR(T_max=T) stepped after every step)
    dadapt_adam         DAdaptAdam(lr=1.0)                    Defazio & Mishchenko 2023, dadaptation
    dog                 DoG(lr=1.0, reps_rel=1e-6)            Ivgi, Hinder & Carmon 2023, dog
                        (package dog-optimizer; its iterate averaging is optional: off)
    schedulefree_adamw  AdamWScheduleFree(lr=0.0025)          Defazio et al. 2024, schedulefree

D-Adaptation and Prodigy estimate the distance to the solution, d_t, online and step with
lr · d_t; DoG steps with η_t = max_{i≤t} ‖x_i − x_0‖ / √(Σ_{i≤t} ‖g_i‖²). Schedule-free AdamW
evaluates gradients at an interpolation y_t of its iterate z_t and the average x_t; losses must
be measured at x_t, i.e. in ``optimizer.eval()`` mode (the package's documentation), which the
evaluation harness does for any optimizer exposing ``train()``/``eval()``
(``evaluation_mode``). Our subclass only puts it in train mode at construction, so a plain
``step()`` loop works.

Packages are imported when a contender is built, so ``metaopt.evaluation`` imports without them.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["CONTENDERS", "contender_names", "evaluation_mode", "resolve_contender"]


def _package_class(module: str, attribute: str, package: str) -> type[torch.optim.Optimizer]:
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        raise ValueError(f"optimizer {attribute} needs the {package!r} package: "
                         f"pip install 'metaopt[bench]' ({error})") from error


def _prodigy() -> type:
    return _package_class("prodigyopt", "Prodigy", "prodigyopt")


def _dadapt_adam() -> type:
    return _package_class("dadaptation", "DAdaptAdam", "dadaptation")


def _dog() -> type:
    return _package_class("dog", "DoG", "dog-optimizer")


@functools.cache  # one class per process: factories built twice compare equal
def _schedulefree_adamw() -> type:
    base = _package_class("schedulefree", "AdamWScheduleFree", "schedulefree")

    class ScheduleFreeAdamW(base):
        """``schedulefree.AdamWScheduleFree`` put in train mode at construction (module doc)."""

        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            self.train()

    ScheduleFreeAdamW.__qualname__ = "ScheduleFreeAdamW"  # readable in tables and errors
    return ScheduleFreeAdamW


@functools.cache
def _prodigy_cosine() -> type:
    base = _prodigy()

    class ProdigyCosine(base):
        """Prodigy whose lr follows ``CosineAnnealingLR(T_max=total_steps)``, stepped after every
        optimizer step; past ``total_steps`` the factor stays at 0 (the annealing would rise
        again), so a run longer than its stated horizon stops moving instead of restarting."""

        def __init__(self, params, *, total_steps: int, **kwargs):
            if not (isinstance(total_steps, int) and total_steps >= 1):
                raise ValueError(f"total_steps: must be an int >= 1, got {total_steps!r}")
            super().__init__(params, **kwargs)
            self.total_steps = total_steps
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self, T_max=total_steps)

        def step(self, closure=None):
            loss = super().step(closure)
            if self.scheduler.last_epoch < self.total_steps:
                self.scheduler.step()
            return loss

    ProdigyCosine.__qualname__ = "ProdigyCosine"
    return ProdigyCosine


#: name -> (class loader, documented defaults); the loader imports the package on first use
CONTENDERS: dict[str, tuple[Callable[[], type], dict[str, Any]]] = {
    "prodigy": (_prodigy, {"lr": 1.0}),
    "prodigy_cosine": (_prodigy_cosine, {"lr": 1.0, "total_steps": 1000}),
    "dadapt_adam": (_dadapt_adam, {"lr": 1.0}),
    "dog": (_dog, {}),
    "schedulefree_adamw": (_schedulefree_adamw, {}),
}


def contender_names() -> list[str]:
    return sorted(CONTENDERS)


def resolve_contender(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``(class, defaults)`` of contender ``name``; ValueError if unknown or not installed."""
    if name not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; known: {', '.join(contender_names())}")
    loader, defaults = CONTENDERS[name]
    return loader(), dict(defaults)


@contextlib.contextmanager
def evaluation_mode(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Parameters at the point to evaluate while inside: ``optimizer.eval()`` then
    ``optimizer.train()`` for optimizers with both (schedule-free methods keep their evaluation
    point apart from the gradient point); a no-op for every other optimizer."""
    switch = callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None))
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()
