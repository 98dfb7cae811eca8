"""metaopt: learned and ODE-integrator optimizers for PyTorch."""
from importlib.metadata import PackageNotFoundError, version

# isort: off
# optim must import before hub: hub -> checkpoint -> garo -> optim is a cycle that only resolves
# when optim is already initialised, so this order is load-bearing
from . import optim, rules
from . import interop  # noqa: F401  (registers GARO with higher.register_optim)
from .checkpoint import list_pretrained, load_optimizer
from .factory import create_optimizer, list_optimizers
from . import hub
# isort: on

try:
    __version__ = version("metaopt")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["optim", "rules", "__version__", "load_optimizer", "list_pretrained",
           "create_optimizer", "list_optimizers", "hub"]
