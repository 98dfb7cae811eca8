"""The task protocol: what an optimizer is trained on and measured on.

Tasks are plug-ins, after learned_optimization's TaskFamily/Task:

* ``TaskFamily.sample(generator) -> Task`` draws one task (dimension, conditioning, data subset,
  width, depth, activation, batch size, noise, ... are the family's business);
* a ``Task`` gives initial parameters ``{name: tensor}`` (the same names as
  ``dict(task.module().named_parameters())``), a functional loss ``loss(params, batch)`` that is
  differentiable w.r.t. ``params`` (it runs the task's ``nn.Module`` through
  ``torch.func.functional_call``, so meta-training unrolls may use ``create_graph=True``), batches
  for training and testing, and a normaliser so that losses of different tasks can be averaged;
* the same task is available as an ordinary ``nn.Module`` plus ``module_loss(module, batch)`` for
  ``torch.optim`` loops (the evaluation harness uses this path).

All randomness comes from explicit ``torch.Generator`` objects (CPU generators: numbers are drawn on
the CPU and then moved, so a seed gives the same task on every device). Constructing modules never
touches the global RNG: architectures are built on the ``meta`` device and then materialised.

This module lives in ``metaopt`` so that the library never imports the ``tasks`` package; concrete
families live in ``tasks/``, depend on this file and register themselves by name in
``metaopt.task_registry``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .task_sampling import (
    Params,
    fan_in_uniform_init,
    generator_from_seed,
    sample_choice,
    sample_int_log_uniform,
    sample_log_uniform,
)

if TYPE_CHECKING:
    from .task_batch import TaskBatch

Batch = Any  # a tuple of tensors, or None for deterministic objectives

__all__ = [
    "Batch",
    "ModuleTask",
    "Params",
    "Task",
    "TaskFamily",
    "fan_in_uniform_init",
    "generator_from_seed",
    "sample_choice",
    "sample_int_log_uniform",
    "sample_log_uniform",
]


class Task(ABC):
    """One optimisation problem. Subclasses implement the abstract methods below.

    Normalisation: ``normalized_loss(L) = (L - loss_offset) / loss_scale`` where ``loss_offset`` is
    the known minimum value when there is one (else 0) and ``loss_scale > 0`` is a per-task or
    per-family scale (by default the initial optimality gap on ``eval_batch("train")``). A
    normalised loss of 1 means "no progress", 0 means "solved", so averages across tasks are
    meaningful.
    """

    name: str = "task"
    #: known global minimisers, each a ``Params`` dict (empty when unknown or unbounded below)
    minimizers: tuple[Params, ...] = ()
    #: known global minimum value, or None
    minimum_value: float | None = None
    #: True for classification tasks, whose ``accuracy`` returns a number
    is_classification: bool = False

    def __init__(self, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self._loss_scale: float | None = None

    # ----------------------------------------------------------------- abstract protocol
    @abstractmethod
    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """Initial parameters. ``generator=None`` gives the task's canonical initial point (fixed
        when the task was sampled); a generator draws a fresh one (e.g. a new NN initialisation)."""

    @abstractmethod
    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Scalar loss at ``params`` on ``batch``; differentiable w.r.t. ``params``."""

    @abstractmethod
    def module(self, generator: torch.Generator | None = None) -> nn.Module:
        """An ``nn.Module`` whose parameters equal ``init_params(generator)``."""

    @abstractmethod
    def module_loss(self, module: nn.Module, batch: Batch) -> Tensor:
        """The same loss as ``loss``, computed through an ``nn.Module`` from ``module()``."""

    @abstractmethod
    def train_batch(self, generator: torch.Generator) -> Batch:
        """A training minibatch (or gradient-noise draw) sampled with ``generator``."""

    @abstractmethod
    def eval_batch(self, split: str = "test") -> Batch:
        """The deterministic full batch of ``split`` ("train" or "test") used for measurements."""

    # ----------------------------------------------------------------- shared behaviour
    def test_batch(self, generator: torch.Generator | None = None) -> Batch:
        """A test batch: the full test set when ``generator`` is None. Tasks with a sampled test
        distribution override this; the default ignores the generator's draw."""
        return self.eval_batch("test")

    def accuracy(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor | None:
        """Fraction of correctly classified examples; None for non-classification tasks."""
        return None

    @property
    def loss_offset(self) -> float:
        return float(self.minimum_value) if self.minimum_value is not None else 0.0

    @property
    def loss_scale(self) -> float:
        """Positive loss scale: the initial gap ``loss(init) - loss_offset`` on the train eval
        batch, floored at 1e-12 so that a task started at its minimum does not divide by zero."""
        if self._loss_scale is None:
            with torch.no_grad():
                initial = float(self.loss(self.init_params(), self.eval_batch("train")))
            self._loss_scale = max(abs(initial - self.loss_offset), 1e-12)
        return self._loss_scale

    def normalized_loss(self, loss: float | Tensor) -> float | Tensor:
        """``(loss - loss_offset) / loss_scale``."""
        return (loss - self.loss_offset) / self.loss_scale

    def _to(self, tensor: Tensor) -> Tensor:
        """Move a CPU-drawn tensor to this task's device; floating tensors also to its dtype."""
        if tensor.is_floating_point():
            return tensor.to(device=self.device, dtype=self.dtype)
        return tensor.to(device=self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        """Short human-readable description of the sampled variation (used in result tables)."""
        return self.name

    # ----------------------------------------------------------------- vectorised meta-batches
    def batch_key(self) -> Hashable | None:
        """How a family opts in to vectorised meta-training (``metaopt.meta.vectorised``).

        Tasks whose keys are equal (and not None) can be advanced as one program: ``stack`` puts
        them in a ``TaskBatch``. The default, None, means "this task is unrolled on its own" (the
        loop engine). The key must capture everything the loss depends on besides the parameters
        and the batch data (architecture, batch size, penalties, dtype, device).
        """
        return None

    def batch_label(self) -> Hashable | None:
        """The label by which a ``TaskBatch`` of this task's key splits its rows
        (``RowPartition``: an MLP's activation, a point task's function): the engine places
        same-label runs next to each other, so the batch cuts its rows into contiguous blocks."""
        return None

    @classmethod
    def stack(cls, tasks: Sequence[Task]) -> TaskBatch:
        """A ``TaskBatch`` of ``tasks`` (all with this task's ``batch_key``)."""
        raise TypeError(f"{cls.__name__} has no batched form: a task with a batch_key() must "
                        f"override stack()")


class _MetaInitSkipped(TorchFunctionMode):
    """``torch.nn.init``'s initialisers leave a meta tensor as it is: a module built on the meta
    device is a template whose values ``to_empty`` throws away, and torch's meta ``normal_`` is
    a Python reference whose wrapper imports ``torch._dynamo`` (about a second) the first time
    it runs (``nn.Embedding``'s initialisation, e.g.)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


class _ModuleObjective(nn.Module):
    """Wraps ``model`` so that ``forward(batch) == task.module_loss(model, batch)``; this lets
    ``torch.func.functional_call`` substitute parameters in the *whole* loss, including penalty
    terms that read weights directly (L2, L1), not only in ``model.forward``."""

    def __init__(self, task: ModuleTask, model: nn.Module):
        super().__init__()
        self.model = model
        self._task_ref = [task]  # a list, so the task is not registered as a submodule

    def forward(self, batch: Batch) -> Tensor:
        return self._task_ref[0].module_loss(self.model, batch)


class ModuleTask(Task):
    """A task defined by an architecture (``build_module``) and ``module_loss``.

    The functional loss is derived, not re-written: ``loss(params, batch)`` runs ``module_loss``
    on a template module through ``torch.func.functional_call``, so the functional and module
    paths are the same computation by construction and ``params`` carry gradients (and graphs).
    """

    @abstractmethod
    def build_module(self) -> nn.Module:
        """The architecture, with arbitrary parameter values. Called under ``torch.device("meta")``
        so that constructing layers never consumes the global RNG."""

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """The architecture's fan-in-uniform initialisation (``fan_in_uniform_init``), drawn from
        ``generator`` or, for the canonical initial point, from the task's ``init_seed``
        (families that sample tasks set it; override for another initialisation)."""
        if generator is None:
            generator = generator_from_seed(self.init_seed)
        params = fan_in_uniform_init(self._template().model, generator)
        return {name: self._to(value) for name, value in params.items()}

    def _template(self) -> _ModuleObjective:
        template = getattr(self, "_template_objective", None)
        if template is None:
            template = _ModuleObjective(self, self._materialize())
            self._template_objective = template
            names = [n for n, _ in template.named_parameters(remove_duplicate=False)]
            # the names functional_call must be given (strict: buffers too), and whether any
            # weight is tied (without ties, no tie search per call)
            self._template_names = frozenset(
                names + [n for n, _ in template.named_buffers(remove_duplicate=False)])
            self._template_tied = len(names) != len(dict(template.named_parameters()))
        return template

    def _materialize(self) -> nn.Module:
        with torch.device("meta"), _MetaInitSkipped():
            module = self.build_module()
        return module.to_empty(device=self.device).to(self.dtype)

    def module(self, generator: torch.Generator | None = None) -> nn.Module:
        module = self._materialize()
        params = self.init_params(generator)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                parameter.copy_(params[name])
        return module

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        template = self._template()
        prefixed = {f"model.{name}": value for name, value in params.items()}
        if self._template_tied:
            return torch.func.functional_call(template, prefixed, (batch,), strict=True)
        # functional_call's strict check and tie search walk the module tree on every call
        # (about a tenth of a loop-engine inner step); the key check below is the same test
        if prefixed.keys() != self._template_names:
            missing = sorted(self._template_names - prefixed.keys())
            unexpected = sorted(prefixed.keys() - self._template_names)
            raise RuntimeError(f"{type(self).__name__}.loss: parameters missing {missing}, "
                               f"unexpected {unexpected}")
        return torch.func.functional_call(template, prefixed, (batch,), tie_weights=False)

    def parameter_shapes(self) -> dict[str, torch.Size]:
        return {name: p.shape for name, p in self._template().model.named_parameters()}


class TaskFamily(ABC):
    """A distribution over tasks. ``sample(generator)`` must be a pure function of the generator's
    state (same seed, same task), and different seeds should give different tasks."""

    name: str = "family"

    def __init__(self, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if isinstance(dtype, str):
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}")
            dtype = resolved
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()

    @abstractmethod
    def sample(self, generator: torch.Generator) -> Task:
        """Draw one task."""

    def sample_seed(self, seed: int) -> Task:
        """``sample(generator_from_seed(seed))``."""
        return self.sample(generator_from_seed(seed))

    def _task_kwargs(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
