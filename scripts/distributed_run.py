"""``scripts/meta_train.py`` under torchrun: the process group, the shared checkpoint and the
all-ranks-or-none resume.

    torchrun --standalone --nproc_per_node 2 scripts/meta_train.py --config configs/garo.yaml

* ``init_distributed``: joins the process group torchrun describes (gloo on CPU, nccl on CUDA);
  the meta-batch of ``unroll.num_tasks`` runs is then sharded over the ranks
  (``metaopt.meta.distributed``: the same runs and meta-gradient as one process).
* ``save_state``: one ``state.pt``, gathered from every rank and written by rank 0 alone
  (``metaopt.meta.training_state.gather_training_state``): the shared controller, Adam state,
  generator and counters, and per rank its runs and estimator state with a digest of the shared
  part as that rank held it.
* ``agree_on_resume``: every rank reads and checks the whole ``state.pt`` (all ranks' parts and
  their digests) and loads its own part into its trainer; then the ranks exchange their verdicts
  and the SHA-256 of the bytes they read, and unless all of them can resume the same file every
  rank refuses with the same one line (``run_dir.check_resume_agreement``) before anything in
  ``out_dir`` is written.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from metaopt.meta import distributed_world, save_training_state
from metaopt.meta.training_state import gather_training_state
from scripts import run_dir

__all__ = ["agree_on_resume", "env_int", "file_digest", "init_distributed", "save_state"]


def env_int(name: str, default: int, error: type[Exception] = ValueError) -> int:
    """``int(os.environ[name])`` (``default`` when unset); ``error`` unless an int >= 0."""
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise error(f"environment variable {name}={text!r}: must be an int >= 0 (set by "
                    "torchrun)")
    return value


def init_distributed(device: str, error: type[Exception] = ValueError,
                     ) -> tuple[int, int, str, bool]:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group: gloo on CPU, nccl on CUDA,
    one GPU per process. Returns ``(rank, world_size, device, created)``; ``created`` is False
    when a group already existed (a caller that set one up keeps it). A bad ``WORLD_SIZE`` /
    ``LOCAL_RANK`` raises ``error``."""
    world_size, local_rank = env_int("WORLD_SIZE", 1, error), env_int("LOCAL_RANK", 0, error)
    created = False
    if world_size > 1 and not torch.distributed.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
        created = True
    rank, world = distributed_world()
    return rank, world, device, created


def save_state(state: dict, path: Path, world: int) -> None:
    """Write the training state: alone directly, under torchrun gathered to rank 0 (a collective:
    every rank calls it at the same meta-step; only rank 0 writes)."""
    if world == 1:
        save_training_state(state, path, extra={"world_size": 1})
        return
    full = gather_training_state(state)
    if full is not None:
        save_training_state(full, path)


def file_digest(path: Path) -> str | None:
    """SHA-256 of the file's bytes (None when it does not exist)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def agree_on_resume(state: dict | None, failure: Exception | None, path: Path, out_dir: Path,
                    world: int) -> None:
    """Every rank refuses, with the same line, unless every rank read the same state file (or
    none) and could resume from it (a collective: the gather is also the barrier before rank 0
    writes anything)."""
    mine = {"error": None if failure is None else f"{type(failure).__name__}: {failure}",
            "digest": file_digest(path),
            "step": None if state is None else int(state["step"])}
    reports: list = [None] * world
    torch.distributed.all_gather_object(reports, mine)
    run_dir.check_resume_agreement(reports, path.name, out_dir)
