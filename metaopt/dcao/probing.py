"""DCAO's curvature probes inside its optimizer: when one is due, how it runs, what it keeps.

DCAO (dynamic curvature-aware optimizer) probes the Hessian every ``probe_every`` steps (first at
step 0), and every ``reprobe_every`` steps while its stall guard holds the step up (``stalled``:
the scheduled step, η₀e^{−αρ} under DCAO's own schedule, is below the floor min(r·η₀, c·2/ρ) of
``metaopt.dcao.rule``). A probe runs the closure with the gradient's graph kept and takes at most
``lanczos_iters`` Hessian-vector products (``metaopt.rules.curvature``: Lanczos, warm-started
from each parameter's previous top eigenvector); given a ``model`` it runs on a second closure
call in eval mode under ``clean_probe``, buffers and RNG restored. It keeps the per-parameter
warm-start vector, ``last_curvature`` and one ``history`` entry.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..adapters.non_finite import all_finite, check_loss, loss_is_finite
from ..rules.curvature import probe_curvature
from ..rules.hvp import CreateGraphBackward, gradient_hvp
from .rule import dcao_schedule

__all__ = ["CurvatureProbing", "clean_probe"]


@contextlib.contextmanager
def clean_probe(model: nn.Module | None, device: torch.device):
    """Deterministic, side-effect-free probe: eval mode (no dropout, batch-norm uses and keeps its
    running statistics), buffers restored and the RNG forked, whatever custom modules do."""
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [device.index or 0] if device.type not in ("cpu", "meta") else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        model.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


class CurvatureProbing:
    """Mixin of ``DCAO``: its probe schedule and the probe itself (module docstring)."""

    def _probe_due(self) -> bool:
        """Every ``probe_every`` steps, and every ``reprobe_every`` while the stall guard holds
        the step up (decided from the last probe alone, so a resumed run probes identically)."""
        if self.steps_taken % self.probe_every == 0:
            return True
        probe = self.last_curvature
        return (probe is not None and self.steps_taken - probe.step >= self.reprobe_every
                and self.stalled())

    def stalled(self) -> bool:
        """True when the last probe's DCAO-schedule step is below the stall guard's floor."""
        probe = self.last_curvature
        if probe is None or self.stall_ratio == 0:
            return False
        rho = float(probe.spectral_radius)
        for group in self.param_groups:
            seed_lr = dcao_schedule(rho, 0.0, float(group["lr"]), 0.0, 0.0, self.alpha, 0.0, 0.0,
                                    self.schedule, self.stability_factor)[0]
            guarded = dcao_schedule(rho, 0.0, float(group["lr"]), 0.0, 0.0, self.alpha, 0.0, 0.0,
                                    self.schedule, self.stability_factor, self.stall_ratio)[0]
            if guarded > seed_lr:
                return True
        return False

    def _probe(self, closure) -> tuple[Tensor, bool]:
        """Probe the curvature; returns the loss and whether loss and gradient are finite (a
        non-finite one is not probed: its eigenvalues would poison the schedule)."""
        if self.model is None:
            # One closure call serves both the probe (graph kept) and the update (same gradient).
            with torch.enable_grad(), CreateGraphBackward() as mode:
                loss = check_loss(closure(), "DCAO.step")
            self._count_grad_evals(1)
            _require_backward(mode)
            params = self._active()
            finite = loss_is_finite(loss) and all_finite([p.grad for p in params])
            measured = [p for p in params if p.numel() > 0]  # no curvature in an empty tensor
            if measured and finite:
                self._measure(measured, [p.grad for p in measured])
            for p in params:
                p.grad = p.grad.detach()  # frees the graph, breaks the param <-> grad cycle
            return loss, finite
        with torch.enable_grad():
            loss = check_loss(closure(), "DCAO.step")
        self._count_grad_evals(2)  # the training gradient, then the eval-mode probe's
        train_grads = {p: p.grad for p in self._active()}
        finite = loss_is_finite(loss) and all_finite(list(train_grads.values()))
        device = next(iter(train_grads)).device if train_grads else torch.device("cpu")
        with clean_probe(self.model, device):
            with torch.enable_grad(), CreateGraphBackward() as mode:
                closure()
            _require_backward(mode)
            # HVPs inside the context: the graph saved the eval-mode buffers it must not see change
            params = [p for p in self._active() if p in train_grads and p.numel() > 0]
            if params and finite:
                self._measure(params, [p.grad for p in params])
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = train_grads.get(p)
        return loss, finite

    def _measure(self, params: list[Tensor], grads: list[Tensor]) -> None:
        init = [self.state[p].get("curvature_vector", torch.zeros_like(p)) for p in params]
        probe = probe_curvature(gradient_hvp(grads, params), params, k=self.k,
                                max_iters=self.lanczos_iters, tol=self.tol,
                                generator=self.generator, init=init, step=self.steps_taken)
        for p, v in zip(params, probe.top_eigenvector):
            self.state[p]["curvature_vector"] = v.detach().clone()
        self.last_curvature = probe
        self.history.append(probe.summary())


def _require_backward(mode: CreateGraphBackward) -> None:
    """Without ``loss.backward()`` the probe sees no graph: every HVP would be 0, ρ = 0."""
    if mode.backward_calls == 0:
        raise RuntimeError(
            "DCAO probe: the closure never called loss.backward(); the probe needs it to keep "
            "the gradient's graph (gradients from torch.autograd.grad / autograd.backward or "
            "assigned to p.grad are invisible to it)")
