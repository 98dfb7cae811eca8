"""Hermetic test environment: W&B runs offline into a temp dir, never logs in, never calls out.

Tests run single-threaded: their tensors are tiny, and a second intra-op thread only adds
contention (measured up to ~17x slower on a loaded 2-core machine).
"""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _hermetic_wandb(tmp_path_factory):
    wandb_root = tmp_path_factory.mktemp("wandb")
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR",
                                             "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                                             "WANDB_SILENT", "WANDB_API_KEY")}
    os.environ.update({"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_root),
                       "WANDB_CACHE_DIR": str(wandb_root / "cache"),
                       "WANDB_CONFIG_DIR": str(wandb_root / "config"),
                       "WANDB_DATA_DIR": str(wandb_root / "data"), "WANDB_SILENT": "true"})
    os.environ.pop("WANDB_API_KEY", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value



@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
