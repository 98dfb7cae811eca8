"""Tasks whose parameter is a single point ``x`` in R^n (quadratics, analytic test functions).

The module is ``PointModule``: one ``nn.Parameter`` named ``"x"``; ``module_loss`` evaluates the
task's ``objective(x, batch)``. Deterministic objectives use ``batch = None``.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from metaopt.task import Batch, ModuleTask, Params

__all__ = ["PointModule", "PointTask"]


class PointModule(nn.Module):
    """Holds the point ``x`` being optimised."""

    def __init__(self, dim: int):
        super().__init__()
        self.x = nn.Parameter(torch.empty(dim))


class PointTask(ModuleTask):
    """A task over one point. ``initial_point`` is the canonical start; ``init_params(generator)``
    draws a new start uniformly from the box ``[init_low, init_high]`` (per coordinate)."""

    def __init__(
        self,
        initial_point: Tensor,
        init_low: Tensor,
        init_high: Tensor,
        *,
        name: str,
        device=None,
        dtype=None,
    ):
        super().__init__(device=device, dtype=dtype)
        self.name = name
        self.dim = int(initial_point.numel())
        self.initial_point = initial_point.to(torch.float64).reshape(self.dim)
        self.init_low = init_low.to(torch.float64).expand(self.dim)
        self.init_high = init_high.to(torch.float64).expand(self.dim)

    @abstractmethod
    def objective(self, x: Tensor, batch: Batch) -> Tensor:
        """The scalar function value at ``x`` (``batch`` carries gradient noise when stochastic)."""

    def build_module(self) -> nn.Module:
        return PointModule(self.dim)

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        return self.objective(module.x, batch)

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        if generator is None:
            point = self.initial_point
        else:
            u = torch.rand(self.dim, generator=generator, dtype=torch.float64)
            point = self.init_low + u * (self.init_high - self.init_low)
        return {"x": self._to(point.clone())}

    def train_batch(self, generator: torch.Generator) -> Batch:
        return None

    def eval_batch(self, split: str = "test") -> Batch:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return None

    def describe(self) -> str:
        start = ", ".join(f"{v:.3g}" for v in self.initial_point[:3].tolist())
        more = ", ..." if self.dim > 3 else ""
        return f"{self.name}(dim={self.dim}, x0=({start}{more}))"
