"""``num_grad_evals``: the gradient evaluations an optimizer's steps consumed, for cost
comparisons between optimizers that take a closure (a Runge-Kutta step of s stages costs s
gradient evaluations, an adaptive Dormand-Prince step 6-7 per attempt, a GD step one).

Counted: every closure call made by ``step`` (each is one forward and backward pass), and one
for a step that reads the gradient the caller already put in ``p.grad`` (no closure). Not
counted: Hessian-vector products (DCAO's Lanczos probes report theirs in ``history``). The total
travels in ``state_dict()["num_grad_evals"]``, so a resumed run keeps counting from where it was.
"""
from __future__ import annotations

from typing import Any


class GradEvalCounter:
    """Mixin placed before ``torch.optim.Optimizer``; the count lives in
    ``gradient_evaluations`` (the attribute name the closure optimizers already had)."""

    gradient_evaluations: int = 0

    @property
    def num_grad_evals(self) -> int:
        """Total gradient evaluations made by ``step`` so far (see the module doc)."""
        return int(self.gradient_evaluations)

    def _count_grad_evals(self, count: int = 1) -> None:
        self.gradient_evaluations = int(self.gradient_evaluations) + int(count)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["num_grad_evals"] = self.num_grad_evals
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        count = state_dict.pop("num_grad_evals", None)  # absent in states saved before the count
        if count is not None:  # checked before anything loads: a refused load changes nothing
            from .state_loading import check_counter
            count = check_counter("state_dict['num_grad_evals']", count)
        super().load_state_dict(state_dict)
        if count is not None:
            self.gradient_evaluations = count

    def __getstate__(self):
        return {**super().__getstate__(), "gradient_evaluations": self.num_grad_evals}
