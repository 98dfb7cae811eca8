"""GARO under torch.compile: the runtime step reads its features on the host (graph breaks),
so a compiled ``opt.step`` must still run and give the eager step's parameters and state."""
from __future__ import annotations

import warnings

import torch

import metaopt
from tests.garo.helpers import regression


def _run(compiled: bool):
    params, loss_fn = regression(dtype=torch.float32)
    live = [p.clone().requires_grad_() for p in params]
    opt = metaopt.load_optimizer("garo_general", live, num_training_steps=20)
    step = torch.compile(opt.step, backend="eager") if compiled else opt.step
    for _ in range(5):
        opt.zero_grad()
        loss = loss_fn(live)
        loss.backward()
        step(loss=loss)
    return live, opt.garo_state


def test_compiled_garo_step_equals_the_eager_step():
    torch._dynamo.reset()
    eager_params, eager_state = _run(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on the host reads it falls back for
        compiled_params, compiled_state = _run(True)
    assert all(torch.equal(a, b) for a, b in zip(eager_params, compiled_params))
    for key, value in eager_state.items():
        assert torch.equal(compiled_state[key], value), key
    assert int(eager_state["step"]) == 5
