"""Which inner runs the vectorised engine can batch, decided once and said once.

Two questions decide it (``metaopt.meta.vectorised``):

1. **Does the rule pad exactly?** Tasks whose parameters differ in size share a batch by
   zero-padding (``TaskBatch.stack_values``); that is exact only for a rule that maps a padded
   coordinate (``θ = g = state = 0``) to 0 *and* whose step on the real coordinates does not
   depend on how many padded ones there are. A rule that reads the element count (GARO's
   ``scale="distance"`` normalises DoG's distance by ``√n``, Ivgi, Hinder & Carmon 2023) is not:
   then only tasks of identical parameter shapes share a batch. ``rule_pads_exactly`` tests it
   directly on a probe: a separable quadratic ``f(θ) = Σ_k (½ a_k θ_k² + b_k θ_k)``, unpadded and
   zero-padded (``a = b = 0`` in the padding, so ``∇f = 0`` there at 0), stepped ``steps``
   times by the rule; exact when the padded coordinates stay exactly 0 and the real updates
   ``θ_T − θ_0`` agree to rounding (a rule that does not move the probe counts as not exact).
   A probe, not a declaration: it follows the rule when the rule changes.
   A rule that steps stacked runs itself (``metaopt.meta.native_batched``) is probed as a
   runs' own rule, since its batched step is the runs' own steps side by side.
2. **Which runs are left alone?** Tasks without a ``batch_key`` and runs whose group has one
   member take the loop. ``loop_report`` samples probe tasks from the family (seeds above the
   training range, so the training stream is untouched), groups them as the engine would in
   meta-batches of ``num_runs``, and returns the plain-words summary the trainer prints at start.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..task import TaskFamily
from .batched_unroll import SameShapes, batched_step, stack_tree
from .flat_buckets import flat_row, flatten_state, unflatten_state
from .native_batched import encode_ints, native_form, native_step

__all__ = ["loop_report", "rule_batch_error", "rule_flattens_exactly", "rule_pads_exactly",
           "task_label"]

_PROBE_SHAPES = ((3,), (2, 2))        # real parameter shapes of the probe
_PADDED_SHAPES = ((5,), (3, 4))       # the same, zero-padded
_PROBE_SEED_BASE = 2 ** 30 + 10 ** 6  # probe tasks: far from training and validation seeds


def _pad(value: Tensor, shape) -> Tensor:
    return F.pad(value, [p for size, have in zip(reversed(shape), reversed(value.shape))
                         for p in (0, size - have)])


def _pad_state(state, shapes):
    """``state`` with every list of per-parameter tensors zero-padded to ``shapes`` (what
    ``TaskBatch.stack_values`` does to the rule state in the engine)."""
    if isinstance(state, dict):
        return {k: _pad_state(v, shapes) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        if len(state) == len(shapes) and all(isinstance(t, Tensor) and t.shape == s for t, s
                                             in zip(state, _PROBE_SHAPES)):
            return type(state)(_pad(t, s) for t, s in zip(state, shapes))
        return type(state)(_pad_state(v, shapes) for v in state)
    return state


def rule_pads_exactly(learned, weights: Mapping[str, Tensor], *, steps: int = 3) -> bool:
    """True when ``learned``'s steps on zero-padded parameters equal its steps on the unpadded
    ones (module docstring, question 1)."""
    weights = {k: v.detach() for k, v in weights.items()}
    dtype = next(iter(weights.values())).dtype if weights else torch.float64
    generator = torch.Generator().manual_seed(0)

    def draw(shape, low=0.0):
        return low + torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)

    # per real tensor: start θ_0, curvature a > 0, linear term b
    real = [(draw(s) - 0.5, draw(s, 0.5), draw(s) - 0.5) for s in _PROBE_SHAPES]
    with torch.no_grad():  # as in the engine: the state is made unpadded, then padded
        initial = learned.init([r[0] for r in real], weights, horizon=10)
    runs = []
    for shapes in (_PROBE_SHAPES, _PADDED_SHAPES):
        start, curv, lin = ([_pad(r[i], s) for r, s in zip(real, shapes)] for i in range(3))

        def grad_fn(points, curv=curv, lin=lin):
            loss = sum((0.5 * a * p * p + b * p).sum() for a, b, p in zip(curv, lin, points))
            return loss, [a * p + b for a, b, p in zip(curv, lin, points)]
        with torch.no_grad():
            params, state = start, _pad_state(initial, shapes)
            for _ in range(steps):
                params, state = learned.step(params, grad_fn, state, weights)
        runs.append([p - s for p, s in zip(params, start)])
    # the updates θ_T − θ_0 are compared, not θ_T: a scale-free rule's first steps are tiny
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    for small, padded in zip(*runs):
        block = padded[tuple(slice(0, n) for n in small.shape)]
        rest = padded.clone()
        rest[tuple(slice(0, n) for n in small.shape)] = 0
        scale = float(small.abs().max())
        if (not torch.all(rest == 0) or scale == 0
                or float((block - small).abs().max()) > tolerance * scale):
            return False
    return True


def _leaves(tree) -> list:
    if isinstance(tree, (Tensor, bool, int, float)):  # (numbers: a rule's step counters)
        return [tree]
    # (entries by key: a step may return its state's entries in another order)
    values = [tree[k] for k in sorted(tree, key=str)] if isinstance(tree, dict) else tree
    return [leaf for value in values for leaf in _leaves(value)]


def rule_flattens_exactly(learned, weights: Mapping[str, Tensor], *, steps: int = 3) -> bool:
    """True when ``learned``'s steps on a run's tensors equal its steps on their concatenation,
    zero-padded, with the state converted as the engine converts it
    (``metaopt.meta.flat_buckets``): the probe of ``rule_pads_exactly`` once per tensor and
    once as one flat vector; the updates and the state given back must agree to rounding."""
    weights = {k: v.detach() for k, v in weights.items()}
    dtype = next(iter(weights.values())).dtype if weights else torch.float64
    generator = torch.Generator().manual_seed(1)
    real = [tuple(torch.rand(s, generator=generator, dtype=torch.float64).to(dtype) + shift
                  for shift in (-0.5, 0.5, -0.5)) for s in _PROBE_SHAPES]
    shapes = [torch.Size(s) for s in _PROBE_SHAPES]
    count = sum(s.numel() for s in shapes)
    width = count + 4

    def run(start, curv, lin, state):
        def grad_fn(points):
            loss = sum((0.5 * a * p * p + b * p).sum() for a, b, p in zip(curv, lin, points))
            return loss, [a * p + b for a, b, p in zip(curv, lin, points)]
        params = start
        with torch.no_grad():
            for _ in range(steps):
                params, state = learned.step(params, grad_fn, state, weights)
        return params, state

    with torch.no_grad():
        initial = learned.init([r[0] for r in real], weights, horizon=10)
        flat_init = learned.init([torch.zeros(count, dtype=dtype)], weights, horizon=10)
    ends, end_state = run(*([r[i] for r in real] for i in range(3)), initial)
    flat = [flat_row([r[i] for r in real], width) for i in range(3)]
    (flat_end,), flat_end_state = run(
        [flat[0]], [flat[1]], [flat[2]], flatten_state(initial, shapes, flat_init, width))
    back = unflatten_state(flat_end_state, initial, shapes)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    moved = flat_end - flat[0]
    wanted = torch.cat([(e - r[0]).reshape(-1) for e, r in zip(ends, real)])
    scale = float(wanted.abs().max())
    if scale == 0 or not torch.all(moved[count:] == 0) or \
            float((moved[:count] - wanted).abs().max()) > tolerance * scale:
        return False
    for got, want in zip(_leaves(back), _leaves(end_state), strict=True):
        if not isinstance(want, Tensor):
            if got != want:
                return False
        elif got.shape != want.shape or (want.is_floating_point() and not torch.allclose(
                got, want, rtol=tolerance, atol=tolerance * 1e-3)) or \
                (not want.is_floating_point() and not torch.equal(got, want)):
            return False
    return True


def rule_batch_error(learned, weights: Mapping[str, Tensor]) -> str | None:
    """Why ``learned`` cannot advance stacked runs (its state does not stack, or its step fails
    under ``vmap``, e.g. it evaluates the gradient away from the current point or reads a value
    on the host), or None when it can: one batched step of two copies of the probe (for a rule
    that steps stacked runs itself, ``metaopt.meta.native_batched``, that step, on the probe's
    quadratic ``f(θ) = ½‖θ‖²`` evaluated wherever it asks)."""
    weights = {k: v.detach() for k, v in weights.items()}
    dtype = next(iter(weights.values())).dtype if weights else torch.float64
    params = [torch.full(s, 0.5, dtype=dtype) for s in _PROBE_SHAPES]
    names = [str(i) for i in range(len(params))]
    native = native_form(learned)
    if native is None and hasattr(learned, "batched_form"):
        try:  # a rule with a batched form in general, not in this configuration: say why
            learned.batched_form()
        except (ValueError, TypeError) as error:
            return str(error)
    try:
        with torch.no_grad():
            state = learned.init(params, weights, horizon=10)
            if native is not None:
                state, _ = encode_ints(state)
            shapes = [[p.shape for p in params]] * 2
            stacked = stack_tree([state, state], SameShapes(), names, shapes)
            stacked_params = [torch.stack([p, p]) for p in params]
            if native is None:
                batched_step(learned, weights)(stacked_params, torch.ones(2, dtype=dtype),
                                               stacked_params, stacked)
            else:
                def evaluate(points):
                    return (sum(0.5 * p.square().flatten(1).sum(1) for p in points),
                            list(points))
                native_step(native, weights)(stacked_params, evaluate(stacked_params)[0],
                                             stacked_params, stacked, evaluate)
    except (TypeError, RuntimeError, NotImplementedError, ValueError) as error:
        return str(error).splitlines()[0].removeprefix("vectorised engine: ")
    return None


def task_label(task) -> str:
    """A task's type in words: ``AugmentedTask(MLPTask)`` for wrappers with a ``base``."""
    base = getattr(task, "base", None)
    name = type(task).__name__
    return f"{name}({task_label(base)})" if base is not None else name


