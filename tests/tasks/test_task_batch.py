"""``TaskBatch`` (vectorised meta-batches): the stacked loss, gradient and batch streams equal
each task's own ``loss`` / ``train_batch`` / ``test_batch`` (the oracle), float64."""
from __future__ import annotations

import pytest
import torch

import tasks
from metaopt.task import generator_from_seed
from tasks.point import PointTask

DT = torch.float64


def _check_rows(family, seeds, split):
    group = [family.sample_seed(s) for s in seeds]
    keys = {t.batch_key() for t in group}
    assert len(keys) == 1 and None not in keys
    batch = type(group[0]).stack(group)
    names = list(group[0].init_params())
    inits = [t.init_params(generator_from_seed(10 + i)) for i, t in enumerate(group)]
    stacked = {n: batch.stack_values(n, [p[n] for p in inits]).requires_grad_() for n in names}
    draw = batch.train_batch if split == "train" else batch.test_batch
    losses = batch.loss(stacked, draw([generator_from_seed(s) for s in seeds]))
    grads = torch.autograd.grad(losses.sum(), list(stacked.values()))
    for b, (task, seed) in enumerate(zip(group, seeds)):
        params = {n: v.clone().requires_grad_() for n, v in inits[b].items()}
        generator = generator_from_seed(seed)
        data = task.train_batch(generator) if split == "train" else task.test_batch(generator)
        loss = task.loss(params, data)
        expected = torch.autograd.grad(loss, list(params.values()))
        torch.testing.assert_close(losses[b], loss, rtol=1e-13, atol=0)
        torch.testing.assert_close(batch.normalized_loss(losses)[b], task.normalized_loss(loss),
                                   rtol=1e-13, atol=0)
        for n, g, e in zip(names, grads, expected):
            torch.testing.assert_close(batch.unstack_values(n, g)[b], e, rtol=1e-12, atol=1e-15)
    return batch, grads


@pytest.mark.parametrize("split", ["train", "test"])
def test_quadratics_of_any_dimension_and_noise_stack_exactly(split):
    family = tasks.get("mixture", dtype=DT, components={
        "quadratic": {"dim": (2, 9)}, "noisy_quadratic": {"dim": (2, 9), "noise_std": (0.1, 1.0)}})
    batch, grads = _check_rows(family, range(8), split)
    assert (len({t.dim for t in batch.tasks}) > 1
            and len({t.noise_std > 0 for t in batch.tasks}) == 2)
    padding = torch.arange(batch.width) >= torch.tensor([t.dim for t in batch.tasks]).unsqueeze(1)
    assert torch.all(grads[0][padding] == 0)  # padded coordinates get exactly zero gradient


@pytest.mark.parametrize("split", ["train", "test"])
def test_mlps_of_one_architecture_stack_exactly(split):
    family = tasks.get("mlp", datasets=("synthetic",), width=(6, 6), depth=(2, 2),
                       activations=("gelu",), batch_sizes=(16,), synthetic_examples=80,
                       dtype=DT)
    batch, _ = _check_rows(family, range(4), split)
    assert len({t.num_train for t in batch.tasks}) > 1  # different data subsets, padded sets


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mlps_of_sampled_widths_and_batch_sizes_stack_exactly(split, activation):
    # widths and minibatch sizes differ within the group: MLPBatch pads both
    family = tasks.get("mlp", datasets=("synthetic",), width=(3, 12), depth=(2, 2),
                       activations=(activation,), batch_sizes=(8, 16, 32),
                       synthetic_examples=80, l2=1e-3, padding=True, dtype=DT)
    batch, grads = _check_rows(family, range(6), split)
    assert (len({t.width for t in batch.tasks}) > 1
            and len({t.batch_size for t in batch.tasks}) > 1)
    names = list(batch.tasks[0].init_params())
    for name, grad in zip(names, grads):  # the padding gets exactly zero gradient
        for b, own in enumerate(batch.unstack_values(name, grad)):
            padded = grad[b].clone()
            padded[tuple(slice(0, n) for n in own.shape)] = 0
            assert torch.all(padded == 0), name


