"""Butcher tableaus as data (Hairer, Nørsett & Wanner; Butcher).

An explicit s-stage method for y' = f(y) with step h::

    k_i = f(y0 + h * sum_{j<i} a[i][j] * k_j),   y1 = y0 + h * sum_i b[i] * k_i

Embedded pairs carry ``b_error = b - b_hat`` so that ``h * sum_i b_error[i] k_i`` estimates the
local error of the lower-order solution (torchdiffeq's ``c_error``), and ``order`` is the order
used in the step-size controller's exponent 1/order (torchdiffeq's convention: 5 for dopri5, 3 for
bosh3).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F


@dataclass(frozen=True)
class ButcherTableau:
    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # row i holds a[i][0..i-1]; row 0 is empty
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """First-same-as-last: the last stage is evaluated at y1, so it is the next step's k_1."""
        return self.c[-1] == 1.0 and self.a[-1] == self.b[:-1] and self.b[-1] == 0.0

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"tableau {self.name}: c, a and b must have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name}: row {i} of a must have {i} entries")
            if abs(sum(row) - self.c[i]) > 1e-14:
                raise ValueError(f"tableau {self.name}: row sums of a must equal c (row {i})")
        if abs(sum(self.b) - 1.0) > 1e-14:
            raise ValueError(f"tableau {self.name}: weights b must sum to 1")


def _tableau(name, order, c, a, b, b_hat=None) -> ButcherTableau:
    # Coefficients are written as exact fractions and rounded once, so float64 tests see the
    # correctly rounded values and b - b_hat is formed exactly.
    def f(xs):
        return tuple(float(F(x)) for x in xs)

    b_error = None if b_hat is None else tuple(float(F(x) - F(y)) for x, y in zip(b, b_hat))
    return ButcherTableau(name, order, f(c), tuple(f(row) for row in a), f(b), b_error)


TABLEAUS: dict[str, ButcherTableau] = {t.name: t for t in [
    _tableau("euler", 1, ["0"], [[]], ["1"]),
    _tableau("midpoint", 2, ["0", "1/2"], [[], ["1/2"]], ["0", "1"]),
    # Heun's method (torchdiffeq's heun2), the RK2 of the gradient-flow RK optimizers: k2 at the
    # Euler point, trapezoid weights.
    _tableau("heun", 2, ["0", "1"], [[], ["1"]], ["1/2", "1/2"]),
    # Ralston's RK2: a21 = 2/3, b = (1/4, 3/4); minimal truncation-error bound.
    _tableau("ralston", 2, ["0", "2/3"], [[], ["2/3"]], ["1/4", "3/4"]),
    _tableau("heun3", 3, ["0", "1/3", "2/3"], [[], ["1/3"], ["0", "2/3"]], ["1/4", "0", "3/4"]),
    # Classic RK4.
    _tableau("rk4", 4, ["0", "1/2", "1/2", "1"], [[], ["1/2"], ["0", "1/2"], ["0", "0", "1"]],
             ["1/6", "1/3", "1/3", "1/6"]),
    # Kutta's 3/8 rule (torchdiffeq's "rk4").
    _tableau("rk4_38", 4, ["0", "1/3", "2/3", "1"], [[], ["1/3"], ["-1/3", "1"], ["1", "-1", "1"]],
             ["1/8", "3/8", "3/8", "1/8"]),
    # Bogacki–Shampine 3(2), FSAL.
    _tableau("bosh3", 3, ["0", "1/2", "3/4", "1"],
             [[], ["1/2"], ["0", "3/4"], ["2/9", "1/3", "4/9"]],
             ["2/9", "1/3", "4/9", "0"], b_hat=["7/24", "1/4", "1/3", "1/8"]),
    # Dormand–Prince 5(4), FSAL, with Shampine's embedded 4th-order weights (as torchdiffeq and
    # MATLAB's ode45 use them), so accept/reject decisions match torchdiffeq's.
    _tableau("dopri5", 5, ["0", "1/5", "3/10", "4/5", "8/9", "1", "1"],
             [[], ["1/5"], ["3/40", "9/40"], ["44/45", "-56/15", "32/9"],
              ["19372/6561", "-25360/2187", "64448/6561", "-212/729"],
              ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"],
              ["35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84"]],
             ["35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84", "0"],
             b_hat=["1951/21600", "0", "22642/50085", "451/720", "-12231/42400", "649/6300",
                    "1/60"]),
]}
# torchdiffeq's name for Heun's method.
TABLEAUS["heun2"] = TABLEAUS["heun"]


def get_tableau(method: str) -> ButcherTableau:
    try:
        return TABLEAUS[method]
    except KeyError:
        raise ValueError(f"method: unknown Runge-Kutta method {method!r}; "
                         f"choose from {sorted(TABLEAUS)}") from None
