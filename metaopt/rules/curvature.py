"""Curvature metrics of the local Hessian from a Lanczos probe (DCAO's "Curvature Metrics").

With λ_1 … λ_k the top-k Hessian eigenvalues by magnitude (``lanczos.py``), DCAO defines

    spectral radius   ρ(H) = max_i |λ_i|
    spectral gap      γ(H) = max_{i≠j} |λ_i − λ_j|   (= max_i λ_i − min_i λ_i over the top k)

and we add two diagnostics: the leading gap λ_1 − λ_2 (magnitude order, as in power-iteration
convergence rates) and a Hutchinson estimate of tr(H) (the mean curvature, ``hvp.py``).
``probe_curvature`` bundles one probe; it is usable on its own by analysis tools.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import TensorList
from .hvp import HessianVectorProduct, hutchinson_trace
from .lanczos import DEFAULT_TOL, lanczos


def spectral_radius(eigenvalues: Tensor) -> Tensor:
    """ρ = max_i |λ_i| (0 for an empty spectrum)."""
    if eigenvalues.numel() == 0:
        return eigenvalues.new_zeros(())
    return eigenvalues.abs().max()


def spectral_gap(eigenvalues: Tensor) -> Tensor:
    """γ = max_{i≠j} |λ_i − λ_j| = max λ − min λ (DCAO's gap; 0 with fewer than 2 values)."""
    if eigenvalues.numel() < 2:
        return eigenvalues.new_zeros(())
    return eigenvalues.max() - eigenvalues.min()


def leading_gap(eigenvalues: Tensor) -> Tensor:
    """λ_1 − λ_2 with eigenvalues ordered by magnitude (0 with fewer than 2 values)."""
    if eigenvalues.numel() < 2:
        return eigenvalues.new_zeros(())
    ordered = eigenvalues[torch.argsort(eigenvalues.abs(), descending=True, stable=True)]
    return ordered[0] - ordered[1]


@dataclass
class CurvatureProbe:
    eigenvalues: Tensor            # float64 top-k by |λ|, descending magnitude
    spectral_radius: Tensor        # float64 scalar ρ
    spectral_gap: Tensor           # float64 scalar γ (DCAO's definition)
    leading_gap: Tensor            # float64 scalar λ_1 − λ_2
    residuals: Tensor              # Ritz residual norms of the eigenpairs
    top_eigenvector: TensorList    # unit vector for λ_1 (warm start for the next probe)
    hvp_count: int                 # Hessian-vector products spent (Lanczos + Hutchinson)
    converged: bool
    trace: Tensor | None = None  # Hutchinson tr(H) estimate when requested
    step: int = 0                  # optimizer step at which the probe was taken
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain Python numbers for logging (the history entries of ``DCAO``)."""
        out = {"step": self.step, "spectral_radius": float(self.spectral_radius),
               "spectral_gap": float(self.spectral_gap), "leading_gap": float(self.leading_gap),
               "eigenvalues": [float(v) for v in self.eigenvalues], "hvp_count": self.hvp_count,
               "converged": self.converged}
        if self.trace is not None:
            out["trace"] = float(self.trace)
        return out


def probe_curvature(hvp: Callable[[Sequence[Tensor]], TensorList], like: Sequence[Tensor],
                    k: int = 5, max_iters: int = 20, tol: float = DEFAULT_TOL,
                    generator: torch.Generator | None = None,
                    init: Sequence[Tensor] | None = None, trace_samples: int = 0,
                    step: int = 0) -> CurvatureProbe:
    """One curvature probe: Lanczos top-k eigenpairs, ρ, γ, λ_1 − λ_2 (and tr(H) if asked).

    At most ``max_iters`` HVPs; Lanczos stops earlier once every top-k Ritz residual is
    ≤ ``tol·max|θ|`` (``lanczos.DEFAULT_TOL`` = 1e-6 unless given)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    result = lanczos(hvp, like, k=k, max_iters=max_iters, tol=tol, generator=generator,
                     init=init)
    hvp_count = result.iterations
    trace = None
    if trace_samples:
        counted = hvp if isinstance(hvp, HessianVectorProduct) else HessianVectorProduct(hvp)
        before = counted.count
        trace = hutchinson_trace(counted, like, generator, samples=trace_samples)
        hvp_count += counted.count - before
    eigenvalues = result.eigenvalues
    return CurvatureProbe(eigenvalues=eigenvalues, spectral_radius=spectral_radius(eigenvalues),
                          spectral_gap=spectral_gap(eigenvalues),
                          leading_gap=leading_gap(eigenvalues), residuals=result.residuals,
                          top_eigenvector=result.eigenvectors[0], hvp_count=hvp_count,
                          converged=result.converged, trace=trace, step=step)
