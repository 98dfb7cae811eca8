"""The synthetic sequence family: data against hand-computed targets, the GRU against torch.nn.GRU,
causality of both models, and that the tasks are learnable."""

import math

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed
from tasks.sequence import SequenceTask, make_sequences

from .training import adam_trained

F64 = torch.float64


def test_parity_and_copy_targets_match_a_python_loop():
    bits, parity, mask = make_sequences("parity", generator_from_seed(0), 5, 12, 2)
    for row, target in zip(bits.tolist(), parity.tolist()):
        running = 0
        for bit, expected in zip(row, target):
            running ^= bit
            assert expected == running
    assert mask.all()
    tokens, targets, mask = make_sequences("copy", generator_from_seed(1), 5, 10, 6, delay=3)
    assert (torch.equal(targets[:, 3:], tokens[:, :-3]) and not mask[:, :3].any()
            and mask[:, 3:].all())


def test_markov_transitions_have_the_sampled_frequencies():
    transitions = torch.softmax(torch.randn(3, 3, generator=generator_from_seed(2), dtype=F64), 1)
    inputs, targets, _ = make_sequences("markov", generator_from_seed(3), 2000, 20, 3,
                                        transitions=transitions)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # the target is the next token
    counts = torch.zeros(3, 3, dtype=F64)
    counts.index_put_((inputs.reshape(-1), targets.reshape(-1)),
                      torch.ones(inputs.numel(), dtype=F64), accumulate=True)
    empirical = counts / counts.sum(1, keepdim=True)
    standard_error = (transitions * (1 - transitions) / counts.sum(1, keepdim=True)).sqrt()
    assert ((empirical - transitions).abs() < 5 * standard_error + 1e-12).all()


def _task(kind, model, **kwargs):
    family = tasks.get("sequence", kinds=[kind], models=[model], length=(8, 8), hidden=(6, 6),
                       num_train=128, num_test=32, dtype=F64, **kwargs)
    task = family.sample_seed(0)
    assert isinstance(task, SequenceTask) and task.model_name == model
    return task


def test_gru_equals_torch_nn_gru():
    task = _task("markov", "gru")
    params = task.init_params(generator_from_seed(1))
    reference = torch.nn.GRU(task.vocab_in, task.hidden, batch_first=True, dtype=F64)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(params["input.weight"])
        reference.bias_ih_l0.copy_(params["input.bias"])
        reference.weight_hh_l0.copy_(params["recurrent.weight"])
        reference.bias_hh_l0.copy_(params["recurrent.bias"])
    tokens, targets, _ = task.train_batch(generator_from_seed(2))
    hidden, _ = reference(torch.nn.functional.one_hot(tokens, task.vocab_in).to(F64))
    logits = hidden @ params["readout.weight"].T + params["readout.bias"]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, task.vocab_out),
                                                 targets.reshape(-1))
    loss = task.loss(params, (tokens, targets, torch.ones_like(tokens, dtype=torch.bool)))
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-12)


@pytest.mark.parametrize("model", ["gru", "conv"])
def test_models_are_causal(model):
    task = _task("copy", model)
    module = task.module()
    tokens = task.eval_batch("test")[0][:4].clone()
    before = module(tokens)
    tokens[:, 5] = (tokens[:, 5] + 1) % task.vocab_in
    after = module(tokens)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("kind, model, target", [("copy", "conv", 0.15), ("parity", "gru", 0.5)])
def test_adam_learns_the_task(kind, model, target):
    """Normalised test loss falls well below 1 (the uniform guess) with torch.optim.Adam."""
    _, final = adam_trained(_task(kind, model), lr=3e-2, steps=150)
    assert final < target, final


def test_family_validates_and_varies():
    family = tasks.get("sequence")
    sampled = [family.sample_seed(s) for s in range(24)]
    assert {t.kind for t in sampled} == {"markov", "parity", "copy"}
    assert {t.model_name for t in sampled} == {"gru", "conv"}
    assert all(t.loss_scale == pytest.approx(math.log(t.vocab_out)) for t in sampled)
    for kwargs, key in (({"kinds": ["sorting"]}, "kinds"), ({"models": ["lstm"]}, "models"),
                        ({"vocab": (1, 4)}, "vocab")):
        with pytest.raises(ValueError, match=key):
            tasks.get("sequence", **kwargs)


def test_batched_losses_equal_each_tasks_loss():
    family = tasks.get("sequence", models=["gru"], kinds=["copy", "markov"], vocab=(4, 4),
                       hidden=(5, 5), length=(6, 6), batch_sizes=[8], num_train=32, num_test=16,
                       dtype=F64)
    group = [family.sample_seed(s) for s in range(3)]
    assert len({t.batch_key() for t in group}) == 1 and len({t.kind for t in group}) == 2
    batch = type(group[0]).stack(group)
    params = [t.init_params(generator_from_seed(i)) for i, t in enumerate(group)]
    stacked = {k: batch.stack_values(k, [p[k] for p in params]) for k in params[0]}
    data = batch.train_batch([generator_from_seed(10 + i) for i in range(3)])
    expected = torch.stack([t.loss(p, t.train_batch(generator_from_seed(10 + i)))
                            for i, (t, p) in enumerate(zip(group, params))])
    assert torch.allclose(batch.loss(stacked, data), expected, rtol=1e-13)
    sub = batch.select([2, 1])
    tests = [t.test_batch(generator_from_seed(i)) for i, t in enumerate(group)]
    assert torch.allclose(
        sub.loss({k: v[[2, 1]] for k, v in stacked.items()},
                 sub.test_batch([generator_from_seed(2), generator_from_seed(1)])),
        torch.stack([group[i].loss(params[i], tests[i]) for i in (2, 1)]), rtol=1e-13)


@pytest.mark.parametrize("model", ["gru", "conv"])
def test_vectorised_meta_gradient_equals_the_loop(model):
    from metaopt.meta import InnerRunPool, MetaLoss, TruncatedBPTT, VectorisedPool, make_horizon
    from tests.meta.helpers import learned_rule

    learned = learned_rule(hidden_size=4)
    weights = learned.meta_parameters()
    family = tasks.get("sequence", models=[model], vocab=(3, 3), hidden=(4, 4), length=(5, 5),
                       batch_sizes=[8], num_train=24, num_test=8, dtype=F64)
    pools = [cls(learned, family, 3, 3, make_horizon("constant", 6), MetaLoss("mean", split))
             for cls, split in ((InnerRunPool, "test"), (VectorisedPool, "test"))]
    generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)]
    grads = []
    for pool, generator in zip(pools, generators):
        pool.refresh(weights, generator)
        grads.append(TruncatedBPTT().estimate(pool, weights, generator).grads)
    assert pools[1].fallback is None
    keys = [r.task.batch_key() for r in pools[1].runs]
    assert max(keys.count(k) for k in keys) >= 2  # at least one stacked group
    scale = max(float(g.abs().max()) for g in grads[0].values())
    assert max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0]) <= 1e-12 * scale
