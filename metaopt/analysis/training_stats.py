"""Training statistics of a network under one or several optimizers in sequence (the GDSearch
layer-norm and generalisation-gap studies, and the hybrid strategy Adam → SGD+momentum).

``train_with_stats(task, phases, generator=...)`` trains ``task.module()`` with the optimizers of
``phases`` one after the other (each phase builds a fresh optimizer on the same parameters, as a
person switching optimizers mid-training does) and records, at every step,

* per-layer gradient norms ‖∇_{θ_l} L_batch‖ of the minibatch gradient the optimizer receives
  (the question: does SGD+momentum emphasise later layers early on while AdamW stays uniform?),
* per-layer update norms ‖θ_l(t+1) − θ_l(t)‖ (what the optimizer did with that gradient),

and every ``eval_every`` steps the full-batch train and test loss and test accuracy. At the end it
measures the generalization gap L_test − L_train and the sharpness λ_max of the
full-batch training-loss Hessian (Lanczos on Hessian-vector products,
``metaopt.analysis.hessian.spectrum_top``). A layer is a module owning parameters (``0.weight``
and ``0.bias`` form layer ``0``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaopt.task import Task

from .hessian import spectrum_top

__all__ = ["Phase", "TrainingRecord", "layer_groups", "layer_norms", "task_sharpness",
           "train_with_stats"]


@dataclass(frozen=True)
class Phase:
    label: str
    optimizer: Callable[..., torch.optim.Optimizer]  # params -> optimizer
    steps: int


def layer_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """``{layer: [parameter names]}``, a layer being the parameter name without its last field."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(name)
    return groups


def layer_norms(tensors: Mapping[str, Tensor], groups: Mapping[str, Sequence[str]]) -> Tensor:
    """(L,) float64 Euclidean norm of each layer's tensors taken together."""
    return torch.stack([torch.sqrt(sum(tensors[n].detach().double().pow(2).sum() for n in names))
                        for names in groups.values()])


def task_sharpness(task: Task, params: Mapping[str, Tensor], batch, *, max_iters: int = 30,
              tol: float = 1e-4, generator: torch.Generator | None = None) -> float:
    """λ_max (largest algebraic eigenvalue) of ∇² task.loss(·, batch) at ``params``."""
    names = list(params)

    def f(values: list[Tensor]) -> Tensor:
        return task.loss(dict(zip(names, values)), batch)
    values = [params[n].detach() for n in names]
    return float(spectrum_top(f, values, 1, which="largest", max_iters=max_iters, tol=tol,
                              generator=generator)[0])


@dataclass(frozen=True)
class TrainingRecord:
    layers: list[str]
    phase: list[str]            # label of the phase of each step
    grad_norms: Tensor          # (steps, L) minibatch gradient norm per layer
    update_norms: Tensor        # (steps, L) ‖Δθ_l‖ per step
    eval_steps: list[int]       # steps at which the full-batch metrics were taken
    train_loss: list[float]
    test_loss: list[float]
    test_accuracy: list[float]  # NaN for tasks without accuracy
    sharpness: float | None     # λ_max of the full-batch training loss at the end
    params: dict[str, Tensor]   # the final parameters

    @property
    def generalization_gap(self) -> float:
        return self.test_loss[-1] - self.train_loss[-1]


def _evaluate(task: Task, module: nn.Module) -> tuple[float, float, float]:
    with torch.no_grad():
        train = float(task.module_loss(module, task.eval_batch("train")))
        test = float(task.module_loss(module, task.eval_batch("test")))
        params = {n: p.detach() for n, p in module.named_parameters()}
        accuracy = task.accuracy(params, task.eval_batch("test"))
    return train, test, float("nan") if accuracy is None else float(accuracy)


def train_with_stats(task: Task, phases: Sequence[Phase], *, generator: torch.Generator,
                     eval_every: int = 10, init_generator: torch.Generator | None = None,
                     measure_sharpness: bool = True, sharpness_iters: int = 30) -> TrainingRecord:
    """Train ``task.module(init_generator)`` through ``phases``; minibatches from ``generator``."""
    if not phases or any(p.steps < 0 for p in phases):
        raise ValueError("phases: need at least one phase, each with steps >= 0")
    if eval_every < 1:
        raise ValueError(f"eval_every: must be >= 1, got {eval_every}")
    module = task.module(init_generator)
    named = dict(module.named_parameters())
    groups = layer_groups(list(named))
    grads, updates, labels = [], [], []
    eval_steps, train_l, test_l, acc = [], [], [], []

    def record_eval(step):
        train, test, accuracy = _evaluate(task, module)
        eval_steps.append(step)
        train_l.append(train)
        test_l.append(test)
        acc.append(accuracy)

    record_eval(0)
    step = 0
    for phase in phases:
        optimizer = phase.optimizer(list(named.values()))
        for _ in range(phase.steps):
            batch = task.train_batch(generator)
            optimizer.zero_grad()
            task.module_loss(module, batch).backward()
            grads.append(layer_norms({n: p.grad for n, p in named.items()}, groups))
            before = {n: p.detach().clone() for n, p in named.items()}
            optimizer.step()
            updates.append(layer_norms({n: named[n].detach() - before[n] for n in named},
                                       groups))
            labels.append(phase.label)
            step += 1
            if step % eval_every == 0:
                record_eval(step)
    if eval_steps[-1] != step:
        record_eval(step)
    params = {n: p.detach().clone() for n, p in named.items()}
    lam = (task_sharpness(task, params, task.eval_batch("train"), max_iters=sharpness_iters,
                     generator=torch.Generator().manual_seed(0))
           if measure_sharpness else None)
    empty = torch.zeros(0, len(groups), dtype=torch.float64)
    return TrainingRecord(list(groups), labels, torch.stack(grads) if grads else empty,
                          torch.stack(updates) if updates else empty, eval_steps, train_l,
                          test_l, acc, lam, params)
