"""Task families for metaopt, addressable by name: plug-ins of the library's task registry
(``metaopt.task_registry``), registered when this package is imported.

    >>> import tasks, torch
    >>> family = tasks.get("quadratic", dim=(2, 10), condition_number=(1, 100))
    >>> task = family.sample(torch.Generator().manual_seed(0))

``tasks.names()`` lists the registered families; ``tasks.get(name, **kwargs)`` builds one and
raises ``ValueError`` naming an unknown family or keyword.
``tasks.get("mixture", components={...})`` mixes several named families; ``tasks.get("augmented",
family={"name": ..., "kwargs": {...}}, loss_scale=[lo, hi], param_scale=[lo, hi])`` rescales
each sampled task's loss and parameters.
``tasks.register(name, factory)`` adds a plug-in family.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from metaopt import task_registry as _families
from metaopt.task import ModuleTask, Task, TaskFamily

from .attention import AttentionFamily
from .augment import AugmentedFamily
from .autoencoder import AutoencoderDigitsFamily
from .char_mlp import CharMLPFamily
from .cnn import CNNDigitsFamily
from .logistic import LogisticRegressionFamily
from .mixture import MixtureFamily
from .mlp import MLPFamily
from .quadratic import QuadraticFamily, noisy_quadratic_family
from .regression import LinearRegressionFamily
from .residual import ResidualMLPFamily
from .sequence import SequenceFamily
from .tabular import TabularRegressionFamily
from .test_functions import TEST_FUNCTIONS_2D, TestFunctionFamily
from .test_functions_nd import NDTestFunctionFamily
from .vision import ResNetDigitsFamily, ViTDigitsFamily

__all__ = ["ModuleTask", "Task", "TaskFamily", "get", "names", "register"]

# the library's registry (metaopt.task_registry); the same dict, under its old name
_REGISTRY: dict[str, Callable[..., TaskFamily]] = _families._FAMILIES


def register(name: str, factory: Callable[..., TaskFamily], *, overwrite: bool = False) -> None:
    """Register ``factory(**kwargs) -> TaskFamily`` under ``name``
    (``metaopt.task_registry.register_family``)."""
    _families.register_family(name, factory, overwrite=overwrite)


def names() -> list[str]:
    """Sorted names of all registered task families."""
    return _families.family_names()


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Build the family registered as ``name`` with ``kwargs``
    (``metaopt.task_registry.get_family``).

    Raises ``ValueError`` naming the family if it is unknown, or the offending keyword if the
    family does not accept it; a family's own validation errors (bad values) propagate as
    ``ValueError`` with the family name prefixed.
    """
    return _families.get_family(name, **kwargs)


def _mixture(components: Mapping[str, Mapping[str, Any]],
             weights: Mapping[str, float] | None = None, device=None, dtype=None) -> MixtureFamily:
    """``components`` maps family name -> kwargs; ``weights`` maps family name -> weight."""
    families, family_weights = [], []
    for component, component_kwargs in components.items():
        extra = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        families.append(get(component, **{**extra, **dict(component_kwargs or {})}))
        family_weights.append(1.0 if weights is None else float(weights.get(component, 0.0)))
    return MixtureFamily(families, family_weights)


def _augmented(family: str | Mapping[str, Any], loss_scale=None, param_scale=None, device=None,
               dtype=None) -> AugmentedFamily:
    """``family``: a family name, or ``{"name": ..., "kwargs": {...}}``; the scale ranges are
    ``[low, high]`` pairs (log-uniform), None for no rescaling of that kind."""
    if isinstance(family, str):
        name, family_kwargs = family, {}
    elif isinstance(family, Mapping):
        unknown = sorted(set(family) - {"name", "kwargs"})
        if unknown or "name" not in family:
            raise ValueError(f"family: needs 'name' and optional 'kwargs', got keys "
                             f"{sorted(family)}")
        name, family_kwargs = family["name"], dict(family.get("kwargs") or {})
    else:
        raise ValueError(  # noqa: TRY004 (tasks.get reports bad arguments as ValueError)
            f"family: a name or {{'name': ..., 'kwargs': ...}}, got {family!r}")
    extra = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return AugmentedFamily(get(name, **{**extra, **family_kwargs}), loss_scale, param_scale)


for _function in TEST_FUNCTIONS_2D:
    register(_function, functools.partial(TestFunctionFamily, _function))
for _function in ("rosenbrock_nd", "rastrigin_nd"):
    register(_function, functools.partial(NDTestFunctionFamily, _function))
register("quadratic", QuadraticFamily)
register("noisy_quadratic", noisy_quadratic_family)
register("least_squares", functools.partial(LinearRegressionFamily, lasso=False))
register("lasso", functools.partial(LinearRegressionFamily, lasso=True))
register("logistic_regression", LogisticRegressionFamily)
register("mlp", MLPFamily)
register("cnn_digits", CNNDigitsFamily)
register("mixture", _mixture)
register("augmented", _augmented)
register("sequence", SequenceFamily)
register("autoencoder_digits", AutoencoderDigitsFamily)
register("resnet_digits", ResNetDigitsFamily)
register("vit_digits", ViTDigitsFamily)
register("char_mlp", CharMLPFamily)  # validation only: checkpoint selection
# held out of every meta-training and validation mixture: the learned-vs-tuned benchmark's
# families (with rosenbrock)
register("residual_mlp", ResidualMLPFamily)
register("attention", AttentionFamily)
register("tabular_regression", TabularRegressionFamily)
