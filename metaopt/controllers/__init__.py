"""Controllers: small nn.Modules mapping optimisation features to hyperparameters (DESIGN idea 2)."""
from .garo import (NUM_SIGNAL_FEATURES, SIGNAL_FEATURES, BoundController, ControllerOutput,
                   GAROController, inverse_softplus)

from .switching import PolicyGate, SwitchingPolicy

__all__ = ["SwitchingPolicy", "PolicyGate"]
__all__ += ["GAROController", "ControllerOutput", "BoundController", "SIGNAL_FEATURES",
           "NUM_SIGNAL_FEATURES", "inverse_softplus"]
