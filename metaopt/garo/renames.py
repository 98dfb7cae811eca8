"""GARO's renamed option (``weight_decay`` → ``weight_decay_scale``) and the call site its
warnings point at (the user's line, past the optimizer's and torch's frames)."""
from __future__ import annotations

import os
import sys
import warnings

import torch

from ..adapters import grad_mode

# the frames a warning skips besides torch's: this module, the torch.optim adapter and the
# grad-mode wrapper of its step
_OWN_FILES = {__file__, os.path.join(os.path.dirname(__file__), "optimizer.py"),
              grad_mode.__file__}


def renamed_weight_decay(weight_decay_scale: float | None, weight_decay: float | None,
                         where: str = "keyword") -> float:
    """``weight_decay_scale``, or the value passed under its old name ``weight_decay`` (with a
    DeprecationWarning: GARO's weight decay is learned, the number only multiplies it)."""
    if weight_decay is None:
        return 1.0 if weight_decay_scale is None else weight_decay_scale
    if weight_decay_scale is not None:
        raise ValueError("weight_decay: GARO's old name of weight_decay_scale; pass "
                         "weight_decay_scale only")
    warnings.warn(f"GARO: the {where} weight_decay is deprecated: it multiplies the learned "
                  f"wd_t and is now called weight_decay_scale", DeprecationWarning,
                  stacklevel=_caller_level())
    return weight_decay


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside torch, this module and the optimizer's: the
    user's ``opt.step()`` (torch wraps ``step`` in a varying number of frames)."""
    frame, level = sys._getframe(1), 1
    torch_dir = os.path.dirname(torch.__file__)
    while frame is not None and (frame.f_code.co_filename in _OWN_FILES
                                 or frame.f_code.co_filename.startswith(torch_dir)):
        frame, level = frame.f_back, level + 1
    return level
