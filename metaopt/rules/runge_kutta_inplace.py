"""The in-place schedule of an explicit Runge–Kutta step, for the runtime optimizer.

Same step as ``explicit_rk_step`` (Hairer, Nørsett & Wanner's explicit Runge–Kutta methods on
the gradient flow, slopes ``k_i = ∇L(y_i) + wd·y_i``, step h = lr)::

    y_i = θ − h · Σ_{j<i} a_ij k_j,      θ_next = θ − h · Σ_i b_i k_i

with the parameters themselves as the stage points, written in as few passes over memory as the
tableau allows (on a 1M-parameter model every pass costs ~1% of a gradient evaluation):

* θ is copied once, by the caller (the snapshot the stage points and the update are taken
  from, and what a refused step restores); stage 1's point is then an in-place add on the live
  tensors;
* Σ_i b_i k_i is never built in a buffer of its own. It is carried in the tensors of one slope
  ``k_c`` (the *carrier*: the first stage after the first, ``b_c ≠ 0``, whose slope no later
  stage point reads) as ``k_c + Σ_{j≠c} (b_j / b_c) k_j``, one in-place add per slope, and
  θ_next = θ − h b_c · carrier in one pass. The carrier is a fresh gradient the closure
  handed over, so nothing is scaled or copied to start the sum;
* the first slope's gradient (``p.grad`` at θ after the step) is only read, never copied;
* a slope is released as soon as no stage point and no fold reads it, so backward can reuse
  its memory in the next closure.

The plan is derived from the tableau once (``InPlaceSchedule.of``); ``run`` executes it. The
pure rule and this schedule sum in different orders; ``tests/rules/test_runge_kutta.py`` holds
them equal in float64 for every fixed tableau.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import TensorList
from .tableaus import ButcherTableau

Terms = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class InPlaceSchedule:
    """What happens after slope ``k_t`` arrives, for each stage t (all derived from a tableau).

    ``points[t]``: the nonzero ``(j, a_{t+1,j})`` of stage t+1's point (empty for the last
    stage); ``carrier``: the stage whose slope carries the weighted sum (None: only ``b_0 ≠ 0``);
    ``folds[t]``: ``(j, b_j / b_c)`` added into the carrier at time t; ``releases[t]``: slopes
    no longer read after time t.
    """

    stages: int
    b: tuple[float, ...]
    points: tuple[Terms, ...]
    carrier: int | None
    folds: tuple[Terms, ...]
    releases: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tableau: ButcherTableau) -> InPlaceSchedule:
        s, a, b = tableau.stages, tableau.a, tableau.b
        points = tuple(tuple((j, a[t + 1][j]) for j in range(t + 1) if a[t + 1][j] != 0.0)
                       if t + 1 < s else () for t in range(s))
        # the last time a stage point reads k_j (stage i's point is written at time i − 1)
        last_read = [max([i - 1 for i in range(j + 1, s) if a[i][j] != 0.0], default=-1)
                     for j in range(s)]
        # The carrier is added to in place, so it starts carrying once no stage point reads it
        # any more: the weighted slope whose reads end first (the last stage's always qualify).
        start = {c: max(c, last_read[c]) for c in range(1, s) if b[c] != 0.0}
        carrier = min(start, key=lambda c: (start[c], c)) if start else None
        folds, releases, folded, released = [], [], set(), set()
        for t in range(s):
            fold = ()
            if carrier is not None and t >= start[carrier]:
                fold = tuple((j, b[j] / b[carrier]) for j in range(t + 1)
                             if b[j] != 0.0 and j != carrier and j not in folded)
                folded.update(j for j, _ in fold)
            folds.append(fold)
            # k_0 is the caller's gradient (kept whole); the carrier lives to the end
            done = tuple(j for j in range(1, t + 1) if j != carrier and j not in released
                         and last_read[j] <= t and (b[j] == 0.0 or j in folded))
            released.update(done)
            releases.append(done)
        return cls(s, tuple(b), points, carrier, tuple(folds), tuple(releases))

    def run(self, params: list[Tensor], evaluate: Callable[[], tuple[Tensor, TensorList]],
            first_grads: Sequence[Tensor], neg_h: Sequence[float],
            weight_decay: Sequence[float], theta: TensorList) -> None:
        """Move ``params`` (live, holding θ) to θ_next in place.

        ``evaluate()`` returns (loss, grads) at wherever ``params`` are, grads owned by the
        caller; ``first_grads`` is the gradient at θ (read only); ``neg_h`` and
        ``weight_decay`` hold one float per tensor; ``theta`` already holds a copy of θ (the
        caller's snapshot, which it restores if the step fails).
        """
        uniform = all(h == neg_h[0] for h in neg_h)
        slopes: dict[int, TensorList] = {0: _decayed_first(first_grads, params, weight_decay)}
        for t in range(self.stages):
            if t > 0:
                _, grads = evaluate()
                for g, p, wd in zip(grads, params, weight_decay):
                    if wd != 0.0:  # fresh tensors, owned here: decay in place
                        g.add_(p, alpha=wd)
                slopes[t] = grads
                grads = None
            for n, (j, a_ij) in enumerate(self.points[t]):
                if n == 0 and t > 0:  # θ − h a k straight into the live tensors: one pass
                    _add_into(params, theta, slopes[j], neg_h, a_ij, uniform)
                else:  # (stage 1: the live tensors still hold θ)
                    _axpy(params, slopes[j], neg_h, a_ij, uniform)
            if t > 0 and not self.points[t] and t + 1 < self.stages:
                torch._foreach_copy_(params, theta)  # a stage point at θ itself
            for j, ratio in self.folds[t]:
                torch._foreach_add_(slopes[self.carrier], slopes[j], alpha=ratio)
            for j in self.releases[t]:
                slopes.pop(j, None)
        if self.carrier is None:
            _add_into(params, theta, slopes[0], neg_h, self.b[0], uniform)
        else:
            _add_into(params, theta, slopes[self.carrier], neg_h, self.b[self.carrier], uniform)


def _decayed_first(grads: Sequence[Tensor], params: Sequence[Tensor],
                   weight_decay: Sequence[float]) -> TensorList:
    """k_0 = g_0 + wd·θ: the caller's gradient where wd = 0, a new tensor elsewhere."""
    return [g if wd == 0.0 else g + wd * p for g, p, wd in zip(grads, params, weight_decay)]


def _axpy(ys: TensorList, xs: TensorList, neg_h: Sequence[float], coeff: float,
          uniform: bool) -> None:
    """ys += (−h·coeff) · xs per tensor."""
    if uniform:
        torch._foreach_add_(ys, xs, alpha=neg_h[0] * coeff)
    else:
        for y, x, h in zip(ys, xs, neg_h):
            y.add_(x, alpha=h * coeff)


def _add_into(out: TensorList, base: TensorList, xs: TensorList, neg_h: Sequence[float],
              coeff: float, uniform: bool) -> None:
    """out = base + (−h·coeff) · xs per tensor, one pass (no foreach op writes an ``out=``)."""
    if uniform:
        alpha = neg_h[0] * coeff
        for o, b, x in zip(out, base, xs):
            torch.add(b, x, alpha=alpha, out=o)
    else:
        for o, b, x, h in zip(out, base, xs, neg_h):
            torch.add(b, x, alpha=h * coeff, out=o)
