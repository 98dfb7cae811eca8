"""Fine-tuning: a meta-training run's GARO controller starts from a trained checkpoint's weights.

Meta-training from scratch spends its first hundreds of meta-steps relearning what a shipped
controller already knows; a run that starts from it (``controller.init_from`` in
``scripts/meta_train.py``) spends them on what is new, e.g. the hybrid's switching policy
trained jointly with a GARO controller that is already a good optimizer on its own.

The source is a GARO checkpoint or a hybrid checkpoint with a GARO GD module (its ``garo``
part). Its controller must have the same architecture and inputs as the run's
(``GAROController.config``), and its step rule the same direction and scale: a controller
trained to multiply Prodigy's d_t means something else on top of DoG's.
"""
from __future__ import annotations

import hashlib
import inspect
import os

from torch import nn

from ..checkpoint import load_checkpoint, resolve
from ..garo.controller import GAROController
from ..garo.optimizer import GARO
from ..garo.rule import GARORule
from ..hybrid.optimizer import HybridGDODE

__all__ = ["load_controller_weights", "provenance"]

#: the step-rule options a controller's outputs are defined against
RULE_OPTIONS = ("direction", "scale")


def _garo_part(module: nn.Module) -> GAROController | None:
    if isinstance(module, GAROController):
        return module
    part = getattr(module, "garo", None)  # metaopt.hybrid.garo_module.HybridControllers
    return part if isinstance(part, GAROController) else None


def _rule_options(checkpoint) -> dict[str, str]:
    """Direction and scale the checkpoint's runtime optimizer runs its controller with (the
    stored options, else that optimizer's defaults)."""
    runtime = {"GARO": GARO, "HybridGDODE": HybridGDODE}[
        checkpoint.metadata.get("optimizer_class", "GARO")]
    defaults = inspect.signature(runtime).parameters
    return {k: checkpoint.optimizer_config.get(k, defaults[k].default) for k in RULE_OPTIONS}


def load_controller_weights(controller: GAROController, rule: GARORule,
                            name_or_path: str | os.PathLike) -> dict[str, str]:
    """Copy the GARO controller weights of checkpoint ``name_or_path`` (a shipped name, file,
    directory or Hub id, as ``metaopt.load_optimizer`` resolves it) into ``controller``.

    Raises ``ValueError`` naming what differs when the checkpoint's controller does not fit
    ``controller`` and ``rule``; ``controller`` is untouched then. Returns ``provenance``.
    """
    path = resolve(name_or_path)
    checkpoint = load_checkpoint(path)
    source = _garo_part(checkpoint.controller)
    if source is None:
        raise ValueError(f"{os.fspath(name_or_path)!r} holds a "
                         f"{type(checkpoint.controller).__name__}, not a GARO controller")
    # (config() leaves out a constant schedule: old checkpoints load as "constant")
    theirs, ours = ({"lr_schedule": "constant", **c.config} for c in (source, controller))
    differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
    options = _rule_options(checkpoint)
    differ += [k for k in RULE_OPTIONS if options[k] != getattr(rule, k)]
    if differ:
        detail = ", ".join(
            f"{k}: {theirs.get(k, options.get(k))!r} there, "
            f"{ours.get(k, getattr(rule, k, None))!r} here" for k in differ)
        raise ValueError(f"{os.fspath(name_or_path)!r} does not fit this run's controller "
                         f"({detail})")
    controller.load_state_dict(source.state_dict())
    return provenance(name_or_path)


def provenance(name_or_path: str | os.PathLike) -> dict[str, str]:
    """The record a fine-tuned run's checkpoint card keeps: what it started from, and the
    SHA-256 of that file (a shipped name can later name another file)."""
    path = resolve(name_or_path)
    return {"init_from": os.fspath(name_or_path),
            "init_from_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
