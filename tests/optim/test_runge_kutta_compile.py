"""RK optimizers under torch.compile (their in-place workspace used to break tracing)."""
from __future__ import annotations

import copy
import pickle

import torch

import metaopt.optim as mo


def _run(step_fn, opt, w, steps=3):
    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    for _ in range(steps):
        step_fn(closure)
    return w.detach().clone()


def test_compiled_rk4_step_equals_the_eager_step():
    # Before: AttributeError "'RK4' object has no attribute '_workspace'" while tracing.
    w_eager = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    w_compiled = w_eager.detach().clone().requires_grad_()
    eager = mo.RK4([w_eager], lr=0.1)
    compiled = mo.RK4([w_compiled], lr=0.1)
    torch._dynamo.reset()
    a = _run(eager.step, eager, w_eager)
    b = _run(torch.compile(compiled.step, backend="eager"), compiled, w_compiled)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    # and θ' = −2θ integrated by RK4: per step the 4th-order Taylor polynomial of e^{−0.2}
    factor = 1 - 0.2 + 0.2 ** 2 / 2 - 0.2 ** 3 / 6 + 0.2 ** 4 / 24
    torch.testing.assert_close(a, torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) * factor ** 3)


def test_workspace_is_scratch_rebuilt_after_unpickling():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = mo.RK4([w], lr=0.1)
    _run(opt.step, opt, w, steps=1)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone._workspace == ([], [], [])
