"""``GAROController.forward`` on the host (NumPy): the runtime optimizer's controller step.

GARO (Global Adaptive Recurrent Optimizer); the math is the module
docstring of ``metaopt.garo.controller``, whose ``forward`` stays the reference (and the path of
meta-training). The runtime optimizer reads its features on the host anyway (their finiteness
decides whether a step is skipped, and its updates take Python scalars), and the controller is a
GRU of ~16–32 units on a ~20-float input: a few thousand FLOPs. On the device that is a dozen
kernel launches (µs each on the CPU, more on a GPU, all dispatch); on the host it is a dozen NumPy
calls of ~1 µs, with no transfer in either direction. So the whole controller step runs here, in
the controller's dtype (float32 or float64; other dtypes compute in float32):

    z = clip((x − m') / √(v' + 1e-8), ±clip)     m', v': West's EMA, frozen where x is invalid
    [r | u | n_x | n_h] = [z, valid, emb(t) (, progress), h] · W + b      (the GRU, fused)
    h' = n + σ(u)·(h − n),   n = tanh(n_x + σ(r)·n_h)
    lr, mom, wd = softplus, tanh, softplus of h'·W_heads + b_heads

with the gates computed as ``σ(x) = (1 + tanh(x/2))/2`` (one ``tanh`` for both; the halving is
folded into the weights).

``tests/garo/test_controller_host.py`` checks it against ``forward`` in float64.
"""
from __future__ import annotations

import functools
import math
import operator
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .controller import GAROController
from .features import HOST_OPS, NUM_SIGNAL_FEATURES, VARIANCE_GUARD, lr_prior, step_frequencies
from .host_state import host_array

# controller -> (its weights_generation, the weights read, their versions, fused host copies);
# weak, so it is neither pickled, deep-copied nor kept alive with the module
_FUSED: weakref.WeakKeyDictionary[GAROController, tuple] = weakref.WeakKeyDictionary()
_FUSED_SOURCES = (("cell", "weight_ih"), ("cell", "weight_hh"), ("cell", "bias_ih"),
                  ("cell", "bias_hh"), ("head_lr", "weight"), ("head_momentum", "weight"),
                  ("head_weight_decay", "weight"), ("head_lr", "bias"),
                  ("head_momentum", "bias"), ("head_weight_decay", "bias"))
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_VERSION = operator.attrgetter("_version")  # a tensor's in-place version counter
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's: above it softplus(x) is x


class HostOutput(NamedTuple):
    """One controller step on the host, ``S`` segments: host floats and one array."""
    lr: list[float]                   # S values
    momentum: list[float]             # S values
    weight_decay: list[float]         # S values
    hidden: np.ndarray                # (S, H), the controller's dtype
    feature_mean: list[list[float]]   # S rows of NUM_SIGNAL_FEATURES
    feature_var: list[list[float]]    # S rows of NUM_SIGNAL_FEATURES


def host_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype the host step computes in for a controller of ``dtype``."""
    return _FLOAT64 if dtype == torch.float64 else _FLOAT32


def _softplus(x: float) -> float:
    return x if x > _SOFTPLUS_THRESHOLD else math.log1p(math.exp(x))


def fused_host_weights(controller: GAROController) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The GRU as one ``(D + H + 1, 4H)`` matrix (D inputs, H hidden units), its bias as the last
    row (the inputs end with a 1), and the three heads as one ``(H, 3)`` matrix and its ``(3,)``
    bias, on the host.

    GRU columns: the ``r`` and ``u`` pre-activations (input and hidden parts summed, biases too)
    and the hidden part of ``n`` — all three halved, since ``σ(x) = (1 + tanh(x/2))/2`` turns the
    gates into one ``tanh`` — and the input part of ``n``.

    Cached; rebuilt when a weight changes in place (its version counter moves) or the controller
    is moved, cast or loaded (``GAROController.weights_generation``). Replacing one of its
    parameter objects by hand is not seen: load new weights with ``load_state_dict``.
    """
    cached = _FUSED.get(controller)
    if cached is not None and cached[0] == controller.weights_generation and \
            list(map(_VERSION, cached[1])) == cached[2]:
        return cached[3]
    tensors = [controller._modules[m]._parameters[name] for m, name in _FUSED_SOURCES]
    H, D = controller.hidden_size, controller.input_size
    dtype = host_dtype(tensors[0].dtype)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    w_ih, w_hh, b_ih, b_hh, *heads = (t.detach().to("cpu", torch_dtype).numpy()
                                      for t in tensors)
    gru = np.zeros((D + H + 1, 4 * H), dtype)
    gru[:D, :2 * H] = w_ih[:2 * H].T / 2
    gru[D:D + H, :2 * H] = w_hh[:2 * H].T / 2
    gru[D + H, :2 * H] = (b_ih[:2 * H] + b_hh[:2 * H]) / 2
    gru[:D, 2 * H:3 * H] = w_ih[2 * H:].T
    gru[D + H, 2 * H:3 * H] = b_ih[2 * H:]
    gru[D:D + H, 3 * H:] = w_hh[2 * H:].T / 2
    gru[D + H, 3 * H:] = b_hh[2 * H:] / 2
    fused = (gru, np.ascontiguousarray(np.concatenate(heads[:3]).T), np.concatenate(heads[3:]))
    _FUSED[controller] = (controller.weights_generation, tensors,
                          [t._version for t in tensors], fused)
    return fused


