"""Groups per rank of a meta-batch sharded over 2 processes: position rule vs ownership by key.

    python scripts/benchmark.py meta_owners [--config configs/garo_general.yaml] [--rounds 200]

No timing (a count, in one process): the config's meta-batch (``unroll.num_tasks``, 64 unless the
config asks for more) is drawn as the trainer draws it (task seed, batch seed, horizon per slot in
slot order, from a generator seeded with the config's seed) for ``--rounds`` meta-steps; a run
ends after ``⌈horizon / truncation_length⌉`` meta-steps (divergence ignored) and its slot draws a
new one. Each slot's group is its task's ``batch_key()``. For the position rule (slot ``s`` on rank
``s mod 2``) and for ``assign_owners`` at several ``imbalance`` bounds, the rows give the groups
of the whole meta-batch, the groups a rank holds (mean over ranks and meta-steps, and the busier
rank's mean), and the largest and smallest run counts a rank held. The vectorised engine's cost
per inner step grows with the groups a rank holds (one loss call per group whatever its size),
so the busier rank's groups is the figure to compare.
"""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
IMBALANCES = (0.0, 0.125, 0.25, 0.5)


def _draws(cfg, num_runs: int, steps: int) -> list[list]:
    """Per meta-step every slot's group key (the same draws as the trainer's refresh)."""
    from omegaconf import OmegaConf

    import tasks
    from metaopt.meta import TRAIN_TASK_SEED_LIMIT, make_horizon

    family = tasks.get(cfg.task.name, dtype=cfg.dtype,
                       **OmegaConf.to_container(cfg.task.kwargs, resolve=True))
    u = cfg.unroll
    horizon = make_horizon(u.schedule, u.horizon, u.min_horizon, u.max_horizon)
    generator = torch.Generator().manual_seed(cfg.seed)
    keys: list = [None] * num_runs
    left = [0] * num_runs
    out = []
    for _ in range(steps):
        new = []
        for slot in range(num_runs):
            if left[slot] <= 0:
                seed = int(torch.randint(TRAIN_TASK_SEED_LIMIT, (), generator=generator))
                torch.randint(2 ** 62, (), generator=generator)  # the run's batch seed
                length = horizon.sample(generator)
                keys[slot] = family.sample_seed(seed).batch_key()
                left[slot] = -(-length // u.truncation_length)
                new.append(slot)
        out.append((new, list(keys)))
        left = [n - 1 for n in left]
    return out


def _row(rule: str, draws, owners_of) -> dict:
    groups, busier, counts, total = [], [], [], []
    owners: list = [None] * len(draws[0][1])
    for new, keys in draws:
        owners = owners_of([None if s in new else o for s, o in enumerate(owners)], keys)
        per = [len({k for k, o in zip(keys, owners) if o == r}) for r in range(2)]
        groups += per
        busier.append(max(per))
        counts += [owners.count(r) for r in range(2)]
        total.append(len(set(keys)))
    return {"rule": rule, "groups_per_batch": round(sum(total) / len(total), 2),
            "groups_per_rank": round(sum(groups) / len(groups), 2),
            "busier_rank_groups": round(sum(busier) / len(busier), 2),
            "max_runs": max(counts), "min_runs": min(counts)}


def run(args) -> list[dict]:
    from metaopt.meta.distributed import assign_owners, owner_cap
    from scripts.meta_train import load_config

    config = args.config or ROOT / "configs" / "garo_general.yaml"
    cfg = load_config(str(config), ["out_dir=/tmp/metaopt-meta-owners"])
    num_runs = max(64, cfg.unroll.num_tasks)
    draws = _draws(cfg, num_runs, max(args.rounds, 1))
    rows = [_row("position", draws, lambda owners, keys: [s % 2 for s in range(len(keys))])]
    for imbalance in IMBALANCES:
        cap = owner_cap(num_runs, 2, imbalance)
        rows.append(_row(f"by key, imbalance {imbalance}", draws,
                         lambda owners, keys, cap=cap: assign_owners(owners, keys, 2, cap)))
    for row in rows:
        row["runs"] = num_runs
    return rows
