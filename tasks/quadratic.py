"""Quadratics with sampled dimension and condition number, and a noisy-gradient variant.

    f(x) = 1/2 (x - x*)^T A (x - x*),   A = Q diag(lambda) Q^T,
    lambda_i log-spaced in [1/kappa, 1]  (so lambda_max = 1 and cond(A) = kappa),

``Q`` is a Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix of Mezzadri
2007), ``x* ~ N(0, I)``, ``x0 ~ N(0, I)``. Known minimiser ``x*``, minimum value 0; gradient descent
is stable for ``lr < 2`` and the condition number sets its rate, which is what the optimizer seeds
study on ill-conditioned problems (GDSearch).

Noisy variant (stochastic gradients with a known exact loss): a training batch is ``z ~ N(0, I)``
and the training loss is ``f(x) + sigma * z^T (x - x*)``, whose gradient is ``A(x - x*) + sigma z``
(unbiased, covariance ``sigma^2 I``); the test batch is ``z = 0``, i.e. the exact ``f``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metaopt.task import Batch, TaskFamily, sample_int_log_uniform, sample_log_uniform
from metaopt.task_batch import TaskBatch

from .point import PointTask

__all__ = ["QuadraticBatch", "QuadraticFamily", "QuadraticTask", "random_orthogonal"]


def random_orthogonal(dim: int, generator: torch.Generator) -> Tensor:
    """A Haar-distributed orthogonal matrix (float64): QR of a Gaussian matrix, columns multiplied
    by ``sign(diag(R))`` so the distribution is uniform (Mezzadri 2007)."""
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


class QuadraticTask(PointTask):
    """``1/2 (x - x*)^T A (x - x*) [+ sigma z^T (x - x*)]``."""

    def __init__(self, hessian: Tensor, minimizer: Tensor, initial_point: Tensor, *,
                 noise_std: float = 0.0, condition_number: float = 1.0, name: str = "quadratic",
                 device=None, dtype=None):
        init_std = 3.0  # generator-drawn restarts come from the box [-3, 3]^d around the origin
        super().__init__(initial_point, torch.tensor(-init_std), torch.tensor(init_std),
                         name=name, device=device, dtype=dtype)
        self.hessian = self._to(hessian)
        self.x_star = self._to(minimizer)
        self.noise_std = float(noise_std)
        self.condition_number = float(condition_number)
        self.minimizers = ({"x": self.x_star.clone()},)
        self.minimum_value = 0.0

    def objective(self, x: Tensor, batch: Batch) -> Tensor:
        delta = x - self.x_star
        value = 0.5 * delta @ (self.hessian @ delta)
        if batch is not None:
            value = value + self.noise_std * (batch @ delta)
        return value

    def train_batch(self, generator: torch.Generator) -> Batch:
        if self.noise_std == 0.0:
            return None
        return self._to(torch.randn(self.dim, generator=generator, dtype=torch.float64))

    def describe(self) -> str:
        noise = f", sigma={self.noise_std:.2g}" if self.noise_std else ""
        return f"{self.name}(dim={self.dim}, kappa={self.condition_number:.3g}{noise})"

    # Every quadratic, noisy or not, of any dimension, joins one zero-padded QuadraticBatch, a
    # part of the PointBatch it shares with the test functions (PointTask.batch_key).
    def point_part_key(self):
        return ("quadratic",)

    @classmethod
    def stack_part(cls, tasks: Sequence[QuadraticTask]) -> QuadraticBatch:
        return QuadraticBatch(tasks)


class QuadraticBatch(TaskBatch):
    """``B`` quadratics (plain and noisy, any dimensions) zero-padded to the largest ``D``::

        L_b(x) = 1/2 (x − x*_b)^T A_b (x − x*_b) + σ_b z_b^T (x − x*_b)

    with ``A_b``, ``x*_b``, ``z_b`` and the parameter (and every per-parameter state tensor)
    zero in the padded coordinates ``d_b..D−1``. There the gradient is exactly 0 and the loss
    gets no term, so a rule that maps a coordinate with ``θ = g = state = 0`` to 0 and reads the
    parameters only through sums (norms, dot products) — GARO — keeps the padding at 0 and
    computes the same step as on the ``d_b``-dimensional task (up to the summation order).
    Deterministic tasks (``σ_b = 0``) draw no noise: their ``z_b`` is 0, as their batch is None.
    """

    stacked_attributes = ("hessian", "x_star", "noise_std")

    def __init__(self, tasks: Sequence[QuadraticTask]):
        super().__init__(tasks)
        self.dims = [t.dim for t in self.tasks]
        self.width = max(self.dims)
        self.hessian = torch.stack([F.pad(t.hessian, (0, self.width - t.dim) * 2)
                                    for t in self.tasks])
        self.x_star = self.stack_values("x", [t.x_star for t in self.tasks])
        self.noise_std = torch.tensor([t.noise_std for t in self.tasks], dtype=self.dtype,
                                      device=self.device)

    def select(self, rows):
        out = super().select(rows)
        out.dims = [t.dim for t in out.tasks]
        return out

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        return torch.stack([F.pad(v, (0, self.width - v.shape[0])) for v in values])

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return [row[:dim] for row, dim in zip(value.unbind(0), self.dims)]

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        delta = params["x"] - self.x_star
        curvature = torch.bmm(self.hessian, delta.unsqueeze(-1)).squeeze(-1)
        value = 0.5 * (delta * curvature).sum(-1)
        return value + self.noise_std * (batch * delta).sum(-1)

    def train_batch(self, generators: Sequence[torch.Generator | None]) -> Batch:
        # QuadraticTask.train_batch per task (noisy ones draw z ~ N(0, I_d)), scattered at once
        draws, slots = [], []
        for row, (task, generator) in enumerate(zip(self.tasks, generators)):
            if generator is not None and task.noise_std != 0.0:
                draws.append(torch.randn(task.dim, generator=generator, dtype=torch.float64))
                slots.extend(range(row * self.width, row * self.width + task.dim))
        noise = torch.zeros(len(self.tasks) * self.width, dtype=torch.float64)
        if draws:
            noise[slots] = torch.cat(draws)
        return noise.view(len(self.tasks), self.width).to(device=self.device, dtype=self.dtype)


class QuadraticFamily(TaskFamily):
    """Dimension log-uniform in ``dim``, condition number log-uniform in ``condition_number``;
    ``noise_std`` (a range, log-uniform) > 0 gives the noisy-gradient variant."""

    name = "quadratic"

    def __init__(self, dim: tuple[int, int] = (2, 50),
                 condition_number: tuple[float, float] = (1.0, 1e3),
                 noise_std: tuple[float, float] | None = None, *, device=None, dtype=None):
        super().__init__(device=device, dtype=dtype)
        self.dim = (int(dim[0]), int(dim[1]))
        self.condition_number = (float(condition_number[0]), float(condition_number[1]))
        if self.condition_number[0] < 1.0:
            raise ValueError(f"condition numbers are >= 1, got {condition_number}")
        self.noise_std = None if noise_std is None else (float(noise_std[0]), float(noise_std[1]))
        if self.noise_std is not None:
            self.name = "noisy_quadratic"

    def sample(self, generator: torch.Generator) -> QuadraticTask:
        dim = sample_int_log_uniform(generator, *self.dim)
        kappa = sample_log_uniform(generator, *self.condition_number)
        eigenvalues = torch.logspace(-math.log10(kappa), 0.0, dim, dtype=torch.float64)
        q = random_orthogonal(dim, generator)
        hessian = (q * eigenvalues) @ q.T
        hessian = 0.5 * (hessian + hessian.T)  # exact symmetry despite rounding
        minimizer = torch.randn(dim, generator=generator, dtype=torch.float64)
        initial = torch.randn(dim, generator=generator, dtype=torch.float64)
        noise = 0.0 if self.noise_std is None else sample_log_uniform(generator, *self.noise_std)
        return QuadraticTask(hessian, minimizer, initial, noise_std=noise, condition_number=kappa,
                             name=self.name, **self._task_kwargs())


def noisy_quadratic_family(dim: tuple[int, int] = (2, 50),
                           condition_number: tuple[float, float] = (1.0, 1e3),
                           noise_std: tuple[float, float] = (0.01, 1.0), *, device=None,
                           dtype=None) -> QuadraticFamily:
    """The noisy-gradient quadratic family (registered as ``noisy_quadratic``)."""
    return QuadraticFamily(dim, condition_number, noise_std, device=device, dtype=dtype)
