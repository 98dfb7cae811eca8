"""A meta-batch of inner runs advanced one truncation at a time (truncated unrolls).

``InnerRunPool`` holds ``num_runs`` inner optimisations, each on a task sampled from a family,
with a total horizon ``N`` from a truncation schedule. A meta-step

1. ``refresh``: replaces every finished (``step ≥ N``) or reset run by a new task, new ``N``;
2. ``segment(φ, ...)``: unrolls every run for ``min(truncation_length, N − step)`` steps.
   With ``advance=True`` the runs keep the new parameters and rule state *detached* (the
   truncation: the graph, hence memory, never spans more than one segment); with
   ``advance=False`` the runs stay where they were (evolution-strategies probes of ``φ ± σε``).

A segment that diverges (``metaopt.meta.unroll``) yields no loss; when advancing, its run is reset
and counted in ``resets``. With ``advance=False`` a segment may start each run from a given
``(params, state)`` instead of the stored one (``starts``: the persistent particles of PES), and
returns where each run ended (``SegmentBatch.ends``); ``run_keys()`` identifies each run's task so
an estimator notices a slot was given a new task. Everything random comes from the generator given
to ``refresh`` and from per-run batch seeds, so ``state_dict`` / ``load_state_dict`` resume
bit-exactly.

``shard=(rank, world)`` (data-parallel meta-training, ``metaopt.meta.distributed``): the pool
holds only the slots of the ``num_runs``-run meta-batch that this rank owns, while ``refresh``
draws every slot's new task in slot order from the (shared) generator, so the runs it holds are
those the 1-process pool holds in the same slots. Which rank owns a slot is decided when a new run
starts there, identically on every rank (``distributed.assign_owners``: with the engine that
batches same-``batch_key`` runs, the rank already holding that key, within a bound on run counts),
and kept until the run ends: runs never move. The table (``owners``, and every slot's task seed
so a resume knows every slot's key) is part of ``state_dict``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..rules.base import State, TensorList
from ..task import Task, TaskFamily
from .distributed import DEFAULT_IMBALANCE, assign_owners, owner_cap, shard_slots, wanted_slots
from .learned import LearnedRule, detach_state, map_tensors
from .meta_losses import MetaLoss
from .truncation import segment_length
from .unroll import initial_run, unroll_segment

# Training tasks use seeds below this; held-out validation seeds are chosen at or above it.
TRAIN_TASK_SEED_LIMIT = 2 ** 30


@dataclass
class InnerRun:
    task_seed: int
    horizon: int
    batch_seed: int
    step: int
    names: list[str]
    params: TensorList
    state: State
    task: Task


@dataclass
class SegmentBatch:
    """Per-run segment losses (None where the run diverged) and the runs' emitted hyperparameters.

    ``ends`` (filled only when ``advance=False``): per run, the detached ``(params, state)`` at the
    end of the segment, None where the run diverged.
    """

    losses: list[Tensor | None]
    resets: int
    traces: dict[str, float]
    ends: list[tuple[TensorList, State] | None] = field(default_factory=list)


class InnerRunPool:
    """``num_runs`` truncated inner runs over ``family`` (see the module docstring); with
    ``shard=(rank, world)`` only this process's share of them (``runs`` lists those, in the order
    of their meta-batch ``slots``; ``owners`` gives every slot's rank). ``imbalance``: a rank holds
    at most ``⌈(1 + imbalance)·num_runs / world⌉`` runs (``distributed.owner_cap``)."""

    groups_by_key = False  # whether runs of one batch_key cost less together (vectorised: yes)

    def __init__(self, learned: LearnedRule, family: TaskFamily, num_runs: int,
                 truncation_length: int, horizon, meta_loss: MetaLoss, *,
                 second_order: bool = True, shard: tuple[int, int] = (0, 1),
                 imbalance: float = DEFAULT_IMBALANCE):
        if num_runs < 1:
            raise ValueError(f"num_runs: must be >= 1, got {num_runs!r}")
        if truncation_length < 1:
            raise ValueError(f"truncation_length: must be >= 1, got {truncation_length!r}")
        self.learned, self.family, self.horizon = learned, family, horizon
        self.truncation_length, self.meta_loss = truncation_length, meta_loss
        self.second_order = second_order
        self.num_runs, self.shard = int(num_runs), (int(shard[0]), int(shard[1]))
        self.slots = shard_slots(self.num_runs, *self.shard)  # the meta-batch slots held here
        self.runs: list[InnerRun | None] = [None] * len(self.slots)
        self._tasks: dict[int, Task] = {}
        world = self.shard[1]
        self.cap = owner_cap(self.num_runs, world, imbalance)
        # every slot's owner, task seed (-1: unknown) and ownership key (None: no affinity); the
        # first refresh starts a run in every slot, so these positions are only placeholders
        self.owners = [slot % world for slot in range(self.num_runs)]
        self._seeds = [-1] * self.num_runs
        self._keys: list = [None] * self.num_runs

    def _task(self, seed: int) -> Task:
        if seed not in self._tasks:
            self._tasks[seed] = self.family.sample_seed(seed)
        return self._tasks[seed]

    def _draw(self, generator: torch.Generator) -> tuple[int, int, int]:
        """A new run's ``(task_seed, batch_seed, horizon)``: all it takes from the generator."""
        task_seed = int(torch.randint(TRAIN_TASK_SEED_LIMIT, (), generator=generator))
        batch_seed = int(torch.randint(2 ** 62, (), generator=generator))
        return task_seed, batch_seed, self.horizon.sample(generator)

    def _new_run(self, weights: Mapping[str, Tensor], task_seed: int, batch_seed: int,
                 horizon: int) -> InnerRun:
        task = self._task(task_seed)
        names, params, state = initial_run(self.learned, weights, task, horizon=horizon)
        return InnerRun(task_seed, horizon, batch_seed, 0, names, params, state, task)

    def refresh(self, weights: Mapping[str, Tensor], generator: torch.Generator) -> int:
        """Start new runs in empty or finished slots; returns how many were started here.

        Sharded, every slot of the meta-batch that needs a run draws one, in slot order, on every
        rank (a collective: every rank calls ``refresh`` together); a rank builds only its own."""
        mine = [run is None or run.step >= run.horizon for run in self.runs]
        wanted = wanted_slots(mine, self.slots, self.num_runs, self.shard[1])
        draws = {slot: self._draw(generator) for slot, want in enumerate(wanted) if want}
        if self.shard[1] > 1:
            self._assign(draws)
        local = {slot: i for i, slot in enumerate(self.slots)}
        started = 0
        for slot, draw in draws.items():
            if slot in local:
                self.runs[local[slot]] = self._new_run(weights, *draw)
                started += 1
        live = {run.task_seed for run in self.runs if run is not None}
        self._tasks = {s: t for s, t in self._tasks.items() if s in live}
        return started

    def _ownership_key(self, seed: int) -> Any:
        """What ``assign_owners`` groups a slot's run by: its task's ``batch_key()`` when this
        engine batches by key (the task is built, and kept only by its owner), else None."""
        if seed < 0 or not self.groups_by_key:
            return None
        return self._task(seed).batch_key()

    def _assign(self, draws: Mapping[int, tuple[int, int, int]]) -> None:
        """Owners for the slots of ``draws`` (new runs), the same on every rank; this rank's
        ``slots`` and ``runs`` follow (its runs that go on keep their place in slot order)."""
        for slot, (seed, _, _) in draws.items():
            self._seeds[slot], self._keys[slot] = seed, self._ownership_key(seed)
        self.owners = assign_owners([None if slot in draws else owner
                                     for slot, owner in enumerate(self.owners)],
                                    self._keys, self.shard[1], self.cap)
        held = dict(zip(self.slots, self.runs))
        self.slots = [slot for slot, owner in enumerate(self.owners) if owner == self.shard[0]]
        self.runs = [held.get(slot) for slot in self.slots]

    def run_keys(self) -> list[tuple[int, int, int] | None]:
        """Per run ``(task_seed, batch_seed, horizon)`` (None for an empty slot): a run's identity,
        which changes whenever ``refresh`` gives the slot a new task."""
        return [None if r is None else (r.task_seed, r.batch_seed, r.horizon) for r in self.runs]

    def _check_starts(self, starts, advance: bool) -> None:
        """``segment``'s ``starts``: only without ``advance``, one entry per run."""
        if starts is not None:
            if advance:
                raise ValueError("starts: only with advance=False (the runs keep their own state)")
            if len(starts) != len(self.runs):
                raise ValueError(f"starts: {len(starts)} given, "
                                 f"this pool has {len(self.runs)} runs")

    def segment(self, weights: Mapping[str, Tensor], *, differentiable: bool, advance: bool,
                starts: Sequence[tuple[TensorList, State] | None] | None = None) -> SegmentBatch:
        """One truncation of every run at meta-parameters ``weights``.

        ``starts`` (only with ``advance=False``): per run a ``(params, state)`` to start from
        instead of the run's stored one (None: the stored one). The segment's length, batches and
        inner-step count are the run's own, so a particle started from the run stays in step.
        """
        self._check_starts(starts, advance)
        losses, ends, resets, emitted = [], [], 0, {}
        for i, run in enumerate(self.runs):
            if run is None:
                raise RuntimeError("InnerRunPool.segment: call refresh() first")
            params, state = run.params, run.state
            if starts is not None and starts[i] is not None:
                params, state = starts[i]
            length = segment_length(self.truncation_length, run.step, run.horizon)
            result = unroll_segment(
                self.learned, weights, run.task, run.names, params, state, length,
                self.meta_loss, batch_seed=run.batch_seed, inner_step=run.step,
                differentiable=differentiable, second_order=self.second_order)
            losses.append(result.loss)
            if not advance:
                ends.append(None if result.diverged else
                            (detach_state(list(result.params)), detach_state(result.state)))
                continue
            if result.diverged:
                self.runs[i] = None  # reset: the next refresh() starts a new task here
                resets += 1
                continue
            run.params, run.state = detach_state(result.params), detach_state(result.state)
            run.step += length
            for key, value in self.learned.trace(run.state).items():
                emitted.setdefault(key, []).append(float(value))
        traces = {key: sum(values) / len(values) for key, values in emitted.items()}
        return SegmentBatch(losses, resets, traces, ends)

    def live_states(self) -> list[State]:
        """The rule states of the runs that have taken at least one step."""
        return [run.state for run in self.runs if run is not None and run.step > 0]

    # -- persistence (weights_only-loadable: ints, lists and tensors) ------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The runs held here; sharded, also the ownership table (``owners``, and every slot's
        task ``seeds``, from which a resume rebuilds every slot's key), the same on every rank."""
        state = {"shard": list(self.shard), "num_runs": self.num_runs,
                 "runs": [None if r is None else
                          {"task_seed": r.task_seed, "horizon": r.horizon,
                           "batch_seed": r.batch_seed, "step": r.step, "names": list(r.names),
                           "params": [p.clone() for p in r.params],
                           "state": _owned(r.state)}
                          for r in self.runs]}
        if self.shard[1] > 1:
            state["ownership"] = {"owners": list(self.owners), "seeds": list(self._seeds)}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = list(state["runs"])
        shard = [int(x) for x in state.get("shard", (0, 1))]  # absent: saved before sharding
        if shard != list(self.shard) or int(state.get("num_runs", len(saved))) != self.num_runs:
            raise ValueError(f"state: saved by rank {shard[0]} of {shard[1]} processes with "
                             f"{state.get('num_runs', len(saved))} runs, this pool is rank "
                             f"{self.shard[0]} of {self.shard[1]} with {self.num_runs}")
        owners, seeds = self._saved_ownership(state.get("ownership"))
        slots = [slot for slot, owner in enumerate(owners) if owner == self.shard[0]]
        if len(saved) != len(slots):
            raise ValueError(f"state: {len(saved)} runs saved, this pool has {len(slots)}")
        self._tasks = {}
        self.owners, self._seeds, self.slots = owners, seeds, slots
        self.runs = [None if r is None else self._restore(r) for r in saved]
        self._keys = [self._ownership_key(seed) for seed in seeds]
        live = {run.task_seed for run in self.runs if run is not None}
        self._tasks = {s: t for s, t in self._tasks.items() if s in live}

    def _saved_ownership(self, saved: Mapping[str, Any] | None) -> tuple[list[int], list[int]]:
        """The saved table, checked; a sharded state saved before the table existed had slot
        ``s`` on rank ``s mod world`` (its slots' keys count as unknown, -1, until they end)."""
        n, world = self.num_runs, self.shard[1]
        if world == 1:
            return [0] * n, [-1] * n
        if saved is None:
            return [slot % world for slot in range(n)], [-1] * n
        owners, seeds = [int(x) for x in saved["owners"]], [int(x) for x in saved["seeds"]]
        if len(owners) != n or len(seeds) != n or not all(0 <= o < world for o in owners):
            raise ValueError(f"state: an ownership table of {len(owners)} slots (owners "
                             f"{sorted(set(owners))}), this pool has {n} slots on {world} ranks")
        return owners, seeds

    def _restore(self, saved: Mapping[str, Any]) -> InnerRun:
        # Training state is loaded on the CPU; the run continues on its task's device.
        task = self._task(int(saved["task_seed"]))
        return InnerRun(int(saved["task_seed"]), int(saved["horizon"]), int(saved["batch_seed"]),
                        int(saved["step"]), list(saved["names"]),
                        _to_device(list(saved["params"]), task.device),
                        _to_device(dict(saved["state"]), task.device), task)


def _owned(value: Any) -> Any:
    """``value`` with every tensor inside detached and copied into storage of its own.

    Why: the vectorised engine leaves a run's state as views of its group's stacked tensors, and
    pickling a view writes its whole storage: a 64-run state gathered from another rank
    (``torch.distributed.gather_object``) pickled to 144 MB instead of about 2 MB."""
    return map_tensors(lambda t: t.detach().clone(), value)


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    return map_tensors(lambda t: t.to(device), value)
