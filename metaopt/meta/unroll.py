"""Differentiable inner unrolls on functional parameters, through the shared rule code.

One segment of an inner run takes ``T`` steps of a ``LearnedRule`` (``metaopt.meta.learned``)::

    (L_k, g_k) = (L(θ_k; b_k), ∇_θ L(θ_k; b_k))          via the task's functional ``loss``
    θ_{k+1}, s_{k+1} = rule.step(θ_k, grad_fn, s_k, φ)      k = 0..T−1

and scores it with a ``MetaLoss`` over the normalised losses ``ℓ̂(θ_1) .. ℓ̂(θ_T)``. With
``differentiable=True`` the inner gradient is taken with ``create_graph=second_order`` so that
``∂ meta-loss / ∂φ`` reaches every step (``second_order=False`` is the first-order approximation
of Andrychowicz et al. 2016: ``g_k`` enters the update as a constant). With
``differentiable=False`` nothing keeps a graph: the mode of gradient-free estimators and
evaluation, whose memory does not grow with ``T``.

Train-split terms reuse the loss the next step evaluates anyway (``L(θ_k; b_k)`` is the term of
``θ_k``), so only ``θ_T`` costs one extra forward pass. Test-split terms evaluate ``θ_k`` on a
held-out batch of the task.

A step whose loss or gradient is non-finite, or whose normalised loss exceeds the meta-loss's
``divergence_threshold``, ends the segment as *diverged*: no meta-loss comes out of it (the caller
resets the run), and nothing computed after the bad value is kept.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..rules.base import State, TensorList
from ..task import Task, generator_from_seed
from .learned import LearnedRule
from .meta_losses import MetaLoss


@dataclass
class SegmentResult:
    """Outcome of ``unroll_segment``.

    ``loss`` is the combined meta-loss (None when diverged); ``terms`` the normalised terms
    computed before any divergence; ``steps`` the inner steps taken; ``traces`` the emitted
    hyperparameters per step (only with ``record_trace``).
    """

    loss: Tensor | None
    terms: list[Tensor]
    params: TensorList
    state: State
    steps: int
    diverged: bool
    traces: dict[str, list[float]] = field(default_factory=dict)


def batch_generator(batch_seed: int, inner_step: int) -> torch.Generator:
    """The minibatch stream of a run from inner step ``inner_step`` on: a pure function of both.

    Every probe of the same segment (BPTT, each ES perturbation, a resumed run) therefore sees the
    same batches: common random numbers, and bit-exact resumption.
    """
    return generator_from_seed((int(batch_seed) + 1_000_003 * int(inner_step)) % (2 ** 62))


def make_grad_fn(task: Task, names: Sequence[str], batch, *, differentiable: bool,
                 second_order: bool, record: list):
    """``grad_fn(points) -> (L, ∇L)`` of ``task.loss`` on ``batch`` for ``GARORule.step``.

    Appends ``(L, all_finite)`` to ``record`` (the segment reads the loss the rule evaluated, and
    whether the loss and every gradient entry are finite).
    """
    def grad_fn(points: Sequence[Tensor]):
        if differentiable:
            points = [p if p.requires_grad else p.detach().requires_grad_() for p in points]
        else:
            points = [p.detach().requires_grad_() for p in points]
        with torch.enable_grad():
            loss = task.loss(dict(zip(names, points)), batch)
            # First-order BPTT keeps the loss's graph (the meta-loss reads it) while the gradient
            # enters the update as a constant: the graph must survive this grad call.
            grads = torch.autograd.grad(loss, points,
                                        create_graph=differentiable and second_order,
                                        retain_graph=differentiable)
        if not differentiable:
            loss = loss.detach()
        squares = torch.stack([g.detach().square().sum() for g in grads]).sum()
        record.append((loss, torch.isfinite(loss.detach()) & torch.isfinite(squares)))
        return loss, list(grads)
    return grad_fn


def unroll_segment(learned: LearnedRule, weights: Mapping[str, Tensor], task: Task,
                   names: Sequence[str], params: Sequence[Tensor], state: State, length: int,
                   meta_loss: MetaLoss, *, batch_seed: int, inner_step: int = 0,
                   differentiable: bool = True, second_order: bool = True,
                   record_trace: bool = False) -> SegmentResult:
    """Run ``length`` inner steps from ``(params, state)`` and score them (module docstring)."""
    if length < 1:
        raise ValueError(f"length: a segment needs >= 1 step, got {length!r}")
    generator = batch_generator(batch_seed, inner_step)
    start_state = state
    params, terms = list(params), []
    traces: dict[str, list[Tensor]] = {}
    take_every = meta_loss.needs_every_term
    with torch.set_grad_enabled(differentiable):
        for k in range(length):
            batch = task.train_batch(generator)
            record: list = []
            grad_fn = make_grad_fn(task, names, batch, differentiable=differentiable,
                                   second_order=second_order, record=record)
            new_params, new_state = learned.step(params, grad_fn, state, weights)
            loss, finite = record[0]
            if meta_loss.split == "train" and k > 0 and take_every:
                terms.append(task.normalized_loss(loss))
            elif meta_loss.split == "test" and (take_every or k == length - 1):
                held_out = task.loss(dict(zip(names, new_params)), task.test_batch(generator))
                terms.append(task.normalized_loss(held_out))
            bad = ~finite | meta_loss.is_divergent(task.normalized_loss(loss.detach()))
            if terms:
                bad = bad | meta_loss.is_divergent(terms[-1].detach())
            if bool(bad):  # one host sync per step: a diverged run must not feed the meta-loss
                return SegmentResult(None, terms, params, state, k, True, _floats(traces))
            params, state = new_params, new_state
            if record_trace:
                for key, value in learned.trace(state).items():
                    traces.setdefault(key, []).append(value)
        if meta_loss.split == "train":
            final = task.loss(dict(zip(names, params)), task.train_batch(generator))
            terms.append(task.normalized_loss(final))
            if bool(meta_loss.is_divergent(terms[-1].detach())):
                return SegmentResult(None, terms, params, state, length, True, _floats(traces))
    combined = meta_loss.combine(terms)
    penalty = getattr(learned, "segment_penalty", None)
    if penalty is not None:  # a rule's own charge, e.g. the hybrid's gradient evaluations
        combined = combined + penalty(start_state, state, length)
    return SegmentResult(combined, terms, params, state, length, False,
                         _floats(traces))


def _floats(traces: dict[str, list[Tensor]]) -> dict[str, list[float]]:
    return {k: torch.stack(v).tolist() for k, v in traces.items()} if traces else {}


def initial_run(learned: LearnedRule, weights: Mapping[str, Tensor], task: Task,
                generator: torch.Generator | None = None, horizon: int | None = None,
                ) -> tuple[list[str], TensorList, State]:
    """Names, initial parameters (canonical when ``generator`` is None) and detached rule state
    of a run of ``horizon`` total steps (the controller's progress input)."""
    init = task.init_params(generator)
    names = list(init)
    params = [init[n].detach() for n in names]
    with torch.no_grad():
        state = learned.init(params, {k: v.detach() for k, v in weights.items()},
                             horizon=horizon)
    return names, params, state
