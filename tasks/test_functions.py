"""Classic 2-D optimisation test functions with their known minimisers (the hybrid
GD–ODE optimizer's "ability to escape local minima" on known difficult landscapes; the GDSearch
studies: Rosenbrock trajectories, saddle escape, the (-1.5, 2.0) divergence).

Each family samples the initial point uniformly from the function's customary box, or uses a fixed
``initial_point`` (e.g. ``tasks.get("rosenbrock", initial_point=(-1.5, 2.0))``). Minimisers are
given to float64 precision (refined by Newton's method; gradients there are < 1e-13).

Every function is written over the last dimension of its argument, ``(..., n) -> (...)``: a stack
of points (the runs of a vectorised meta-batch, a grid of a landscape plot) is evaluated in one
call, the same values as point by point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaopt.task import Batch, TaskFamily
from metaopt.task_batch import TaskBatch

from .point import PointTask

__all__ = ["TEST_FUNCTIONS_2D", "FunctionPart", "TestFunction", "TestFunctionFamily",
           "TestFunctionTask"]


def rosenbrock(v: Tensor) -> Tensor:
    """``(1 - x)^2 + 100 (y - x^2)^2``; minimum 0 at (1, 1), a curved ill-conditioned valley."""
    x, y = v[..., 0], v[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(v: Tensor) -> Tensor:
    """``(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``; minimum 0 at (3, 0.5)."""
    x, y = v[..., 0], v[..., 1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def himmelblau(v: Tensor) -> Tensor:
    """``(x^2 + y - 11)^2 + (x + y^2 - 7)^2``; four global minima, all with value 0."""
    x, y = v[..., 0], v[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def rastrigin(v: Tensor) -> Tensor:
    """``10 n + sum (x_i^2 - 10 cos(2 pi x_i))``; minimum 0 at the origin, many local minima."""
    return 10 * v.shape[-1] + (v**2 - 10 * torch.cos(2 * math.pi * v)).sum(-1)


def ackley(v: Tensor) -> Tensor:
    """``-20 exp(-0.2 sqrt(mean x_i^2)) - exp(mean cos(2 pi x_i)) + e + 20``; minimum 0 at 0.

    The function has a cone-shaped kink at 0; the radius is ``sqrt(max(r^2, tiny))`` so autograd
    returns the subgradient 0 there instead of NaN (the value changes by < 1e-18)."""
    mean_square = (v**2).mean(-1)
    radius = torch.sqrt(torch.clamp(mean_square, min=torch.finfo(v.dtype).tiny))
    return (-20 * torch.exp(-0.2 * radius) - torch.exp(torch.cos(2 * math.pi * v).mean(-1))
            + math.e + 20)


def six_hump_camel(v: Tensor) -> Tensor:
    """``(4 - 2.1 x^2 + x^4/3) x^2 + x y + (-4 + 4 y^2) y^2``; two global minima, value -1.0316."""
    x, y = v[..., 0], v[..., 1]
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def styblinski_tang(v: Tensor) -> Tensor:
    """``1/2 sum (x_i^4 - 16 x_i^2 + 5 x_i)``; minimum -39.166... * n at x_i = -2.9035..."""
    return 0.5 * (v**4 - 16 * v**2 + 5 * v).sum(-1)


def saddle(v: Tensor) -> Tensor:
    """``x^2 - y^2``: a strict saddle at the origin, unbounded below (the saddle-escape study)."""
    return v[..., 0] ** 2 - v[..., 1] ** 2


def monkey_saddle(v: Tensor) -> Tensor:
    """``x^3 - 3 x y^2``: a degenerate (zero-Hessian) saddle at the origin, unbounded below."""
    return v[..., 0] ** 3 - 3 * v[..., 0] * v[..., 1] ** 2


STYBLINSKI_TANG_ARGMIN = -2.903534027771177
STYBLINSKI_TANG_MIN_PER_DIM = -39.16616570377141


@dataclass(frozen=True)
class TestFunction:
    """An analytic function with its known global minimisers (empty if unbounded below),
    minimum value (None if unbounded), other known critical points, and its customary box."""

    name: str
    function: Callable[[Tensor], Tensor]  # (..., n) -> (...)
    minimizers: tuple[tuple[float, ...], ...]
    minimum_value: float | None
    init_box: tuple[float, float]
    critical_points: tuple[tuple[float, ...], ...] = ()


TEST_FUNCTIONS_2D: dict[str, TestFunction] = {
    f.name: f
    for f in (
        TestFunction("rosenbrock", rosenbrock, ((1.0, 1.0),), 0.0, (-2.0, 2.0)),
        TestFunction("beale", beale, ((3.0, 0.5),), 0.0, (-4.5, 4.5)),
        TestFunction(
            "himmelblau",
            himmelblau,
            (
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.283185991286169),
                (3.5844283403304917, -1.8481265269644034),
            ),
            0.0,
            (-5.0, 5.0),
        ),
        TestFunction("rastrigin", rastrigin, ((0.0, 0.0),), 0.0, (-5.12, 5.12)),
        TestFunction("ackley", ackley, ((0.0, 0.0),), 0.0, (-5.0, 5.0)),
        TestFunction(
            "six_hump_camel",
            six_hump_camel,
            ((0.08984201310031806, -0.7126564030207396),
             (-0.08984201310031806, 0.7126564030207396)),
            -1.0316284534898774,
            (-2.0, 2.0),
        ),
        TestFunction(
            "styblinski_tang",
            styblinski_tang,
            ((STYBLINSKI_TANG_ARGMIN, STYBLINSKI_TANG_ARGMIN),),
            2 * STYBLINSKI_TANG_MIN_PER_DIM,
            (-5.0, 5.0),
        ),
        TestFunction("saddle", saddle, (), None, (-1.0, 1.0), critical_points=((0.0, 0.0),)),
        TestFunction("monkey_saddle", monkey_saddle, (), None, (-1.0, 1.0),
                     critical_points=((0.0, 0.0),)),
    )
}


class TestFunctionTask(PointTask):
    """Minimise an analytic function from ``initial_point``. Normaliser: the initial gap
    ``f(x0) - f*``; for functions unbounded below, ``max(|f(x0)|, 1)``."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, function: Callable[[Tensor], Tensor], minimizers: Sequence[Sequence[float]],
                 minimum_value: float | None, initial_point: Tensor, init_box: tuple[float, float],
                 critical_points: Sequence[Sequence[float]] = (), *, name: str, device=None,
                 dtype=None):
        super().__init__(initial_point, torch.tensor(init_box[0]), torch.tensor(init_box[1]),
                         name=name, device=device, dtype=dtype)
        self.function = function
        self.minimum_value = minimum_value
        self.minimizers = tuple({"x": self._to(torch.tensor(m, dtype=torch.float64))}
                                for m in minimizers)
        self.critical_points = tuple(self._to(torch.tensor(c, dtype=torch.float64))
                                     for c in critical_points)

    def objective(self, x: Tensor, batch: Batch) -> Tensor:
        return self.function(x)

    @property
    def loss_scale(self) -> float:
        if self._loss_scale is None:
            with torch.no_grad():
                initial = float(self.objective(self._to(self.initial_point), None))
            if self.minimum_value is None:
                self._loss_scale = max(abs(initial), 1.0)
            else:
                self._loss_scale = max(initial - self.minimum_value, 1e-12)
        return self._loss_scale

    # -- vectorised meta-batches: a part of a PointBatch per function and dimension -------------
    def point_part_key(self):
        return ("test_function", self.function, self.dim)

    @classmethod
    def stack_part(cls, tasks: Sequence[TestFunctionTask]) -> FunctionPart:
        return FunctionPart(tasks)


