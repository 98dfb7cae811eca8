"""Non-quadratic float64 objectives over lists of tensors, for the integrator oracle tests.

On a quadratic every 4-stage 4th-order method takes the same step, so tableaus can only be told
apart on objectives like these.
"""
from __future__ import annotations

import torch
from einops import pack, unpack


def rosenbrock(params):
    (xy,) = params
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def quartic(params):
    (x,) = params
    scales = torch.linspace(0.5, 2.0, x.numel(), dtype=x.dtype)
    return (scales * x ** 4).sum() / 4 + 0.5 * (x.sum() ** 2) + torch.sin(x).sum()


def make_tanh_mlp(seed: int = 0):
    """A 3 → 8 → 1 tanh regression MLP on fixed data; returns (loss(params), initial params)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(16, 3, generator=g, dtype=torch.float64)
    target = torch.sin(data.sum(1, keepdim=True))
    params = [torch.randn(8, 3, generator=g, dtype=torch.float64) * 0.7,
              torch.randn(8, generator=g, dtype=torch.float64) * 0.1,
              torch.randn(1, 8, generator=g, dtype=torch.float64) * 0.5,
              torch.zeros(1, dtype=torch.float64)]

    def loss(ps):
        w1, b1, w2, b2 = ps
        return ((torch.tanh(data @ w1.T + b1) @ w2.T + b2 - target) ** 2).mean()
    return loss, params


def objectives():
    """(name, loss over a param list, initial params, a step size it is stable at)."""
    mlp_loss, mlp_params = make_tanh_mlp()
    return [
        ("rosenbrock", rosenbrock, [torch.tensor([-1.5, 2.0], dtype=torch.float64)], 2e-4),
        ("quartic", quartic, [torch.linspace(-1.0, 1.5, 6, dtype=torch.float64)], 0.05),
        ("tanh_mlp", mlp_loss, mlp_params, 0.2),
    ]


def grad_fn_for(loss):
    """Exact autograd gradient at any point: the rule interface's grad_fn."""
    def grad_fn(points):
        points = [p.detach().requires_grad_() for p in points]
        with torch.enable_grad():
            value = loss(points)
            grads = torch.autograd.grad(value, points)
        return value.detach(), list(grads)
    return grad_fn


def flat_field(loss, like):
    """torchdiffeq's view of the gradient flow: f(t, y) = −∇L(y) on the packed vector y."""
    _, shapes = pack(list(like), "*")
    grad_fn = grad_fn_for(loss)

    def field(t, y):
        _, grads = grad_fn(unpack(y, shapes, "*"))
        return -pack(grads, "*")[0]
    return field, shapes


def closure_over(opt, loss, live):
    """The standard closure: zero the grads, evaluate ``loss(live)``, backward, return it."""
    def closure():
        opt.zero_grad()
        value = loss(live)
        value.backward()
        return value
    return closure


def optimizer_trajectory(cls, loss, params, steps, **kwargs):
    """Run ``cls`` on copies of ``params``; returns the iterates after each step and the opt."""
    live = [p.clone().requires_grad_() for p in params]
    opt = cls(live, **kwargs)
    closure = closure_over(opt, loss, live)
    trajectory = []
    for _ in range(steps):
        opt.step(closure)
        trajectory.append([p.detach().clone() for p in live])
    return trajectory, opt


def max_error(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))
