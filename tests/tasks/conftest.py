"""Small, fast configurations of every registered family (used by the generic family tests)."""

import pytest
import torch

import tasks

# kwargs that keep each family small so the whole suite stays fast
FAST_KWARGS = {
    "quadratic": {"dim": (2, 8)},
    "noisy_quadratic": {"dim": (2, 8)},
    "least_squares": {"num_features": (3, 8), "num_train": (30, 60)},
    "lasso": {"num_features": (3, 8), "num_train": (30, 60)},
    "logistic_regression": {"datasets": ("digits", "wine", "breast_cancer", "synthetic")},
    "mlp": {"datasets": ("digits", "synthetic"), "width": (8, 16)},
    "cnn_digits": {"channels": (2, 4)},
    "rosenbrock_nd": {"dim": (2, 6)},
    "rastrigin_nd": {"dim": (2, 6)},
    "augmented": {"family": {"name": "mlp", "kwargs": {"datasets": ("digits",), "width": (8, 16)}},
                  "loss_scale": (0.01, 100.0), "param_scale": (0.1, 10.0)},
    "sequence": {"length": (6, 8), "hidden": (4, 8), "num_train": 64, "num_test": 32},
    "char_mlp": {"hidden": 16, "eval_windows": 256},
    "autoencoder_digits": {"hidden": (8, 16), "bottleneck": (2, 4)},
    "residual_mlp": {"datasets": ("digits", "iris"), "width": (8, 16), "depth": (1, 2)},
    "attention": {"length": (6, 8), "num_train": 64, "num_test": 32, "head_dim": 4},
    "tabular_regression": {"hidden": (4, 8)},
    "resnet_digits": {"channels": (2, 4), "batch_sizes": (16,)},
    "vit_digits": {"patches": (4,), "head_dim": 4, "batch_sizes": (16,)},
    "mixture": {"components": {"quadratic": {"dim": (2, 4)}, "rosenbrock": {},
                               "mlp": {"width": (8, 8)}}},
}

FAMILY_NAMES = tasks.names()


def fast_family(name, **extra):
    return tasks.get(name, **{**FAST_KWARGS.get(name, {}), **extra})


@pytest.fixture(autouse=True)
def single_intra_op_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and contention on a loaded
    2-core machine). Restored afterwards so other test directories are unaffected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
