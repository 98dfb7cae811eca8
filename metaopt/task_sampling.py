"""Seeded draws for task families: every random choice a ``TaskFamily`` makes goes through these.

A family samples its tasks' dimensions, conditioning, widths, data subsets and initial points
from an explicit CPU ``torch.Generator`` (``generator_from_seed``), never the global RNG:

* ``sample_log_uniform``: ``exp(U(log low, log high))``, for scale parameters that vary by decades;
* ``sample_int_log_uniform`` and ``sample_choice``: integers and options;
* ``fan_in_uniform_init``: PyTorch's default Linear/Conv initialisation,
  ``U(−1/√fan_in, 1/√fan_in)``, drawn in float64 from the generator.

``metaopt.task`` re-exports them with the task protocol.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


def generator_from_seed(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed`` (the only way tasks draw randomness)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def sample_log_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """``exp(U(log low, log high))``: scale parameters (condition numbers, widths) vary by
    decades."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def sample_int_log_uniform(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]``, log-uniform (rounded), e.g. a layer width in 8..128."""
    return int(min(high, max(low, round(sample_log_uniform(generator, low, high)))))


def sample_choice(generator: torch.Generator, options: tuple | list) -> Any:
    """One element of ``options``, uniformly."""
    if len(options) == 0:
        raise ValueError("cannot choose from an empty list of options")
    index = int(torch.randint(len(options), (), generator=generator).item())
    return options[index]


def fan_in_uniform_init(module: nn.Module, generator: torch.Generator) -> Params:
    """Parameters for ``module`` drawn like PyTorch's default Linear/Conv init, from ``generator``.

    Every ``weight`` of shape ``(out, in, *kernel)`` and its ``bias`` are drawn from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in * prod(kernel)``: this is what
    ``kaiming_uniform_(a=sqrt(5))`` reduces to, so tasks train like stock PyTorch models, but the
    draw is reproducible from the generator instead of the global RNG. Numbers are drawn in float64
    on the CPU and cast, so the same seed gives the same initial point in every dtype/device.
    """
    params: Params = {}
    for module_name, submodule in module.named_modules():
        weight = getattr(submodule, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        prefix = f"{module_name}." if module_name else ""
        for leaf in ("weight", "bias"):
            tensor = getattr(submodule, leaf, None)
            if isinstance(tensor, nn.Parameter):
                draw = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                params[prefix + leaf] = (2.0 * draw - 1.0) * bound
    missing = {name for name, _ in module.named_parameters()} - set(params)
    if missing:
        raise ValueError(f"fan_in_uniform_init does not know how to initialise {sorted(missing)}")
    return params
