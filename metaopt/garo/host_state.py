"""GARO's recurrent state on the host: the runtime optimizer's working copy of the state dict.

The global entries of ``GARORule``'s state (``init_global``: hidden state, feature statistics,
the previous step's features, the relative features' references, the step count) are a few
floats per segment. The runtime step reads all of them and writes all of them every step; as
tensors that is ~20 tiny tensor ops (µs each) on a step that small models make dispatch-bound.
``HostState`` keeps them as host floats (the hidden state as one array) and becomes the tensor
dict only when asked (``to_tensors``: ``state_dict``, ``garo_state``, hooks).

Every float is stored rounded to the state's dtype (the controller's), so ``to_tensors`` →
``from_tensors`` is exact and a run resumed from a checkpoint continues bit for bit.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .features import OPTIONAL_KEYS, SEGMENT_KEYS


def host_array(t: Tensor) -> np.ndarray:
    """A tensor's values as a host array (float64 stays float64; the rest becomes float32)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.detach().to("cpu", dtype).numpy()


@dataclass
class PendingUpdateNorm:
    """A step's ``‖Δθ‖`` not read yet: what its update-ratio feature needs
    (``metaopt.garo.runtime``)."""
    directions: list[Tensor]   # Δθ_i = −a_i·direction_i
    step_sizes: list[float]    # |a_i|
    segment_ids: list[int]
    param_norms: list[float]   # ‖θ‖_s before the step, per segment


@dataclass
class HostState:
    """The global part of a GARO state (``GARORule.init_global``) as host values."""
    dtype: torch.dtype
    device: torch.device              # where ``to_tensors`` puts the tensors
    step: int
    loss_seen: bool
    hidden: np.ndarray                # (S, H), as ``host_array`` makes it
    feature_mean: list[list[float]]   # S rows
    feature_var: list[list[float]]    # S rows
    prev_log_grad_norm: list[float]
    prev_symlog_loss: list[float]
    prev_update_ratio: list[float]
    lr: list[float]
    momentum: list[float]
    weight_decay: list[float]
    # relative features only (None otherwise): log ‖g_0‖ per segment, |L_0|, the horizon T
    ref_log_grad_norm: list[float] | None = None
    ref_loss: float | None = None
    horizon: float | None = None
    # scale-free GARO only (None otherwise): r̄_t per segment, the running max displacement
    distance_max: list[float] | None = None
    # scale="prodigy" only (None otherwise): Prodigy's d_t of the last step and numerator r_t
    prodigy_d: list[float] | None = None
    prodigy_numerator: list[float] | None = None
    # the last step's update norm, when the next step reads it (``prev_update_ratio`` is then
    # NaN for the segments that step updated)
    pending: PendingUpdateNorm | None = None
    # ‖Δθ‖_s of the last step where it was read (not pending, not rebuilt from tensors): what
    # a caller that also needs the motion (the hybrid's secant) reads instead of re-measuring it
    update_norm: list[float] | None = None

    @property
    def num_segments(self) -> int:
        return len(self.lr)

    @classmethod
    def from_tensors(cls, state: dict[str, Tensor]) -> HostState:
        """The host copy of a state dict's global entries (extra entries are ignored)."""
        hidden = state["hidden"]
        optional = {key: (state[key].tolist() if key in state else None)
                    for key in OPTIONAL_KEYS}
        return cls(dtype=hidden.dtype, device=hidden.device, step=int(state["step"]),
                   loss_seen=float(state["loss_seen"]) > 0,
                   hidden=host_array(hidden).copy(),
                   feature_mean=state["feature_mean"].tolist(),
                   feature_var=state["feature_var"].tolist(),
                   **{key: state[key].tolist() for key in SEGMENT_KEYS}, **optional)

    def to_tensors(self) -> dict[str, Tensor]:
        """The state dict entries (new tensors of ``dtype`` on ``device``); a pending update
        norm must have been read first (``metaopt.garo.runtime.settle``)."""
        if self.pending is not None:
            raise RuntimeError("HostState.to_tensors: settle the pending update norm first")
        def tensor(value) -> Tensor:
            return torch.tensor(value, dtype=self.dtype, device=self.device)

        out = {key: tensor(getattr(self, key)) for key in SEGMENT_KEYS}
        out.update(hidden=torch.from_numpy(self.hidden.copy()).to(self.device, self.dtype),
                   feature_mean=tensor(self.feature_mean), feature_var=tensor(self.feature_var),
                   step=torch.tensor(self.step, dtype=torch.int64, device=self.device),
                   loss_seen=tensor(float(self.loss_seen)))
        for key in OPTIONAL_KEYS:
            if getattr(self, key) is not None:
                out[key] = tensor(getattr(self, key))
        return out

    def rounded(self, values: list[float]) -> list[float]:
        """``values`` rounded to the state's dtype (as its tensors would hold them)."""
        return round_to(self.dtype, values)


def round_to(dtype: torch.dtype, values: list[float]) -> list[float]:
    """Host floats rounded to ``dtype`` (as a tensor of that dtype would hold them)."""
    if dtype == torch.float64:
        return values
    if dtype == torch.float32:
        return array("f", values).tolist()
    return torch.tensor(values, dtype=dtype).tolist()
