"""Data-parallel meta-training over ``torch.distributed`` processes (torchrun, gloo on CPU).

The meta-batch of ``n`` inner runs is sharded: each of its slots is owned by one rank, which
alone unrolls the slot's run. Every rank holds the same trainer generator, and
``InnerRunPool.refresh`` draws every slot's new task in slot order on every rank (``wanted_slots``
tells each rank which slots of the others need one), so rank ``r``'s runs are exactly the
1-process pool's runs in its slots, whichever slots it owns.

**Who owns a slot** (``assign_owners``) is decided when a new run starts there, by every rank
alike and without communicating (they all drew the same tasks), and holds until that run ends:
runs never move between ranks. A new run goes to the rank that already holds runs of its task's
``batch_key()`` (the vectorised engine advances all of a rank's same-key runs in one call per
inner step, and that call costs about the same whatever the number of runs in it, so a key held
by two ranks is paid twice), as long as that rank holds fewer than ``owner_cap`` runs
(``⌈1.25·n/W⌉`` by default); otherwise it goes to the rank holding the fewest groups, then the
fewest runs. Every rank keeps at least one run. The loop engine has no use for keys: its new runs
go to the rank with the fewest runs (the first refresh deals the slots out in turn: ``r, r + W,
...``, the position rule ``shard_slots`` that preceded this one). To know a new run's key every
rank builds every new task (a few milliseconds each) and keeps only its own. On
``configs/garo_general.yaml`` with 64 runs (~8 groups per meta-batch), a rank holds 4.0 groups on
average over 200 meta-steps (the busier rank 4.0) where position sharding gave it 7.4 (7.8);
``imbalance`` 0 (run counts kept even) would leave 7.3, 0.125 gives 5.1, and 0.5 is hardly
better than 0.25 (``python -m scripts.benchmark meta_owners``).

The 1-process BPTT meta-gradient is the mean over the live runs ``L`` (those that did not
diverge) of their meta-loss gradients; rank ``r`` computes the mean over its own ``L_r``, so the
ranks' gradients are combined weighted by their live counts (``reduce_estimate``)::

    ĝ = Σ_r |L_r| · ĝ_r / Σ_r |L_r| = (1/|L|) Σ_{i ∈ L} ∇M_i

which is the 1-process meta-gradient up to summation order
(``tests/meta/test_distributed_sharded.py`` checks it in float64). For ES / PES, ``ĝ_r``
averages each antithetic pair over the runs that survived both probes; weighting by ``|L_r|`` is
exact when no run diverges under a probe only. The reported meta-loss and traces are combined
with the same weights, counts are summed.
"""
from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_IMBALANCE", "all_reduce_mean", "assign_owners", "distributed_world",
           "leave_process_group", "owner_cap", "reduce_estimate", "shard_slots", "wanted_slots"]

# A rank may hold up to 25% more runs than an even share: room to keep same-key runs together.
DEFAULT_IMBALANCE = 0.25


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def leave_process_group(grace: float = 0.1) -> None:
    """``destroy_process_group()``, then sleep ``grace`` seconds with the GIL released.

    Why: a gloo worker thread frees its last collective's tensors only once it holds the GIL. A
    process that starts shutting the interpreter down straight after its last collective can get
    there first, and the waiting worker then aborts the process (``std::terminate``: SIGABRT after
    a run that succeeded). The sleep hands the GIL to the workers still waiting for it."""
    torch.distributed.destroy_process_group()
    time.sleep(grace)


def shard_slots(num_runs: int, rank: int, world: int) -> list[int]:
    """The slots ``rank, rank + world, ...``: what rank ``rank`` of ``world`` owned before
    ownership followed the runs' keys (a pool's placeholder before its first refresh, and the
    table of a state saved before the table existed)."""
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)
            and 0 <= rank < world):
        raise ValueError(f"shard: need 0 <= rank < world_size, got rank {rank!r} of {world!r}")
    if num_runs < world:
        raise ValueError(f"num_runs: {num_runs} runs cannot be shared by {world} processes "
                         "(each needs at least one); raise unroll.num_tasks or use fewer")
    return list(range(rank, num_runs, world))