def loop_report(family: TaskFamily, num_runs: int, group_key, *, probe: int = 64,
                flat: bool = False) -> list[str]:
    """Plain-words lines on which runs of ``family`` would take the loop (module docstring,
    question 2). ``group_key(task)`` is the engine's grouping key (None: no batched form);
    ``flat``: the rule's steps are shared across groups (``metaopt.meta.flat_buckets``), so a
    group of one run is batched too."""
    tasks = [family.sample_seed(_PROBE_SEED_BASE + i) for i in range(probe)]
    keys = [group_key(t) for t in tasks]
    no_key = Counter(task_label(t) for t, k in zip(tasks, keys) if k is None)
    alone: Counter = Counter()
    groups = 0
    for begin in range(0, probe, num_runs):
        chunk = [(t, k) for t, k in zip(tasks[begin:begin + num_runs],
                                        keys[begin:begin + num_runs]) if k is not None]
        sizes = Counter(k for _, k in chunk)
        groups += sum(1 for n in sizes.values() if n > 1 or flat)
        if not flat:
            alone.update(task_label(t) for t, k in chunk if sizes[k] == 1)
    lines = []
    if no_key:
        lines.append("no batched form (every run of it takes the loop): "
                     + ", ".join(f"{name} ({n}/{probe})" for name, n in no_key.most_common()))
    if alone:
        lines.append(f"alone in their group in a meta-batch of {num_runs} (those runs take the "
                     "loop): " + ", ".join(f"{name} ({n}/{probe})"
                                           for name, n in alone.most_common()))
    batched = probe - sum(no_key.values()) - sum(alone.values())
    lines.append(f"{batched}/{probe} probe runs batched, in {groups} groups over "
                 f"{-(-probe // num_runs)} meta-batches of {num_runs}"
                 + (" (one loss call per group; the rule steps of all groups share flat "
                    "buckets)" if flat else ""))
    return lines
