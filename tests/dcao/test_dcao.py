"""DCAO-specific properties (the generic torch.optim ones come from the conformance suite)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import metaopt.optim as mo
from metaopt.dcao.rule import DCAORule, dcao_schedule
from tests.optim.test_conformance import closure_for


def quadratic(eigenvalues, seed=0, dtype=torch.float64):
    """L(θ) = ½ θᵀAθ, A = Q diag(eigenvalues) Qᵀ, split over two parameter tensors."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = (q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T).to(dtype)
    theta = torch.randn(n, generator=g, dtype=dtype)
    params = [theta[: n // 2].clone().requires_grad_(), theta[n // 2:].clone().requires_grad_()]

    def loss_fn(ps=None):
        x = torch.cat(list(ps if ps is not None else params))
        return 0.5 * x @ a @ x
    return params, loss_fn



def test_schedule_formulas():
    lr, mu, wd = dcao_schedule(3.0, 2.0, 0.1, 0.9, 1e-2, alpha=0.2, beta=0.3, gamma=0.4)
    assert lr == pytest.approx(0.1 * torch.exp(torch.tensor(-0.6)).item())
    assert mu == pytest.approx(0.9 * torch.exp(torch.tensor(-0.6)).item())
    assert wd == pytest.approx(1e-2 * torch.exp(torch.tensor(-1.2)).item())
    assert dcao_schedule(50.0, 0.0, 0.1, 0.9, 0.0, 0, 0, 0, "edge_of_stability", 0.9)[0] == \
        pytest.approx(0.9 * 2 / 50.0)
    assert dcao_schedule(0.0, 0.0, 0.1, 0.9, 0.0, 0, 0, 0, "edge_of_stability", 0.9)[0] == 0.1
    rho = torch.tensor(3.0, requires_grad=True)  # differentiable for unrolls
    dcao_schedule(rho, rho, torch.tensor(0.1), 0.9, 0.0, 0.2, 0.3, 0.4)[0].backward()
    assert rho.grad == pytest.approx(-0.2 * 0.1 * torch.exp(torch.tensor(-0.6)).item())


def test_foreach_optimizer_equals_pure_rule_float64():
    params, loss_fn = quadratic([9.0, 5.0, 3.0, 1.0, 0.5, 0.1], seed=1)
    start = [p.detach().clone() for p in params]
    opt = mo.DCAO([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.03}], lr=0.05,
                  momentum=0.8, weight_decay=0.01, probe_every=3, k=3, lanczos_iters=6,
                  alpha=0.05, beta=0.02, gamma=0.1)
    closure = closure_for(opt, loss_fn)
    for _ in range(8):
        opt.step(closure)
    assert [h["step"] for h in opt.history] == [0, 3, 6]
    rule = DCAORule(alpha=0.05, beta=0.02, gamma=0.1)
    theta, state = start, rule.init(start)
    for t in range(8):
        probe = [h for h in opt.history if h["step"] <= t][-1]
        hyper = {"lr": [0.05, 0.03], "momentum": 0.8, "weight_decay": 0.01,
                 "spectral_radius": probe["spectral_radius"], "spectral_gap": probe["spectral_gap"]}
        grad_fn = lambda ps: (None, list(torch.autograd.functional.vjp(  # noqa: E731
            lambda *x: loss_fn(list(x)), tuple(ps))[1]))
        theta, state = rule.step(theta, grad_fn, state, hyper)
    for p, q in zip(params, theta):
        torch.testing.assert_close(p.detach(), q, rtol=1e-13, atol=1e-15)


def test_probes_at_first_step_then_every_probe_every_and_closure_only_there():
    params, loss_fn = quadratic([4.0, 2.0, 1.0, 0.5], seed=2)
    opt = mo.DCAO(params, lr=0.1, probe_every=4, k=2, lanczos_iters=4)
    with pytest.raises(RuntimeError, match="closure"):
        loss_fn().backward()
        opt.step()
    closure = closure_for(opt, loss_fn)
    opt.step(closure)
    for _ in range(3):  # between probes p.grad suffices
        opt.zero_grad()
        loss_fn().backward()
        assert opt.step() is None
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    opt.step(closure)
    probe = opt.last_curvature
    assert [h["step"] for h in opt.history] == [0, 4] and probe.step == 4
    assert probe.hvp_count >= 2 and probe.eigenvalues.shape == (2,)
    assert float(probe.spectral_radius) == pytest.approx(4.0, rel=1e-10)
    assert float(probe.spectral_gap) == pytest.approx(2.0, rel=1e-10)


@pytest.mark.parametrize("schedule", ["edge_of_stability", "exponential"])
def test_stiff_quadratic_where_gd_at_base_lr_diverges(schedule):
    eigenvalues = [100.0, 30.0, 10.0, 3.0, 1.0, 0.3]
    lr = 0.05  # > 2/λmax = 0.02: plain GD blows up along the top eigenvector
    params, loss_fn = quadratic(eigenvalues, seed=3)
    initial = loss_fn().item()
    sgd = torch.optim.SGD(params, lr=lr)
    run_steps(sgd, loss_fn, 60)
    assert not loss_fn().item() < initial * 1e3
    params, loss_fn = quadratic(eigenvalues, seed=3)
    opt = mo.DCAO(params, lr=lr, momentum=0.5, probe_every=20, k=3, lanczos_iters=6,
                  schedule=schedule, alpha=0.02)
    losses = run_steps(opt, loss_fn, 60)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.2 * initial
    assert float(opt.last_curvature.spectral_radius) == pytest.approx(100.0, rel=1e-6)


def run_steps(opt, loss_fn, steps):
    closure, losses = closure_for(opt, loss_fn), []
    for _ in range(steps):
        losses.append(float(opt.step(closure)))
    return losses


class DropoutBatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(),
                                  nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def test_probes_are_clean_with_dropout_and_batchnorm():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = DropoutBatchNormNet()
    twin = copy.deepcopy(model)
    initial_state = copy.deepcopy(model.state_dict())
    opt = mo.DCAO(model.parameters(), lr=0.0, probe_every=1, k=2, lanczos_iters=60, tol=1e-6,
                  model=model)

    def make_closure(net, optimizer):
        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss
        return closure
    reference = torch.optim.SGD(twin.parameters(), lr=0.0)
    torch.manual_seed(1)
    opt.step(make_closure(model, opt))
    rng_after_probe = torch.get_rng_state()
    torch.manual_seed(1)
    reference.step(make_closure(twin, reference))  # the same training forward, no probe
    assert torch.equal(rng_after_probe, torch.get_rng_state())  # probe drew no dropout mask
    for a, b in zip(model.buffers(), twin.buffers()):  # running stats updated once, not more
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), twin.parameters()):  # training grads kept for the step
        assert torch.equal(a.grad, b.grad)
    assert model.training and all(m.training for m in model.modules())
    # a rerun under another dropout seed probes the same deterministic (eval-mode) Hessian
    again = copy.deepcopy(twin)
    opt_again = mo.DCAO(again.parameters(), lr=0.0, probe_every=1, k=2, lanczos_iters=60,
                        tol=1e-6, model=again)
    again.load_state_dict(initial_state)
    torch.manual_seed(2)
    opt_again.step(make_closure(again, opt_again))
    assert torch.equal(opt_again.last_curvature.eigenvalues, opt.last_curvature.eigenvalues)