class FunctionPart(TaskBatch):
    """Tasks of one test function and dimension ``width`` inside a ``PointBatch``:
    ``L_b = f(x_b)``, one call of ``f`` on the stacked points (written over the last dimension);
    deterministic (its batch is None)."""

    def __init__(self, tasks: Sequence[TestFunctionTask]):
        super().__init__(tasks)
        self.width = self.tasks[0].dim

    def loss(self, params, batch: Batch) -> Tensor:
        return self.tasks[0].function(params["x"])

    def train_batch(self, generators) -> Batch:
        return None


class TestFunctionFamily(TaskFamily):
    """One 2-D test function; the initial point is uniform in ``init_box`` (default: the
    function's customary box) unless ``initial_point`` fixes it."""

    __test__ = False

    def __init__(self, function: str, initial_point: Sequence[float] | None = None,
                 init_box: Sequence[float] | None = None, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        if function not in TEST_FUNCTIONS_2D:
            raise ValueError(f"unknown test function {function!r}; "
                             f"known: {sorted(TEST_FUNCTIONS_2D)}")
        self.spec = TEST_FUNCTIONS_2D[function]
        self.name = function
        if initial_point is not None and len(initial_point) != 2:
            raise ValueError(f"initial_point must have 2 coordinates, got {initial_point}")
        self.initial_point = (None if initial_point is None
                              else tuple(float(v) for v in initial_point))
        self.init_box = tuple(init_box) if init_box is not None else self.spec.init_box

    def sample(self, generator: torch.Generator) -> TestFunctionTask:
        if self.initial_point is not None:
            start = torch.tensor(self.initial_point, dtype=torch.float64)
        else:
            low, high = self.init_box
            start = low + (high - low) * torch.rand(2, generator=generator, dtype=torch.float64)
        return TestFunctionTask(self.spec.function, self.spec.minimizers, self.spec.minimum_value,
                                start, self.init_box, self.spec.critical_points, name=self.name,
                                **self._task_kwargs())
