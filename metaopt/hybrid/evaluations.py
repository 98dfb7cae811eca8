"""A step's gradient evaluations, counted, and the stability guard's probes of a step's first
stage (``metaopt.hybrid.rule``, ``metaopt.hybrid.stability``)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..rules.base import GradFn

__all__ = ["CountedGradFn"]


class _StageProbed(Exception):
    """A probed step stops here: its first stage point is evaluated (``CountedGradFn.probe``)."""


class CountedGradFn:
    """``grad_fn`` that returns the cached first evaluation at θ and counts the others.

    ``probe(take_step)`` runs a step only up to its first evaluation away from θ (the first
    stage point, where the guard reads the curvature); after ``reuse()`` the next step's first
    evaluation away from θ returns that one again, uncounted: the step it starts is taken at the
    same step size, so its first stage point is the same."""

    def __init__(self, grad_fn: GradFn, params: Sequence[Tensor], first):
        self.grad_fn, self.params, self.first, self.count = grad_fn, params, first, 0
        self.stage = None  # (point, (loss, grads)) of the first evaluation away from θ
        self._probing = self._reusing = False

    def __call__(self, points):
        if points is self.params:
            return self.first
        if self._reusing:
            self._reusing = False
            return self.stage[1]
        self.count += 1
        out = self.grad_fn(points)
        if self.stage is None:
            self.stage = (points, out)
        if self._probing:
            raise _StageProbed
        return out

    def probe(self, take_step):
        """``take_step()`` up to its first stage point: None once that is evaluated (in
        ``stage``), or the step's result when it evaluates nowhere but θ (one stage)."""
        self.stage, self._probing = None, True
        try:
            return take_step()
        except _StageProbed:
            return None
        finally:
            self._probing = False

    def reuse(self) -> None:
        self._reusing = True