def test_state_dict_keeps_probe_and_rng_and_loads_weights_only():
    params, loss_fn = quadratic([4.0, 2.0, 1.0, 0.5], seed=4)
    opt = mo.DCAO(params, lr=0.1, probe_every=2, k=2, lanczos_iters=4, seed=3)
    run_steps(opt, loss_fn, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    other = mo.DCAO(params, lr=0.1, probe_every=2, k=2, lanczos_iters=4, seed=99)
    other.load_state_dict(loaded)
    assert torch.equal(other.generator.get_state(), opt.generator.get_state())
    assert other.steps_taken == 3 and other.history == opt.history
    assert torch.equal(other.last_curvature.eigenvalues, opt.last_curvature.eigenvalues)
    assert other.last_curvature.step == 2
    twin = copy.deepcopy(opt)
    assert twin.history == opt.history and twin.steps_taken == 3
    assert torch.equal(twin.last_curvature.spectral_radius, opt.last_curvature.spectral_radius)


def test_probe_refuses_a_closure_whose_gradients_carry_no_graph():
    """Gradients assigned from torch.autograd.grad bypass the probe: a clear error, not ρ = 0."""
    w = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    a = torch.tensor([100.0, 1.0, 1.0])
    opt = mo.DCAO([w], lr=1e-3)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (a * w * w).sum()
        (w.grad,) = torch.autograd.grad(loss, [w])
        return loss
    with pytest.raises(RuntimeError, match="loss.backward"):
        opt.step(closure)


# -------------------------------------------------------------------------- unusual input
def test_complex_parameters_are_a_clear_error():
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        mo.DCAO([z])
    opt = mo.DCAO([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [z]})


def _rosenbrock_run(steps, **kwargs):
    v = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = mo.DCAO([v], **kwargs)

    def closure():
        opt.zero_grad()
        loss = (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2
        loss.backward()
        return loss
    for _ in range(steps):
        opt.step(closure)
    x, y = v.detach()
    return float((1 - x) ** 2 + 100 * (y - x ** 2) ** 2), opt


def test_stall_guard_unfreezes_rosenbrock_and_its_floor_matches_the_exact_hessian():
    # Rosenbrock at (-1.5, 2): analytic Hessian [[1200x²-400y+2, -400x], [-400x, 200]].
    x, y = -1.5, 2.0
    hessian = torch.tensor([[1200 * x * x - 400 * y + 2, -400 * x], [-400 * x, 200.0]],
                           dtype=torch.float64)
    rho = float(torch.linalg.eigvalsh(hessian).abs().max())
    assert rho == pytest.approx(2092.25, rel=1e-4)
    frozen, seed_opt = _rosenbrock_run(300, stall_ratio=0.0)
    _, first = _rosenbrock_run(1)  # η right after the first probe, default guard
    assert first.effective_hyperparameters(first.param_groups[0])[0] == \
        pytest.approx(min(0.01 * 0.01, 0.9 * 2 / rho), rel=1e-9)
    assert seed_opt.effective_hyperparameters(seed_opt.param_groups[0])[0] == \
        pytest.approx(0.01 * torch.exp(torch.tensor(-0.01 * rho, dtype=torch.float64)).item(),
                      rel=1e-6)
    guarded, opt = _rosenbrock_run(300)
    assert frozen > 12.49  # the seed's schedule alone: η ≈ 8e-12, the loss does not move
    assert guarded < 8.0   # measured 5.78 after 300 steps (0.010 after 20,000)
    assert len(seed_opt.history) == 1  # next probe only at step 1000
    assert len(opt.history) == 30 and opt.stalled()  # re-probed every 10 steps while stalled


def test_stall_guard_is_inert_in_ordinary_regimes():
    # ρ = 40 ≪ 460: the guarded and the seed schedule give bit-identical trajectories.
    runs = []
    for ratio in (0.0, 0.01):
        params, loss_fn = quadratic([40.0, 10.0, 3.0, 1.0])
        opt = mo.DCAO(params, lr=0.01, probe_every=7, k=2, lanczos_iters=4, stall_ratio=ratio)
        for _ in range(20):
            opt.step(closure_for(opt, loss_fn))
        assert not opt.stalled()
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