@pytest.mark.parametrize("split", ["train", "test"])
def test_cnns_of_one_architecture_stack_exactly(split):
    family = tasks.get("cnn_digits", channels=(3, 3), activations=("relu",), batch_sizes=(16,),
                       dtype=DT)
    _check_rows(family, range(3), split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cnns_of_sampled_channels_activations_and_batch_sizes_stack_exactly(split):
    family = tasks.get("cnn_digits", channels=(1, 4), batch_sizes=(8, 16), l2=1e-3,
                       train_fraction=(0.05, 0.1), dtype=DT)
    batch, grads = _check_rows(family, range(6), split)
    assert len({t.channels for t in batch.tasks}) > 1
    assert len({t.activation for t in batch.tasks}) > 1
    _check_padding_gets_zero_gradient(batch, grads)


@pytest.mark.parametrize("padding", [False, True])
def test_keys_separate_architectures(padding):
    family = tasks.get("mlp", datasets=("synthetic",), width=(4, 32), padding=padding, dtype=DT)
    group = [family.sample_seed(s) for s in range(12)]
    keys = [t.batch_key() for t in group]
    for a, ka in zip(group, keys):
        for b, kb in zip(group, keys):  # with padding, widths and batch sizes may differ
            same = a.depth == b.depth and (padding or (a.activation, a.width, a.batch_size)
                                           == (b.activation, b.width, b.batch_size))
            assert (ka == kb) == same
    # every test function, whatever its kind and dimension, shares one key
    assert (tasks.get("rosenbrock").sample_seed(0).batch_key()
            == tasks.get("rastrigin_nd", dim=(5, 5)).sample_seed(0).batch_key())


@pytest.mark.parametrize("split", ["train", "test"])
def test_point_tasks_of_any_kind_and_dimension_stack_exactly(split):
    # test functions and (noisy) quadratics share one PointBatch
    family = tasks.get("mixture", dtype=DT, components={
        "rastrigin_nd": {"dim": (2, 6)}, "himmelblau": {}, "beale": {}, "ackley": {},
        "styblinski_tang": {}, "six_hump_camel": {}, "quadratic": {"dim": (2, 7)},
        "noisy_quadratic": {"dim": (2, 7), "noise_std": (0.1, 1.0)}})
    batch, grads = _check_rows(family, range(14), split)
    assert len({t.name for t in batch.tasks}) > 4 and len({t.dim for t in batch.tasks}) > 2
    padding = torch.arange(batch.width) >= torch.tensor([t.dim for t in batch.tasks]).unsqueeze(1)
    assert torch.all(grads[0][padding] == 0)  # padded coordinates get exactly zero gradient


def _check_padding_gets_zero_gradient(batch, grads):
    # where the batch's own stacking of all-ones puts a 0, the gradient must be exactly 0
    names = list(batch.tasks[0].init_params())
    for name, grad in zip(names, grads):
        real = batch.stack_values(name, [torch.ones_like(own)
                                         for own in batch.unstack_values(name, grad)])
        assert torch.all(grad[real == 0] == 0), name
        assert int((real == 0).sum()) > 0 or name.endswith("bias"), name


@pytest.mark.parametrize("split", ["train", "test"])
def test_dense_tasks_of_different_data_activations_and_losses_stack_exactly(split):
    # MLPs on two data sets (features and classes padded), three activations (as data), with
    # depth-3 MLPs sharing the batch with autoencoders (cross-entropy and squared-error rows)
    family = tasks.get("mixture", dtype=DT, components={
        "mlp": {"datasets": ["synthetic", "wine"], "width": [3, 9], "depth": [3, 3],
                "batch_sizes": [8, 16], "synthetic_examples": 60, "synthetic_features": 5,
                "synthetic_classes": 4, "l2": 1e-3},
        "autoencoder_digits": {"hidden": [4, 8], "bottleneck": [2, 3], "batch_sizes": [8]}})
    batch, grads = _check_rows(family, range(10), split)
    kinds = {type(t).__name__ for t in batch.tasks}
    assert kinds == {"MLPTask", "AutoencoderTask"}, kinds
    assert len({t.num_classes for t in batch.tasks if kinds}) > 1
    assert len({t.activation for t in batch.tasks}) > 1
    _check_padding_gets_zero_gradient(batch, grads)


@pytest.mark.parametrize("split", ["train", "test"])
def test_logistic_and_least_squares_share_one_padded_batch_exactly(split):
    family = tasks.get("mixture", dtype=DT, components={
        "logistic_regression": {"datasets": ["wine", "synthetic"], "batch_sizes": [8, 32],
                                "synthetic_features": [3, 7], "synthetic_classes": [2, 4]},
        "least_squares": {"num_features": [2, 9], "num_train": [20, 40]},
        "lasso": {"num_features": [2, 9], "num_train": [20, 40]}})
    batch, grads = _check_rows(family, range(10), split)
    assert {type(t).__name__ for t in batch.tasks} == {"LogisticRegressionTask",
                                                       "LinearRegressionTask"}
    assert any(t.l1 > 0 for t in batch.tasks) and len({t.num_features for t in batch.tasks}) > 2
    _check_padding_gets_zero_gradient(batch, grads)


@pytest.mark.parametrize("model", ["gru", "conv"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_sequence_tasks_of_any_kind_vocabulary_length_and_width_stack_exactly(split, model):
    family = tasks.get("sequence", models=[model], vocab=(3, 6), length=(4, 7), hidden=(2, 5),
                       batch_sizes=(4, 8), num_train=12, num_test=6, dtype=DT)
    batch, grads = _check_rows(family, range(6), split)
    for attribute in ("kind", "vocab_in", "length", "hidden", "batch_size"):
        assert len({getattr(t, attribute) for t in batch.tasks}) > 1, attribute
    _check_padding_gets_zero_gradient(batch, grads)


def test_a_point_task_without_a_batched_part_takes_the_loop():
    task = tasks.get("quadratic", dim=(3, 3), dtype=DT).sample(generator_from_seed(0))
    assert task.batch_key() is not None

    class Unbatched(type(task)):
        def point_part_key(self):
            return None

    task.__class__ = Unbatched
    assert task.batch_key() is None  # so the vectorised engine never stacks it
    with pytest.raises(TypeError, match="no batched form"):  # the base class's default
        PointTask.stack_part([task])


@pytest.mark.parametrize("labels", [["a", "a", "b", "c", "c"], ["a", "b", "a", "c", "b"]])
def test_a_row_partition_splits_and_merges_rows_by_label(labels):
    from metaopt.task_batch import RowPartition
    partition = RowPartition(labels, "cpu")
    assert partition.blocks == (labels == sorted(labels))
    scale = {"a": 1.0, "b": -2.0, "c": 3.0}
    value = torch.randn(len(labels), 3, dtype=DT, requires_grad=True)
    out = partition.merge([torch.tanh(scale[label] * part) for (label, _), part
                           in zip(partition.parts, partition.split(value))])
    expected = torch.stack([torch.tanh(scale[label] * row) for label, row in zip(labels, value)])
    assert torch.equal(out, expected)
    weights = torch.randn_like(value)
    got, = torch.autograd.grad((out * weights).sum(), value)
    want, = torch.autograd.grad((expected * weights).sum(), value)
    assert torch.equal(got, want)


def test_the_engine_puts_same_label_runs_next_to_each_other():
    # MLPs of three activations, test functions of several kinds: every group's batch finds
    # each label's rows in one block (no gather in its forward or backward passes)
    from metaopt.meta import MetaLoss, VectorisedPool, make_horizon
    from tests.meta.helpers import learned_rule
    family = tasks.get("mixture", dtype=DT, components={
        "mlp": {"datasets": ["synthetic"], "width": [3, 6], "depth": [1, 1],
                "activations": ["tanh", "relu", "gelu"], "synthetic_examples": 40,
                "synthetic_features": 3, "synthetic_classes": 2},
        "himmelblau": {}, "beale": {}, "rastrigin_nd": {"dim": [2, 3]}})
    pool = VectorisedPool(learned_rule(hidden_size=4), family, 16, 3,
                          make_horizon("log_uniform", min_length=2, max_length=8),
                          MetaLoss("mean", "train", divergence_threshold=100.0))
    weights = pool.learned.meta_parameters()
    pool.refresh(weights, torch.Generator().manual_seed(0))
    pool._check_padding(weights)  # (as segment() does first)
    groups, _ = pool._groups(range(16))
    assert sorted(i for g in groups for i in g) == list(range(16))
    for group in groups:
        labels = [pool.runs[i].task.batch_label() for i in group]
        assert len(set(labels)) > 1
        assert all(labels.index(x) == k or labels[k - 1] == x for k, x in enumerate(labels))
        batch = type(pool.runs[group[0]].task).stack([pool.runs[i].task for i in group])
        partition = batch.activations if hasattr(batch, "activations") else batch.rows
        assert partition.blocks
