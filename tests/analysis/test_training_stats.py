"""Training statistics against independent computations: functional gradients (task.loss), a
hand-written SGD loop, AdamW's and SGD-momentum's first-step closed forms, and the dense Hessian."""
from __future__ import annotations

import math

import pytest
import torch

import tasks
from metaopt.analysis.training_stats import Phase, layer_groups, task_sharpness, train_with_stats


@pytest.fixture(scope="module")
def task():
    family = tasks.get("mlp", datasets=("digits",), width=(4, 4), depth=(1, 1),
                       activations=("tanh",), batch_sizes=(32,), train_fraction=(0.2, 0.2),
                       dtype=torch.float64)
    return family.sample(torch.Generator().manual_seed(3))


def _sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_layer_groups():
    assert layer_groups(["0.weight", "0.bias", "2.weight", "x"]) == {
        "0": ["0.weight", "0.bias"], "2": ["2.weight"], "x": ["x"]}


def test_records_match_a_functional_sgd_loop(task):
    lr, steps = 0.3, 6
    record = train_with_stats(task, [Phase("sgd", _sgd(lr), steps)],
                              generator=torch.Generator().manual_seed(5), eval_every=2,
                              measure_sharpness=False)
    params = task.init_params()
    groups = layer_groups(list(params))
    batches = torch.Generator().manual_seed(5)
    for t in range(steps):
        batch = task.train_batch(batches)
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        grads = dict(zip(leaves, torch.autograd.grad(task.loss(leaves, batch),
                                                     list(leaves.values()))))
        norms = [math.sqrt(sum(float(grads[n].pow(2).sum()) for n in names))
                 for names in groups.values()]
        assert record.grad_norms[t].tolist() == pytest.approx(norms, rel=1e-12)
        assert record.update_norms[t].tolist() == pytest.approx([lr * v for v in norms], rel=1e-10)
        params = {n: leaves[n].detach() - lr * grads[n] for n in leaves}
    for name, value in params.items():
        torch.testing.assert_close(record.params[name], value, rtol=1e-12, atol=1e-14)
    assert record.eval_steps == [0, 2, 4, 6]
    with torch.no_grad():
        train = float(task.loss(params, task.eval_batch("train")))
        test = float(task.loss(params, task.eval_batch("test")))
    assert record.train_loss[-1] == pytest.approx(train, rel=1e-12)
    assert record.generalization_gap == pytest.approx(test - train, rel=1e-10)
    assert 0 <= record.test_accuracy[-1] <= 1


def test_switching_optimizers_starts_fresh_state(task):
    """AdamW's first step moves every coordinate by lr (m̂/√v̂ = sign g); SGD-momentum's first step
    after the switch is lr·g (a fresh buffer), not a continuation of anything AdamW kept."""
    adam_lr, sgd_lr = 1e-3, 0.05
    phases = [Phase("adamw", lambda p: torch.optim.AdamW(p, lr=adam_lr, weight_decay=0.0,
                                                         eps=1e-12), 3),
              Phase("sgd_momentum", lambda p: torch.optim.SGD(p, lr=sgd_lr, momentum=0.9), 2)]
    record = train_with_stats(task, phases, generator=torch.Generator().manual_seed(0),
                              measure_sharpness=False)
    assert record.phase == ["adamw"] * 3 + ["sgd_momentum"] * 2
    # Coordinates with a zero gradient (constant pixels standardise to 0) do not move.
    params = {n: p.requires_grad_() for n, p in task.init_params().items()}
    batch = task.train_batch(torch.Generator().manual_seed(0))
    grads = dict(zip(params, torch.autograd.grad(task.loss(params, batch), list(params.values()))))
    sizes = [sum(int((grads[n] != 0).sum()) for n in names)
             for names in layer_groups(list(params)).values()]
    assert record.update_norms[0].tolist() == pytest.approx([adam_lr * math.sqrt(s) for s in sizes],
                                                            rel=1e-6)
    assert record.update_norms[3].tolist() == pytest.approx(
        (sgd_lr * record.grad_norms[3]).tolist(), rel=1e-10)


def test_sharpness_is_the_dense_hessian_top_eigenvalue(task):
    params = task.init_params()
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].reshape(-1) for n in names])
    batch = task.eval_batch("train")

    def flat_loss(flat):
        out, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            out[name] = flat[offset:offset + n].reshape(shape)
            offset += n
        return task.loss(out, batch)
    dense = torch.autograd.functional.hessian(flat_loss, flat0)
    expected = float(torch.linalg.eigvalsh(dense)[-1])
    measured = task_sharpness(task, params, batch, max_iters=len(flat0), tol=1e-10,
                         generator=torch.Generator().manual_seed(0))
    assert measured == pytest.approx(expected, rel=1e-6)
    record = train_with_stats(task, [Phase("sgd", _sgd(0.1), 0)],
                              generator=torch.Generator().manual_seed(0),
                              sharpness_iters=len(flat0))
    assert record.sharpness == pytest.approx(expected, rel=1e-4)
