"""Grad-mode switches for ``step`` methods that run every training step.

``@torch.no_grad()`` and ``with torch.enable_grad()`` build context objects (about 5 µs and
3 µs a call, measured on the CPU), which a dispatch-bound (tiny) model's step notices; these set
the mode directly and restore the caller's. (``torch.compile`` traces the switch.)
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["call_with_grad", "without_grad"]


def without_grad(step):
    """``@torch.no_grad()`` without its context objects."""
    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        previous = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return step(*args, **kwargs)
        finally:
            torch._C._set_grad_enabled(previous)
    return wrapper


def call_with_grad(fn: Callable[[], Any]) -> Any:
    """``fn()`` under grad mode (``with torch.enable_grad(): fn()``), the caller's mode kept."""
    previous = torch.is_grad_enabled()
    torch._C._set_grad_enabled(True)
    try:
        return fn()
    finally:
        torch._C._set_grad_enabled(previous)
