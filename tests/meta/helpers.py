"""Small float64 meta-training set-ups shared by the meta tests."""
from __future__ import annotations

import torch

import tasks
from metaopt.garo.controller import GAROController
from metaopt.garo.rule import GARORule
from metaopt.meta import GAROLearnedRule, InnerRunPool, MetaLoss, make_horizon


def quadratic_family(dtype=torch.float64, dim=(3, 6), condition_number=(1.0, 30.0)):
    return tasks.get("quadratic", dim=dim, condition_number=condition_number, dtype=dtype)


def learned_rule(hidden_size=4, dtype=torch.float64, feature_gradients=True, seed=0,
                 head_scale=0.3):
    """A GARO learned rule whose heads are random (so every weight has a non-zero meta-gradient)."""
    controller = GAROController(hidden_size=hidden_size,
                                generator=torch.Generator().manual_seed(seed)).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for head in (controller.head_lr, controller.head_momentum, controller.head_weight_decay):
            head.weight.copy_(head_scale * torch.randn(head.weight.shape, generator=generator,
                                                       dtype=dtype))
        controller.head_lr.bias.fill_(-2.0)      # lr ≈ 0.13: visible progress in a few steps
        controller.head_weight_decay.bias.fill_(-4.0)
    return GAROLearnedRule(controller, GARORule(feature_gradients=feature_gradients))


def pool(learned, family, num_runs=2, truncation_length=5, horizon=5, kind="mean",
         split="train", second_order=True):
    return InnerRunPool(learned, family, num_runs, truncation_length,
                        make_horizon("constant", horizon), MetaLoss(kind, split),
                        second_order=second_order)


def task_objectives(task, names, batch, live, opt):
    """The same loss two ways: ``closure`` for the runtime optimizer ``opt`` stepping ``live``,
    and ``grad_fn(points) -> (loss, grads)`` for the functional rule."""
    def closure():
        opt.zero_grad()
        loss = task.loss(dict(zip(names, live)), batch)
        loss.backward()
        return loss

    def grad_fn(points):
        points = [p.detach().requires_grad_() for p in points]
        with torch.enable_grad():
            loss = task.loss(dict(zip(names, points)), batch)
            return loss.detach(), list(torch.autograd.grad(loss, points))
    return closure, grad_fn
