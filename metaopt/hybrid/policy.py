"""The learned GD/ODE switching policy: normalised switching features → P(ODE step).

The hybrid GD–ODE method's switching criteria ("develop criteria for switching"), learned instead of
hand-set. It reads exactly the features of the heuristic (``metaopt.hybrid.rule.FEATURES``:
log gradient ratio, log stability lr·κ, relative progress, current mode, log dwell)::

    z = clip((x − μ) / σ, ±clip)            μ, σ: stored feature statistics (checkpoint buffers)
    p = sigmoid(w₂ᵀ tanh(W₁ z + b₁) + b₂)

With ``extra_features`` (``GARO_FEATURES``: GARO's last momentum μ_{t−1} and log lr-multiplier
log(m_{t−1}/lr₀), when the GD module is a GARO controller; ``metaopt.hybrid.garo_module``) the
policy reads them after ``FEATURES``; a policy without them (every checkpoint written before) has
exactly the five inputs above.

A feed-forward net is enough because the recurrent part of the decision — hysteresis, dwell —
is in its inputs (mode and dwell). The output bias starts at ``logit(init_ode_probability)``
and the read-out weights at 0, so the untrained policy is the constant "almost always GD"
(an untrained controller behaves like plain GD), yet every weight gets a gradient.
``forward`` is pure (``torch.func.functional_call`` swaps its weights in meta-training).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .rule import FEATURES, NUM_FEATURES

#: feature scales the untrained policy normalises by (log-ratios span decades; progress ±1)
DEFAULT_FEATURE_MEAN = (-3.0, -1.0, 0.0, 0.5, 1.5)
DEFAULT_FEATURE_STD = (3.0, 3.0, 0.3, 0.5, 1.0)
#: inputs a policy may read besides ``FEATURES`` -> (mean, std) of the untrained policy's scaling
EXTRA_FEATURES = {"garo_momentum": (0.5, 0.5), "garo_log_lr": (0.0, 1.0)}


class SwitchingPolicy(nn.Module):
    """Args: ``hidden_size``, ``init_ode_probability`` (output of the untrained policy),
    ``feature_clip``, ``extra_features`` (names of ``EXTRA_FEATURES`` read after ``FEATURES``),
    ``generator`` (initial hidden weights; default seeded with 0)."""

    def __init__(self, hidden_size: int = 16, init_ode_probability: float = 0.05,
                 feature_clip: float = 5.0, extra_features: tuple[str, ...] | list[str] = (),
                 generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(extra_features, str) or not all(
                isinstance(name, str) and name in EXTRA_FEATURES for name in extra_features) \
                or len(set(extra_features)) != len(extra_features):
            raise ValueError(f"extra_features: must be distinct names of "
                             f"{sorted(EXTRA_FEATURES)}, got {extra_features!r}")
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 1:
            raise ValueError(f"hidden_size: must be an int >= 1, got {hidden_size!r}")
        if not 0 < init_ode_probability < 1:
            raise ValueError(f"init_ode_probability: must lie in (0, 1), "
                             f"got {init_ode_probability!r}")
        if not feature_clip > 0:
            raise ValueError(f"feature_clip: must be > 0, got {feature_clip!r}")
        self.hidden_size = hidden_size
        self.init_ode_probability = float(init_ode_probability)
        self.feature_clip = float(feature_clip)
        self.extra_features = tuple(extra_features)
        scales = [EXTRA_FEATURES[name] for name in self.extra_features]
        self.hidden = nn.Linear(self.num_inputs, hidden_size)
        self.head = nn.Linear(hidden_size, 1)
        self.register_buffer("feature_mean", torch.tensor(
            DEFAULT_FEATURE_MEAN + tuple(m for m, _ in scales)))
        self.register_buffer("feature_std", torch.tensor(
            DEFAULT_FEATURE_STD + tuple(s for _, s in scales)))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        if self.head.weight.is_meta:  # a shape-only twin (checkpoint checks): no values, and
            return                    # meta arithmetic would import torch._dynamo (~2 s)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        bound = 1.0 / math.sqrt(self.num_inputs)
        for w in self.hidden.parameters():
            w.copy_(torch.rand(w.shape, generator=generator, dtype=w.dtype) * 2 * bound - bound)
        self.head.weight.zero_()
        p = self.init_ode_probability
        self.head.bias.fill_(math.log(p / (1 - p)))

    @property
    def num_inputs(self) -> int:
        return NUM_FEATURES + len(self.extra_features)

    @property
    def config(self) -> dict[str, Any]:
        config = dict(hidden_size=self.hidden_size,
                      init_ode_probability=self.init_ode_probability,
                      feature_clip=self.feature_clip)
        if self.extra_features:  # (absent from older checkpoints: the five FEATURES only)
            config["extra_features"] = list(self.extra_features)
        return config

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURES + self.extra_features

    def logit(self, features: Tensor) -> Tensor:
        dtype = self.head.weight.dtype
        z = (features.to(dtype) - self.feature_mean) / self.feature_std
        z = z.clamp(-self.feature_clip, self.feature_clip)
        return self.head(torch.tanh(self.hidden(z))).squeeze(-1).to(features.dtype)

    def forward(self, features: Tensor) -> Tensor:
        """P(ODE step) for ``features`` of shape (..., num_inputs)."""
        return torch.sigmoid(self.logit(features))


class PolicyGate:
    """A policy evaluated at weights ``weights`` (``functional_call``) behind the rule's gate API.

    ``hard=True``: the runtime decision p > 0.5; ``hard=False``: the relaxed gate p itself;
    ``straight_through=True`` (with ``hard=False``): the forward value is the hard decision
    1[p > 0.5] — the unroll is the runtime trajectory — while the backward pass differentiates
    p (Bengio et al. 2013's straight-through estimator).
    """

    def __init__(self, module: SwitchingPolicy, weights: dict[str, Tensor] | None = None,
                 hard: bool = True, straight_through: bool = False):
        self.module, self.weights, self.hard = module, weights, hard
        self.straight_through = straight_through

    def gate(self, features: Tensor) -> Tensor:
        if self.weights is None:
            return self.module(features)
        return torch.func.functional_call(self.module, self.weights, (features,))