def owner_cap(num_runs: int, world: int, imbalance: float = DEFAULT_IMBALANCE) -> int:
    """The most runs one rank may hold: ``⌈(1 + imbalance) · num_runs / world⌉``, at least the
    even share ``⌈num_runs / world⌉`` and at most what leaves every other rank one run."""
    if not (math.isfinite(imbalance) and imbalance >= 0):
        raise ValueError(f"imbalance: must be finite and >= 0, got {imbalance!r}")
    even = -(-num_runs // world)
    return max(even, min(math.ceil((1 + imbalance) * num_runs / world),
                         num_runs - (world - 1)))


def assign_owners(owners: Sequence[int | None], keys: Sequence[Hashable | None], world: int,
                  cap: int) -> list[int]:
    """Every slot's rank: ``owners[s]`` where a run goes on (runs never move), a new owner where
    ``owners[s]`` is None (a new run starts there).

    A pure function of the slots' owners and of which ``keys`` are equal (never of their values),
    so every rank computes the same table. The new runs are taken key by key, the largest set of
    new runs first (ties: the first slot), slot by slot; a new run goes to

    1. a rank with no run at all, when the new runs left are just enough to give each such rank
       one (every rank keeps at least one run);
    2. else, among the ranks holding fewer than ``cap`` runs: the one holding the most runs of
       its key (the vectorised engine pays a group's per-step cost once however many runs it
       holds), then the one holding the fewest groups (distinct keys; a run without a key is a
       group of its own: the loop), then the fewest runs, then the lowest rank.

    A key of None means "no batched form": no affinity, so with every key None this is plain
    balancing by run count (the loop's case).
    """
    num_runs = len(owners)
    if world * cap < num_runs or num_runs < world:
        raise ValueError(f"cap: {world} ranks of at most {cap} runs cannot hold {num_runs} "
                         "runs with at least one each")
    table = list(owners)
    counts, held, loose = [0] * world, [{} for _ in range(world)], [0] * world
    for slot, rank in enumerate(table):
        if rank is not None:
            _hold(slot, rank, keys, counts, held, loose)
    fresh: dict = {}
    for slot, rank in enumerate(table):
        if rank is None:  # a key of None: each run is its own set
            fresh.setdefault(("key", keys[slot]) if keys[slot] is not None else ("slot", slot),
                             []).append(slot)
    left = sum(len(slots) for slots in fresh.values())
    for slots in sorted(fresh.values(), key=lambda slots: (-len(slots), slots[0])):
        key = keys[slots[0]]
        for slot in slots:
            empty = [r for r in range(world) if counts[r] == 0]
            open_ = empty if len(empty) >= left else [r for r in range(world) if counts[r] < cap]
            best = min(open_, key=lambda r: (-held[r].get(key, 0) if key is not None else 0,
                                            len(held[r]) + loose[r], counts[r], r))
            table[slot] = best
            _hold(slot, best, keys, counts, held, loose)
            left -= 1
    return table


def _hold(slot, rank, keys, counts, held, loose) -> None:
    counts[rank] += 1
    if keys[slot] is None:
        loose[rank] += 1
    else:
        held[rank][keys[slot]] = held[rank].get(keys[slot], 0) + 1


def wanted_slots(mine: Sequence[bool], slots: Sequence[int], num_runs: int,
                 world: int) -> list[bool]:
    """Which of all ``num_runs`` slots need a new run: every rank's own flags, gathered (one
    integer all-reduce; identity when ``world == 1``)."""
    if world == 1:
        return list(mine)
    flags = torch.zeros(num_runs, dtype=torch.int32)
    flags[list(slots)] = torch.tensor([int(m) for m in mine], dtype=torch.int32)
    torch.distributed.all_reduce(flags)
    return [bool(f) for f in flags.tolist()]


def all_reduce_mean(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Average every tensor over the processes of the default group (identity when alone)."""
    _, world = distributed_world()
    if world == 1:
        return dict(tensors)
    names = list(tensors)
    flat = torch.cat([tensors[n].reshape(-1) for n in names])
    torch.distributed.all_reduce(flat)
    flat /= world
    return _unflatten(flat, tensors, names)


def _unflatten(flat: Tensor, like: Mapping[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = flat[offset:offset + size].view_as(like[n])
        offset += size
    return out


def reduce_estimate(grads: Mapping[str, Tensor], live: int, loss: float, resets: int,
                    started: int, traces: Mapping[str, float]) -> dict:
    """Combine the ranks' meta-gradients and metrics (module docstring): returns ``grads``,
    ``loss``, ``live_runs``, ``resets``, ``new_runs``, ``traces`` of the whole meta-batch.
    Alone (one process) everything is returned unchanged, bit for bit."""
    _, world = distributed_world()
    if world == 1:
        return {"grads": dict(grads), "loss": loss, "live_runs": live, "resets": resets,
                "new_runs": started, "traces": dict(traces)}
    names = list(grads)
    weight = torch.tensor([float(live)], dtype=next(iter(grads.values())).dtype)
    flat = torch.cat([grads[n].detach().reshape(-1) * weight for n in names] + [weight])
    torch.distributed.all_reduce(flat)
    total = float(flat[-1])
    flat = flat[:-1] / total if total > 0 else torch.zeros_like(flat[:-1])
    mine = {"live": live, "loss": loss, "resets": resets, "started": started,
            "traces": dict(traces)}
    every: list = [None] * world
    torch.distributed.all_gather_object(every, mine)  # rank order: the same floats on every rank
    lives = [r["live"] for r in every]
    return {"grads": _unflatten(flat, grads, names),
            "loss": _weighted([r["loss"] for r in every], lives),
            "live_runs": sum(lives), "resets": sum(r["resets"] for r in every),
            "new_runs": sum(r["started"] for r in every),
            "traces": {k: _weighted([r["traces"].get(k, math.nan) for r in every],
                                    [w if k in r["traces"] else 0 for r, w in zip(every, lives)])
                       for k in sorted({k for r in every for k in r["traces"]})}}


def _weighted(values: list[float], weights: list[int]) -> float:
    """``Σ w·v / Σ w`` over the entries with ``w > 0`` (NaN when none)."""
    total = sum(weights)
    if total == 0:
        return math.nan
    return sum(w * v for v, w in zip(values, weights) if w > 0) / total
