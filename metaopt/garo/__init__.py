"""GARO, the Global Adaptive Recurrent Optimizer, whole: one GRU with one global hidden state that
emits ``lr_t, momentum_t, weight_decay_t`` every step.

* ``features``: the controller's inputs and the recurrent state layout, defined once;
* ``controller``: the GRU (``GAROController``) and its functional binding (``BoundController``);
* ``rule``: the pure, differentiable step (``GARORule``) of meta-training unrolls and ``higher``,
  and ``hyper``: what it reads each step (``GAROHyper``: the controller and its multipliers);
* ``recurrence``: that step's controller side (features, controller, the state it carries);
* ``runtime`` (with ``controller_host`` and ``host_state``): the same step computed in place with
  the recurrent state on the host, the runtime optimizer's fast path, proven equal to ``rule``
  in float64;
* ``optimizer``: the ``torch.optim`` adapter (``GARO`` / ``GlobalAdaptiveSGD``), and
  ``persistence``: its recurrent state's view, ``state_dict`` and checked load.

``docs/architecture.md`` shows how the pieces connect and how to add a controller input.
"""
from .controller import BoundController, ControllerOutput, GAROController, inverse_softplus
from .features import FEATURE_SETS, NUM_SIGNAL_FEATURES, SIGNAL_FEATURES
from .hyper import GAROHyper
from .optimizer import GARO, GlobalAdaptiveSGD
from .rule import GARORule

__all__ = ["GARO", "GlobalAdaptiveSGD", "GAROController", "BoundController", "ControllerOutput",
           "GARORule", "GAROHyper", "inverse_softplus", "SIGNAL_FEATURES", "NUM_SIGNAL_FEATURES",
           "FEATURE_SETS"]
