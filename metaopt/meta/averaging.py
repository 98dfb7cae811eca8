"""Averaging a meta-training run's controller snapshots: the uniform mean of the weights,

    φ̄ = (1/K) Σ_k φ_{t_k},

stochastic weight averaging (Izmailov et al. 2018, "Averaging weights leads to wider optima and
better generalization") applied to the controller, in the spirit of Polyak–Ruppert averaging.
Meta-gradients from a few sampled tasks per meta-step make consecutive snapshots swing in
quality; their average is a candidate that selection scores like any snapshot.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["average_snapshots", "snapshot_step"]

_STEP = re.compile(r"step_(\d+)$")


def snapshot_step(path: Path) -> int | None:
    """The meta-step of a ``snapshots/step_NNNNNN.safetensors`` file (None for other names)."""
    match = _STEP.search(Path(path).stem)
    return int(match.group(1)) if match else None


def average_snapshots(paths: Sequence[Path], out: Path) -> Path:
    """Write the checkpoint whose controller weights are the mean of ``paths``' (float tensors
    averaged in float64; other tensors must agree) to ``out``; its provenance is the first
    file's, plus ``averaged_snapshots``. Files of different controllers or options are refused."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_snapshots: no snapshots to average")
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0]
    keys = ("controller_class", "controller_config", "optimizer_class", "optimizer_config")
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        differ = [k for k in keys if checkpoint.metadata.get(k) != first.metadata.get(k)]
        if differ:
            raise CheckpointError(f"{path}: cannot be averaged with {paths[0]}: {differ} differ")
    states = [c.controller.state_dict() for c in checkpoints]
    mean = {}
    for name, value in states[0].items():
        if value.is_floating_point():
            stacked = torch.stack([s[name].to(torch.float64) for s in states])
            mean[name] = stacked.mean(0).to(value.dtype)
        elif all(torch.equal(s[name], value) for s in states):
            mean[name] = value
        else:
            raise CheckpointError(f"average_snapshots: {name} (not a float tensor) differs "
                                  f"between the snapshots")
    controller = copy.deepcopy(first.controller)
    controller.load_state_dict(mean)
    training = {**first.training, "averaged_snapshots": [p.name for p in paths]}
    return save_checkpoint(out, controller, first.optimizer_config, training,
                           optimizer_class=first.metadata.get("optimizer_class", "GARO"))
