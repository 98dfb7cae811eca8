"""N-dimensional Rosenbrock and Rastrigin with sampled dimension (test landscapes of the hybrid
GD–ODE optimizer).

    Rosenbrock_n(x) = sum_{i=1}^{n-1} [100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2],  min 0 at (1, ..., 1)
    Rastrigin_n(x)  = 10 n + sum_i [x_i^2 - 10 cos(2 pi x_i)],                 min 0 at 0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaopt.task import TaskFamily, sample_int_log_uniform

from .test_functions import TestFunctionTask, rastrigin

__all__ = ["NDTestFunctionFamily", "rosenbrock_nd"]


def rosenbrock_nd(v: Tensor) -> Tensor:
    """The chained N-D Rosenbrock function (n >= 2)."""
    head, tail = v[..., :-1], v[..., 1:]  # over the last dimension, as the 2-D functions
    return (100 * (tail - head**2) ** 2 + (1 - head) ** 2).sum(-1)


_ND = {
    "rosenbrock_nd": (rosenbrock_nd, 1.0, (-2.0, 2.0)),
    "rastrigin_nd": (rastrigin, 0.0, (-5.12, 5.12)),
}


class NDTestFunctionFamily(TaskFamily):
    """Dimension log-uniform in ``dim`` (>= 2); initial point uniform in ``init_box`` or the
    constant vector ``initial_value`` when given (e.g. -1.5 for a fixed Rosenbrock start)."""

    __test__ = False

    def __init__(self, function: str, dim: tuple[int, int] = (2, 20),
                 init_box: Sequence[float] | None = None,
                 initial_value: float | None = None, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        if function not in _ND:
            raise ValueError(f"unknown N-D test function {function!r}; known: {sorted(_ND)}")
        if int(dim[0]) < 2 or int(dim[0]) > int(dim[1]):
            raise ValueError(f"dim must be a range (low, high) with 2 <= low <= high, got {dim}")
        self.name = function
        self.function, self.argmin_value, default_box = _ND[function]
        self.dim = (int(dim[0]), int(dim[1]))
        self.init_box = tuple(init_box) if init_box is not None else default_box
        self.initial_value = initial_value

    def sample(self, generator: torch.Generator) -> TestFunctionTask:
        dim = sample_int_log_uniform(generator, *self.dim)
        if self.initial_value is not None:
            start = torch.full((dim,), float(self.initial_value), dtype=torch.float64)
        else:
            low, high = self.init_box
            start = low + (high - low) * torch.rand(dim, generator=generator, dtype=torch.float64)
        minimizer = (self.argmin_value,) * dim
        return TestFunctionTask(self.function, (minimizer,), 0.0, start, self.init_box,
                                name=self.name, **self._task_kwargs())
