"""The hybrid GD–ODE optimizer whole: a gradient-descent module and an ODE-integrator module, and
a switch that chooses between them every step.

* ``criteria``: the switch's features (gradient-norm stagnation, curvature, loss trend);
* ``rule``: the pure step (``HybridRule``) with heuristic, constant or learned switches, and
  ``hyper``: what it reads each step (``HybridHyper``);
* ``policy``: the learned switching policy (``SwitchingPolicy``) and its gate;
* ``optimizer``: the ``torch.optim`` adapter (``HybridGDODE``).

Meta-training drives it through ``metaopt.meta.hybrid_learned``.
"""
from .hyper import HybridHyper
from .optimizer import HybridGDODE
from .policy import PolicyGate, SwitchingPolicy
from .rule import ConstantSwitch, HeuristicSwitch, HybridRule

__all__ = ["HybridGDODE", "HybridHyper", "HybridRule", "HeuristicSwitch", "ConstantSwitch",
           "SwitchingPolicy", "PolicyGate"]
