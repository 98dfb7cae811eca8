"""Persistent evolution strategies: unbiased meta-gradients from truncated unrolls.

Vicol, Metz & Sohl-Dickstein 2021 ("Unbiased gradient estimation in unrolled computation graphs
with persistent evolution strategies", ICML). Truncated ES and truncated BPTT both treat the state
at the start of a truncation as a constant, so they ignore how φ shaped it: a bias towards greedy,
short-horizon behaviour. PES removes it by letting each antithetic particle *persist*: particle
``±`` of pair ``j`` on run ``i`` carries its own inner state from one truncation to the next,
always unrolled at its own perturbed ``φ ± σε_{j,t}``, and remembers the sum of the perturbations
that shaped it, ``ξ_{ij} = Σ_{t' ≤ t} ε_{j,t'}``. For truncation ``t`` with segment meta-losses
``M^±_{ij}``::

    ĝ_t = (1/P) Σ_j mean_{i ∈ live_j} [M^+_{ij} − M^-_{ij}] / (2σ) · ξ_{ij}

(with ``ε ~ N(0, I)`` and perturbations ``σε``). Summed over the truncations of a run,
``E[Σ_t ĝ_t] = ∇_φ E[Σ_t M_t(φ + σε_1, .., φ + σε_t)]``: the gradient of the Gaussian-smoothed
loss of the *whole* unroll (the paper's Eq. 8; ES is the case ``ξ = ε``). The price is variance
growing with the number of truncations a particle has lived through.

When a run is replaced (new task, detected through ``pool.run_keys()``), its particles restart
from the run's state with ``ξ = 0``. If either particle of a pair diverges on a run, that pair drops
out of the estimate for the run, and both of its particles restart from the run's (unperturbed)
state after this truncation with ``ξ = 0``. The perturbation ``ε_{j,t}`` is shared by all runs at
truncation ``t`` (as ``AntitheticES`` does); each run keeps its own ``ξ``, since runs start at
different times. After the probes the runs advance one truncation at ``φ`` itself (the reported
meta-loss). Particles and ``ξ`` are in ``state_dict()`` so a resumed meta-training is bit-exact.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..inner_runs import InnerRunPool, _to_device
from ..learned import detach_state, perturbed
from .base import GradientEstimator, MetaGradient, advance_at


class PersistentES(GradientEstimator):
    """Args: ``num_pairs`` (P, antithetic particle pairs per run), ``sigma`` (σ)."""

    name = "pes"

    def __init__(self, num_pairs: int = 8, sigma: float = 0.01):
        if num_pairs < 1:
            raise ValueError(f"num_pairs: must be >= 1, got {num_pairs!r}")
        if not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"sigma: must be finite and > 0, got {sigma!r}")
        self.num_pairs, self.sigma = int(num_pairs), float(sigma)
        # Per run of the pool (in its order): the run's key, and per pair [plus, minus]
        # particles ((params, state) or None = "at the run's own state") and ξ (None = 0).
        self._keys: list = []
        self._particles: list[list[list]] = []
        self._xi: list[list[dict[str, Tensor] | None]] = []
        self._loaded = False  # particles loaded on the CPU move to φ's device on the next estimate

    def _sync(self, pool: InnerRunPool) -> None:
        """Follow the pool's runs: a run keeps its particles and ξ wherever it now stands in the
        list (matched by ``run_keys()``: a sharded pool re-lists the runs it holds when it is
        given new ones), a new run gets fresh ones."""
        keys = pool.run_keys()
        if keys == self._keys:
            return
        kept = {key: (particles, xi) for key, particles, xi in
                zip(self._keys, self._particles, self._xi) if key is not None}
        self._keys, self._particles, self._xi = list(keys), [], []
        for key in keys:
            particles, xi = kept.pop(key, (None, None)) if key is not None else (None, None)
            if particles is None:
                particles = [[None, None] for _ in range(self.num_pairs)]
                xi = [None] * self.num_pairs
            self._particles.append(particles)
            self._xi.append(xi)

    def estimate(self, pool: InnerRunPool, weights: Mapping[str, Tensor],
                 generator: torch.Generator) -> MetaGradient:
        self._sync(pool)
        base = {k: w.detach() for k, w in weights.items()}
        if self._loaded and base:
            device = next(iter(base.values())).device
            self._particles, self._xi = _to_device(self._particles, device), _to_device(
                self._xi, device)
            self._loaded = False
        grads = {k: torch.zeros_like(w) for k, w in base.items()}
        dropped: list[tuple[int, int]] = []
        for j in range(self.num_pairs):
            noise = {k: torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                     for k, w in base.items()}
            probes = []
            for sign in (1.0, -1.0):
                starts = [self._particles[i][j][0 if sign > 0 else 1]
                          for i in range(len(self._keys))]
                probes.append(pool.segment(perturbed(base, noise, sign * self.sigma),
                                           differentiable=False, advance=False, starts=starts))
            plus, minus = probes
            terms = []
            for i in range(len(self._keys)):
                xi = noise if self._xi[i][j] is None else {
                    k: self._xi[i][j][k] + noise[k] for k in noise}
                if plus.losses[i] is None or minus.losses[i] is None:
                    dropped.append((i, j))
                    continue
                self._xi[i][j] = xi
                self._particles[i][j] = [plus.ends[i], minus.ends[i]]
                terms.append((plus.losses[i] - minus.losses[i], xi))
            if not terms:
                continue
            scale = 1.0 / (2 * self.sigma * self.num_pairs * len(terms))
            for difference, xi in terms:
                for k, grad in grads.items():
                    grad += (scale * difference).to(grad.dtype) * xi[k]
        for i, j in dropped:  # restart the pair from the run's state after this truncation
            self._particles[i][j], self._xi[i][j] = [None, None], None
        return advance_at(pool, base, grads)

    # -- persistence (weights_only-loadable: lists, dicts, tensors, ints, None) --------------------
    def state_dict(self) -> dict[str, Any]:
        return {"num_pairs": self.num_pairs,
                "keys": [None if k is None else list(k) for k in self._keys],
                "particles": [[[None if p is None else {"params": list(p[0]), "state": p[1]}
                                for p in pair] for pair in run] for run in
                              detach_state(self._particles)],
                "xi": detach_state(self._xi)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; an empty state (a run saved by another estimator) starts
        every particle afresh from its run's current state."""
        if not state:
            self._keys, self._particles, self._xi = [], [], []
            return
        if int(state["num_pairs"]) != self.num_pairs:
            raise ValueError(f"state: saved with num_pairs={state['num_pairs']}, "
                             f"this estimator has {self.num_pairs}")
        self._keys = [None if k is None else tuple(int(x) for x in k) for k in state["keys"]]
        self._particles = [[[None if p is None else (list(p["params"]), dict(p["state"]))
                             for p in pair] for pair in run] for run in state["particles"]]
        self._xi = [[None if x is None else dict(x) for x in run] for run in state["xi"]]
        self._loaded = True