@functools.cache
def _frequencies(num_frequencies: int) -> tuple[float, ...]:
    return tuple(step_frequencies(num_frequencies))


def host_schedule(controller: GAROController, valid: Sequence[float], step: int,
                  progress: Sequence[float] | None = None) -> list[float]:
    """The gradient-independent tail of the GRU input, as host floats:
    ``valid + step_embedding(step) (+ progress)`` (the embedding's formula in float64)."""
    phase = math.log1p(step)
    freqs = _frequencies(controller.num_step_frequencies)
    emb = [math.sin(phase * w) for w in freqs] + [math.cos(phase * w) for w in freqs]
    if controller.features == "relative":
        if progress is None:
            raise ValueError("progress: required by a controller with features='relative'")
        return [*valid, *emb, *progress]
    return [*valid, *emb]


def host_step(controller: GAROController, signal: Sequence[Sequence[float]],
              valid: Sequence[float], step: int, progress: Sequence[float] | None,
              hidden: np.ndarray, feature_mean: Sequence[Sequence[float]],
              feature_var: Sequence[Sequence[float]]) -> HostOutput:
    """``controller.forward`` on the host (module docstring), without a graph.

    Args:
        signal: S rows of NUM_SIGNAL_FEATURES raw features, all finite.
        valid: the feature mask (NUM_SIGNAL_FEATURES floats), the same for every segment.
        step: the number of steps taken before this one.
        progress: ``[min(t/T, 1), T known]`` for a relative-feature controller, else None.
        hidden: (S, H) array; feature_mean, feature_var: S rows each; the previous recurrent
            state.

    The feature statistics are scalar arithmetic on host floats (float64; a few per segment);
    the GRU and the heads are one matrix product each.
    """
    gru, head, head_bias = fused_host_weights(controller)
    beta, clip, H = controller.feature_decay, controller.feature_clip, controller.hidden_size
    tail = host_schedule(controller, valid, step, progress)
    hidden = np.asarray(hidden, gru.dtype)
    inputs, new_means, new_vars = [], [], []
    present = [k for k, v in enumerate(valid) if v > 0]  # (frozen where a feature is missing)
    for row, mean, var, h in zip(signal, feature_mean, feature_var, hidden.tolist()):
        z, mean, var = _normalised(row, mean, var, present, beta, clip)
        inputs.append([*z, *tail, *h, 1.0])
        new_means.append(mean)
        new_vars.append(var)
    gates = np.array(inputs, gru.dtype) @ gru
    # in place, each op as written: 2σ(r), 2σ(u) once 1 is added (the columns are halved),
    # n = tanh(n_x + σ(r)·n_h), h' = n + σ(u)·(h − n) = (1 − σ(u))·n + σ(u)·h
    two_sigma = np.tanh(gates[:, :2 * H])
    two_sigma += 1
    n = two_sigma[:, :H] * gates[:, 3 * H:]
    n += gates[:, 2 * H:3 * H]
    np.tanh(n, out=n)
    h = hidden - n
    h *= two_sigma[:, H:]
    h /= 2
    h += n
    pre = h @ head
    pre += head_bias
    pre = pre.tolist()
    prior = 1.0 if controller.lr_schedule == "constant" else \
        lr_prior(controller.lr_schedule, progress[0], progress[1], HOST_OPS)
    return HostOutput(lr=[_softplus(p[0]) * prior for p in pre],
                      momentum=[math.tanh(p[1]) for p in pre],
                      weight_decay=[_softplus(p[2]) for p in pre], hidden=h,
                      feature_mean=new_means, feature_var=new_vars)


def _normalised(row, mean, var, present, beta: float, clip: float):
    """``features.ema_normalise`` of the ``present`` features of one segment, inlined (the same
    float64 operations in the same order: ``tests/garo/test_controller_host.py``): the
    normalised row and the new statistics, which stay as they were elsewhere (z = 0 there)."""
    z, mean, var = [0.0] * NUM_SIGNAL_FEATURES, list(mean), list(var)
    keep = 1 - beta
    for k in present:
        x = row[k]
        delta = x - mean[k]
        m = mean[k] = mean[k] + keep * delta
        v = var[k] = beta * (var[k] + keep * delta * delta)
        z[k] = min(max((x - m) / math.sqrt(v + VARIANCE_GUARD), -clip), clip)
    return z, mean, var


def module_step(controller, rows, valid, progress, state) -> HostOutput:
    """A controller that is not a stock ``GAROController`` through its own ``forward``, from the
    host rows and the state as tensors (``HostState.to_tensors``)."""
    x = torch.tensor(rows, dtype=state["hidden"].dtype, device=state["hidden"].device)
    args = [x, x.new_tensor(valid).expand(x.shape[0], -1), state["step"], state["hidden"],
            state["feature_mean"], state["feature_var"]]
    if progress is not None:
        args.append(x.new_tensor(progress).expand(x.shape[0], -1))
    out = controller(*args)
    return HostOutput(lr=out.lr.tolist(), momentum=out.momentum.tolist(),
                      weight_decay=out.weight_decay.tolist(), hidden=host_array(out.hidden),
                      feature_mean=out.feature_mean.tolist(), feature_var=out.feature_var.tolist())
