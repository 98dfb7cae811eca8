"""A step's gradient evaluations, counted, and the stability guard's probes of a step's first
stage (``metaopt.hybrid.rule``, ``metaopt.hybrid.stability``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
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
    same step size, so its first stage point is the same.

    Stacked runs: ``probe(take_step, rows)`` and ``reuse(rows)`` evaluate that first stage again
    for the runs ``rows`` alone (counted once) and keep the last probe's for the others, whose
    step size and so whose stage point did not change. Only a ``grad_fn`` with
    ``evaluate_rows(points, rows)`` (``metaopt.meta.native_batched``) can; for another,
    ``rows`` is ignored and every run is evaluated. The stage is put together from the
    evaluations that still hold a run's latest values only, so the backward pass never goes
    through an evaluation every run of which was evaluated again later."""

    def __init__(self, grad_fn: GradFn, params: Sequence[Tensor], first):
        self.grad_fn, self.params, self.first, self.count = grad_fn, params, first, 0
        self.stage = None  # (point, (loss, grads)) of the first evaluation away from θ
        self._probing = self._reusing = False
        self._rows = None  # the runs whose first stage is evaluated again (others: ``stage``)
        self._pieces: list = []  # the stage's evaluations: (rows or None for all, (L, g))
        self._owner = None  # (R,): which piece holds each run's latest first stage

    def __call__(self, points):
        if points is self.params:
            return self.first
        if self._reusing and self._rows is None:
            self._reusing = False
            return self.stage[1]
        self.count += 1
        if self._rows is not None:  # the first stage, again for some runs only
            out = self._merged(points)
            self.stage = (points, out)
        else:
            out = self.grad_fn(points)
            if self.stage is None:
                self.stage = (points, out)
                self._pieces, self._owner = [(None, out)], None
        self._reusing = False
        if self._probing:
            raise _StageProbed
        return out

    def _merged(self, points):
        """The stage's ``(L, g)`` with the runs ``_rows`` evaluated again at ``points``."""
        rows, self._rows = self._rows, None
        self._pieces.append((rows, self.grad_fn.evaluate_rows(points, rows)))
        loss = self._pieces[0][1][0]
        if self._owner is None:
            self._owner = torch.zeros(len(loss), dtype=torch.long, device=loss.device)
        self._owner[rows] = len(self._pieces) - 1
        live = self._owner.unique().tolist()
        # (a base no run reads: its values are all replaced, its graph left out)
        loss, grads = self._pieces[0][1] if live[0] == 0 else (
            loss.detach(), [g.detach() for g in self._pieces[0][1][1]])
        for j in live:
            if j == 0:
                continue
            held, (piece_loss, piece_grads) = self._pieces[j]
            keep = (self._owner.index_select(0, held) == j).nonzero().flatten()
            at = held.index_select(0, keep)
            loss = loss.index_copy(0, at, piece_loss.index_select(0, keep).to(loss.dtype))
            grads = [g.index_copy(0, at, n.index_select(0, keep).to(g.dtype))
                     for g, n in zip(grads, piece_grads)]
        return loss, grads

    def _restrict(self, rows: Tensor | None) -> None:
        partial = rows is not None and self.stage is not None and \
            getattr(self.grad_fn, "evaluate_rows", None) is not None and \
            len(rows) < len(self.stage[1][0])
        self._rows = rows if partial else None

    def probe(self, take_step, rows: Tensor | None = None):
        """``take_step()`` up to its first stage point: None once that is evaluated (in
        ``stage``), or the step's result when it evaluates nowhere but θ (one stage).
        ``rows``: only these runs' stage points moved since the last probe."""
        self._restrict(rows)
        if self._rows is None:
            self.stage = None
        self._probing = True
        try:
            return take_step()
        except _StageProbed:
            return None
        finally:
            self._probing = False
            self._rows = None

    def reuse(self, rows: Tensor | None = None) -> None:
        """The next first stage is the last probe's (``rows``: but for these runs, whose step
        size changed since: evaluated again)."""
        self._restrict(rows)
        self._reusing = rows is None or self._rows is not None  # (else: all evaluated again)
