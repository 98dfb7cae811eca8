"""Task augmentation: every sampled task rescales its loss and reparametrises its parameters.

For a base task with loss ``L(θ)`` the augmented task draws (from the family's generator)

    c ~ logU(loss_scale),    s_k ~ logU(param_scale) per parameter tensor k,

and exposes to the optimizer the parameters ``θ'`` with ``θ_k = s_k θ'_k``::

    L'(θ') = c · L(s ⊙ θ'),    ∇_{θ'_k} L' = c s_k ∇_{θ_k} L(s ⊙ θ'),    ∇²L' = c S ∇²L S,
    θ'_0 = θ_0 / s,            θ'* = θ* / s,                              min L' = c · min L.

A hand-designed optimizer is affected in known ways (SGD's effective rate becomes ``η c s²``;
Adam is invariant to ``c`` and sees its steps rescaled by ``1/s``); training a learned optimizer on
such tasks pushes it towards those invariances (Celo, arXiv 2501.12670, Sec. 3;
learned_optimization's ``ReparamWeights`` / loss-rescaling augmentations). The normaliser scales
with ``c`` (``loss_offset' = c·offset``, ``loss_scale' = c·scale``) so normalised losses, hence
meta-losses, stay comparable across augmentations:
``normalized_loss'(L'(θ')) = normalized_loss(L(s ⊙ θ'))``.

Registered as ``"augmented"``::

    tasks.get("augmented", family={"name": "mlp", "kwargs": {"width": [8, 32]}},
              loss_scale=[0.01, 100], param_scale=[0.1, 10])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metaopt.task import Batch, Params, Task, TaskFamily, sample_log_uniform
from metaopt.task_batch import TaskBatch

__all__ = ["AugmentedBatch", "AugmentedFamily", "AugmentedTask", "check_scale_range"]


def check_scale_range(key: str, value: Sequence[float] | None) -> tuple[float, float]:
    """``value`` as ``(low, high)`` with ``0 < low <= high < inf``; None means ``(1, 1)``."""
    if value is None:
        return 1.0, 1.0
    if isinstance(value, (int, float)) or len(value) != 2:
        raise ValueError(f"{key}: must be a [low, high] pair, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"{key}: need finite 0 < low <= high, got {value!r}")
    return low, high


class AugmentedTask(Task):
    """``base`` with its loss multiplied by ``loss_scale`` (c) and each parameter tensor ``k``
    reparametrised as ``θ_k = param_scales[k] · θ'_k`` (see the module docstring)."""

    def __init__(self, base: Task, loss_scale: float, param_scales: Mapping[str, float]):
        super().__init__(device=base.device, dtype=base.dtype)
        names = list(base.init_params())
        if set(param_scales) != set(names):
            raise ValueError(f"param_scales: need one scale per parameter {names}, "
                             f"got {sorted(param_scales)}")
        self.base, self.c = base, float(loss_scale)
        self.scales = {k: float(param_scales[k]) for k in names}
        self.name = f"augmented_{base.name}"
        self.is_classification = base.is_classification
        if base.minimum_value is not None:
            self.minimum_value = self.c * float(base.minimum_value)
        self.minimizers = tuple(self.to_augmented(m) for m in base.minimizers)

    # -- the change of variables --------------------------------------------------------------
    def to_base(self, params: Mapping[str, Tensor]) -> Params:
        """``θ = s ⊙ θ'`` (differentiable)."""
        return {k: self.scales[k] * v for k, v in params.items()}

    def to_augmented(self, params: Mapping[str, Tensor]) -> Params:
        """``θ' = θ / s``."""
        return {k: v / self.scales[k] for k, v in params.items()}

    # -- the task protocol --------------------------------------------------------------------
    def init_params(self, generator: torch.Generator | None = None) -> Params:
        return self.to_augmented(self.base.init_params(generator))

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.c * self.base.loss(self.to_base(params), batch)

    def module(self, generator: torch.Generator | None = None) -> nn.Module:
        """The base task's module holding ``θ'`` (its parameters divided by ``s``)."""
        module = self.base.module(generator)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                parameter.div_(self.scales[name])
        return module

    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        """``c · L(s ⊙ θ')`` with ``θ'`` read from ``module`` (gradients reach its parameters)."""
        return self.loss(dict(module.named_parameters()), batch)

    def train_batch(self, generator: torch.Generator) -> Batch:
        return self.base.train_batch(generator)

    def eval_batch(self, split: str = "test") -> Batch:
        return self.base.eval_batch(split)

    def test_batch(self, generator: torch.Generator | None = None) -> Batch:
        return self.base.test_batch(generator)

    def accuracy(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor | None:
        return self.base.accuracy(self.to_base(params), batch)

    @property
    def loss_offset(self) -> float:
        return self.c * self.base.loss_offset

    @property
    def loss_scale(self) -> float:
        return self.c * self.base.loss_scale

    # -- vectorised meta-batches: augmented tasks batch wherever their base tasks do -------------
    def batch_key(self):
        key = self.base.batch_key()
        return None if key is None else ("augmented", key)

    def batch_label(self):
        return self.base.batch_label()

    @classmethod
    def stack(cls, tasks: Sequence[AugmentedTask]) -> AugmentedBatch:
        return AugmentedBatch(tasks)

    def describe(self) -> str:
        scales = sorted(self.scales.values())
        return (f"augmented({self.base.describe()}, c={self.c:.3g}, "
                f"s=[{scales[0]:.3g}..{scales[-1]:.3g}])")


class AugmentedBatch(TaskBatch):
    """``L'_b(θ'_b) = c_b · L_b(s_b ⊙ θ'_b)`` over the base tasks' own ``TaskBatch`` (same padding,
    batches and stacking); the normaliser rows are the augmented tasks' (scaled by ``c_b``)."""

    stacked_attributes = ("c",)

    def __init__(self, tasks: Sequence[AugmentedTask]):
        super().__init__(tasks)
        bases = [t.base for t in self.tasks]
        self.base = type(bases[0]).stack(bases)
        self.c = torch.tensor([t.c for t in self.tasks], dtype=self.dtype, device=self.device)
        self.scales = {name: torch.tensor([t.scales[name] for t in self.tasks], dtype=self.dtype,
                                          device=self.device) for name in self.tasks[0].scales}

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        scaled = {k: self.scales[k].view(-1, *[1] * (v.dim() - 1)) * v for k, v in params.items()}
        return self.rescaled_loss(scaled, batch)

    def tensor_scales(self) -> dict[str, Tensor]:
        return self.scales

    def rescaled_loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """``c_b · L_b(θ)`` of the base tensors ``θ = s_b ⊙ θ'_b``."""
        return self.c * self.base.loss(params, batch)

    def train_batch(self, generators):
        return self.base.train_batch(generators)

    def test_batch(self, generators):
        return self.base.test_batch(generators)

    def stack_values(self, name: str, values: Sequence[Tensor]) -> Tensor:
        return self.base.stack_values(name, values)

    def unstack_values(self, name: str, value: Tensor) -> list[Tensor]:
        return self.base.unstack_values(name, value)

    def select(self, rows: Sequence[int]) -> AugmentedBatch:
        out = super().select(rows)
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        out.base = self.base.select(rows)
        out.scales = {k: v.index_select(0, index) for k, v in self.scales.items()}
        return out


class AugmentedFamily(TaskFamily):
    """Samples a task of ``family``, then ``c ~ logU(loss_scale)`` and one
    ``s_k ~ logU(param_scale)`` per parameter tensor, all from the same generator (``None``: no
    rescaling of that kind)."""

    def __init__(self, family: TaskFamily, loss_scale: Sequence[float] | None = None,
                 param_scale: Sequence[float] | None = None):
        super().__init__(device=family.device, dtype=family.dtype)
        self.family = family
        self.loss_scale = check_scale_range("loss_scale", loss_scale)
        self.param_scale = check_scale_range("param_scale", param_scale)
        self.name = f"augmented({family.name})"

    def sample(self, generator: torch.Generator) -> AugmentedTask:
        base = self.family.sample(generator)
        c = sample_log_uniform(generator, *self.loss_scale)
        scales = {k: sample_log_uniform(generator, *self.param_scale) for k in base.init_params()}
        return AugmentedTask(base, c, scales)
