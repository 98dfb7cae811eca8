"""Tasks whose parameter is a single point ``x`` in R^n (quadratics, analytic test functions).

The module is ``PointModule``: one ``nn.Parameter`` named ``"x"``; ``module_loss`` evaluates the
task's ``objective(x, batch)``. Deterministic objectives use ``batch = None``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from metaopt.task import Batch, ModuleTask, Params
from metaopt.task_batch import RowPartition, TaskBatch

__all__ = ["PointBatch", "PointModule", "PointTask"]


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

    # -- vectorised meta-batches: every point task of every dimension joins one PointBatch ------
    def batch_key(self) -> Hashable | None:
        """One key for every point task with a batched part (None: this task takes the loop)."""
        if self.point_part_key() is None:
            return None
        return ("point", self.device, self.dtype)

    @classmethod
    def stack(cls, tasks: Sequence[PointTask]) -> PointBatch:
        return PointBatch(tasks)

    def batch_label(self) -> Hashable | None:
        return self.point_part_key()  # a PointBatch evaluates each part on its own rows

    def point_part_key(self) -> Hashable | None:
        """Tasks of one part key are evaluated by one ``stack_part`` batch inside a
        ``PointBatch``; None (this default): the task has no batched form, so no ``batch_key``
        either, and the vectorised engine runs it in its loop."""
        return None

    @classmethod
    def stack_part(cls, tasks: Sequence[PointTask]) -> TaskBatch:
        """A ``TaskBatch`` of tasks of one ``point_part_key`` over points of their width
        (attribute ``width``). Subclasses that return a part key define it."""
        raise TypeError(f"{cls.__name__} has no batched form: a task whose point_part_key() is "
                        "not None must define stack_part")


class PointBatch(TaskBatch):
    """Point tasks of any kinds and dimensions (quadratics, test functions), the points
    zero-padded to the largest ``D``::

        L_b(x) = f_b(x_b[:w_p])      for task b in part p (its ``point_part_key``)

    Each part's rows are evaluated by the part's own batch (``stack_part``: a ``QuadraticBatch``,
    padded inside to its width ``w_p``; one ``vmap`` of a test function) and the values put back
    in row order. Coordinates beyond ``w_p`` never enter a loss, and the parts pad exactly inside
    ``w_p``, so every padded coordinate's gradient is exactly 0 (a rule that keeps
    ``θ = g = state = 0`` at 0 leaves it there) and each row is its own task's loss.
    A batch is the list of the parts' batches.
    """

    def __init__(self, tasks: Sequence[PointTask]):
        super().__init__(tasks)
        self.width = max(t.dim for t in self.tasks)
        self._parts()

    def _parts(self) -> None:
        self.rows = RowPartition([t.point_part_key() for t in self.tasks], self.device)
        self.part_rows = [rows.tolist() for _, rows in self.rows.parts]
        self.parts = [(rows, type(self.tasks[r[0]]).stack_part([self.tasks[i] for i in r]))
                      for (_, rows), r in zip(self.rows.parts, self.part_rows)]

    def select(self, rows):
        out = super().select(rows)
        out._parts()
        return out

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        return torch.stack([nn.functional.pad(v, (0, self.width - v.shape[0])) for v in values])

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return [row[:task.dim] for row, task in zip(value.unbind(0), self.tasks)]

    def loss(self, params, batch: Batch) -> Tensor:
        return self.rows.merge([part.loss({"x": x[:, :part.width]}, data) for (_, part), x, data
                                in zip(self.parts, self.rows.split(params["x"]), batch)])

    def train_batch(self, generators) -> Batch:
        return [part.train_batch([generators[r] for r in rows])
                for rows, (_, part) in zip(self.part_rows, self.parts)]

    def test_batch(self, generators) -> Batch:
        return [part.test_batch([generators[r] for r in rows])
                for rows, (_, part) in zip(self.part_rows, self.parts)]
