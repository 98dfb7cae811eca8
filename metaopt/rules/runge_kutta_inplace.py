"""The in-place schedule of an explicit Runge–Kutta step, for the runtime optimizer.

Same step as ``explicit_rk_step`` (Hairer, Nørsett & Wanner's explicit Runge–Kutta methods on
the gradient flow, slopes ``k_i = ∇L(y_i) + wd·y_i``, step h = lr)::

    y_i = θ − h · Σ_{j<i} a_ij k_j,      θ_next = θ − h · Σ_i b_i k_i

with the live parameters as the stage points, in as few passes over memory as the tableau
allows (on the 1M-parameter benchmark MLP a pass right after a closure costs 3–9% of that
closure on one CPU core: ``scripts/benchmarks/rk.py``):

* the caller snapshots θ (the base of the stage points, and what a failed or refused step
  restores); stage 1's point is then one in-place add on the live tensors, and each later one
  a single ``θ + (−h a) k`` pass written straight into them;
* the weighted sum of slopes is started only when its second term arrives, as
  ``k_w + (c_v / c_w) k_v`` in one pass (never ``c_v k_v`` alone first), kept as
  ``Σ_j (c_j / c_w) k_j`` and scaled by ``−h c_w`` in the final pass. That pass is either
  ``θ − h Σ b_j k_j`` written from θ (c = b), or an in-place add onto the last stage point
  still in the live tensors, ``y_last − h Σ (b_j − a_last,j) k_j`` (c = b − a_last: the same
  point), whichever costs fewer passes (classic RK4, Heun, Ralston: the in-place one);
* the first gradient (``p.grad`` at θ after the step) is only read, never copied. Instead the
  step keeps the number of gradient-sized buffers alive constant from one closure to the next
  (the adapter's first included): the first gradient takes the place of a ``spare`` set, a sum
  begun in a slope's own tensors (when no later stage point reads that slope) takes the place of
  the ``total`` set, every other slope is released as soon as nothing reads it, and the last
  closure's tensors become the next step's spare. One buffer more in a later closure than in
  the first made glibc return and re-fault heap memory every step (measured: hundreds of page
  faults per step, costing more than the copy it saved).

The plan is derived from the tableau once (``InPlaceSchedule.of``); ``run`` executes it. The
pure rule and this schedule sum in different orders; ``tests/rules/test_runge_kutta_inplace.py``
and ``tests/rules/test_runge_kutta.py`` hold them equal in float64 for every fixed tableau.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction as F

import torch
from torch import Tensor

from .base import TensorList
from .tableaus import ButcherTableau

Terms = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class InPlaceSchedule:
    """What happens after slope ``k_t`` arrives, for each stage t (derived from a tableau).

    ``points[t]``: the nonzero ``(j, a_{t+1,j})`` of stage t+1's point (empty for the last
    stage); with the final pass's weights c (b, or b − a_last when ``from_point``):
    ``start``: ``(w, v, c_v / c_w)`` — when ``k_w`` arrives the sum starts as
    ``k_w + (c_v / c_w) k_v`` (None when one slope alone is weighted: ``lone`` names it);
    ``folds[t]``: ``(t, c_t / c_w)`` added to the sum at time t; ``weight``: ``c_w`` (or the
    lone slope's c); ``releases[t]``: slopes nothing reads after time t.
    """

    stages: int
    points: tuple[Terms, ...]
    start: tuple[int, int, float] | None
    lone: int | None
    weight: float
    folds: tuple[Terms, ...]
    releases: tuple[tuple[int, ...], ...]
    in_place: bool  # the sum starts in k_w's own tensors (no stage point reads k_w after)
    from_point: bool  # the final pass adds to the last stage point (weights b − a_last)

    @classmethod
    def of(cls, tableau: ButcherTableau) -> InPlaceSchedule:
        s, a, b = tableau.stages, tableau.a, tableau.b
        points = tuple(tuple((j, a[t + 1][j]) for j in range(t + 1) if a[t + 1][j] != 0.0)
                       if t + 1 < s else () for t in range(s))
        # θ_next = θ − h Σ b_j k_j (an out-of-place pass from θ), or, the same point, from the
        # last stage point still in the live tensors: y_last − h Σ (b_j − a_last,j) k_j (an
        # in-place pass); whichever costs fewer passes (in-place ≈ 3/4 of an out-of-place one).
        exact_b = [F(x) for x in b]  # weights and their ratios rounded once, from exact values
        exact_d = [bj - F(aj) for bj, aj in zip(exact_b, a[s - 1] + (0.0,))]
        n_b, n_d = sum(x != 0 for x in exact_b), sum(x != 0 for x in exact_d)
        from_point = 0 < n_d and 3 + 3 * (n_d - 1) < 4 + 3 * (n_b - 1)
        c = exact_d if from_point else exact_b
        weighted = [j for j in range(s) if c[j] != 0]
        if len(weighted) == 1:
            start, lone, weight = None, weighted[0], float(c[weighted[0]])
        else:
            (v, w), lone, weight = weighted[:2], None, float(c[weighted[1]])
            start = (w, v, float(c[v] / c[w]))
        folds = tuple(((t, float(c[t] / c[weighted[1]])),) if t in weighted[2:] else ()
                      for t in range(s))
        # a slope is released once its arrival, its last stage-point read (stage i's point is
        # written at time i − 1) and its entry into the sum are all past; the lone one is read
        # by the final pass
        last_use = [max([j] + [i - 1 for i in range(j + 1, s) if a[i][j] != 0.0]
                        + ([start[0]] if start and j in start[:2] else []))
                    for j in range(s)]
        releases = tuple(tuple(j for j in range(s) if last_use[j] == t and j != lone)
                         for t in range(s))
        in_place = start is not None and last_use[start[0]] <= start[0]
        return cls(s, points, start, lone, weight, folds, releases, in_place, from_point)

    def run(self, params: list[Tensor], evaluate: Callable[[], tuple[Tensor, TensorList]],
            first_grads: Sequence[Tensor], neg_h: Sequence[float],
            weight_decay: Sequence[float], theta: TensorList, spare: list, total: list) -> None:
        """Move ``params`` (live, holding θ) to θ_next in place.

        ``evaluate()`` returns (loss, grads) at wherever ``params`` are, grads owned by the
        caller; ``first_grads`` is the gradient at θ (only read); ``neg_h`` and
        ``weight_decay`` hold one float per tensor; ``theta`` holds a copy of θ. ``spare`` and
        ``total`` are slots (lists, empty or one tensor per parameter) that keep the number of
        gradient-sized buffers alive constant from one closure to the next: the first
        gradient takes spare's place, a sum begun in a slope's own tensors takes total's, and
        the last closure's tensors become the next step's spare.
        """
        alpha = neg_h[0]
        uniform = neg_h.count(alpha) == len(neg_h)  # one step size: foreach ops, scalar alpha
        decay = any(weight_decay)
        slopes: list = [_decayed(first_grads, params, weight_decay) if decay else first_grads]
        slopes += [None] * (self.stages - 1)
        spare.clear()  # the first gradient, kept whole through the step, takes its place
        acc = None
        start_time = self.start[0] if self.start is not None else -1
        for t in range(self.stages):
            if t > 0:  # (no local name may keep a slope alive into the next closure)
                slopes[t] = evaluate()[1]
                if decay:
                    _decayed_(slopes[t], params, weight_decay)
                points = self.points[t]
                if points:  # θ − h a k straight into the live tensors: one pass
                    j, a_ij = points[0]
                    _add_into(params, theta, slopes[j], neg_h, a_ij, uniform)
                    points = points[1:]
                elif t + 1 < self.stages:
                    torch._foreach_copy_(params, theta)  # a stage point at θ itself
            else:  # stage 1: the live tensors still hold θ
                points = self.points[0]
            for j, a_ij in points:
                if uniform:
                    torch._foreach_add_(params, slopes[j], alpha=alpha * a_ij)
                else:
                    _axpy(params, slopes[j], neg_h, a_ij)
            if t == start_time:
                w, v, ratio = self.start
                if self.in_place:  # no stage point reads k_w any more: sum in its tensors
                    torch._foreach_add_(slopes[w], slopes[v], alpha=ratio)
                    if t < self.stages - 1:  # held into later closures: in total's place
                        total[:] = slopes[w]
                    acc = slopes[w]
                else:
                    if len(total) != len(params):
                        total[:] = [torch.empty_like(p) for p in params]
                    for o, x, y in zip(total, slopes[w], slopes[v]):
                        torch.add(x, y, alpha=ratio, out=o)
                    acc = total
            for j, ratio in self.folds[t]:
                torch._foreach_add_(acc, slopes[j], alpha=ratio)
            if t == self.stages - 1 and t > 0:
                spare[:] = slopes[t]  # the next step's spare (its values are not read)
            for j in self.releases[t]:
                slopes[j] = None
        last = slopes[self.lone] if acc is None else acc
        if not self.from_point:
            _add_into(params, theta, last, neg_h, self.weight, uniform)
        elif uniform:
            torch._foreach_add_(params, last, alpha=alpha * self.weight)
        else:
            _axpy(params, last, neg_h, self.weight)


def _decayed(grads: Sequence[Tensor], params: Sequence[Tensor],
             weight_decay: Sequence[float]) -> TensorList:
    """k = g + wd·y out of place where wd ≠ 0 (the caller's tensors stay the gradient)."""
    return [g if wd == 0.0 else g + wd * p for g, p, wd in zip(grads, params, weight_decay)]


def _decayed_(grads: TensorList, params: Sequence[Tensor],
              weight_decay: Sequence[float]) -> TensorList:
    """k = g + wd·y in place: the closure's fresh tensors, owned here."""
    for g, p, wd in zip(grads, params, weight_decay):
        if wd != 0.0:
            g.add_(p, alpha=wd)
    return grads


def _axpy(ys: TensorList, xs: TensorList, neg_h: Sequence[float], coeff: float) -> None:
    """ys += (−h·coeff) · xs per tensor (one step size per tensor)."""
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
