"""metaopt.create_optimizer / list_optimizers: every name builds, groups match timm's rule, and
the result is the very optimizer a hand-written torch.optim call builds (bit-exact steps)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import metaopt
from metaopt.evaluation.schedules import CosineAdam
from metaopt.factory import param_groups


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2))


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss
    return closure


def _trajectory(model, opt, steps=5):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    for _ in range(steps):
        opt.step(_closure(model, opt, x, y))
    return [p.detach().clone() for p in model.parameters()]


def test_list_optimizers_covers_every_class_and_checkpoint():
    metaopt_names = metaopt.list_optimizers("metaopt")
    assert len(metaopt_names) == len(metaopt.optim.__all__)
    assert {"rk4", "garo", "dcao", "adaptive_rk", "gradient_flow"} <= set(metaopt_names)
    torch_classes = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                     and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                     and n != "Optimizer"]
    assert set(metaopt.list_optimizers("torch")) == {n.lower() for n in torch_classes}
    assert set(metaopt.list_optimizers("pretrained")) == set(metaopt.list_pretrained())
    assert metaopt.list_optimizers("preset") == ["adam_cosine", "nesterov", "sgd_momentum"]
    # everything, pytorch_optimizer's names included (those ours do not already take)
    assert metaopt.list_optimizers() == sorted(set(metaopt.list_optimizers("metaopt")
                                                   + metaopt.list_optimizers("torch")
                                                   + metaopt.list_optimizers("preset")
                                                   + metaopt.list_optimizers("pretrained")
                                                   + metaopt.list_optimizers("pytorch_optimizer")))
    with pytest.raises(ValueError, match="kind"):
        metaopt.list_optimizers("jax")


# (pytorch_optimizer's names: tests/test_third_party_optimizers.py)
@pytest.mark.parametrize("name", sorted(set(metaopt.list_optimizers())
                                        - set(metaopt.list_optimizers("pytorch_optimizer"))))
def test_every_name_builds_its_class(name):
    model = nn.Linear(3, 4, bias=False) if name == "muon" else _model()  # Muon: 2-D only
    opt = metaopt.create_optimizer(model, name)
    assert isinstance(opt, torch.optim.Optimizer)
    classes = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)}
    classes.update({n.lower(): getattr(metaopt.optim, n) for n in metaopt.optim.__all__})
    classes.update({"sgdmomentum": torch.optim.SGD, "nesterov": torch.optim.SGD,
                    "adamcosine": CosineAdam})
    if name in metaopt.list_pretrained():  # the class its metadata names
        from metaopt.checkpoint import load_checkpoint, resolve
        stored = load_checkpoint(resolve(name)).metadata.get("optimizer_class", "GARO")
        assert type(opt) is getattr(metaopt.optim, stored)
    else:
        assert type(opt) is classes[name.replace("_", "")]


def test_adamw_groups_and_steps_equal_hand_written_torch():
    model, reference = _model(), _model()
    opt = metaopt.create_optimizer(model, "AdamW", lr=3e-3, weight_decay=0.1, betas=(0.8, 0.9))
    decay = [reference[0].weight, reference[3].weight]
    no_decay = [reference[0].bias, reference[1].weight, reference[1].bias, reference[3].bias]
    hand = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                              {"params": decay, "weight_decay": 0.1}], lr=3e-3, betas=(0.8, 0.9))
    names = {id(p): n for n, p in model.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in opt.param_groups] == \
        [["0.bias", "1.weight", "1.bias", "3.bias"], ["0.weight", "3.weight"]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    for a, b in zip(_trajectory(model, opt), _trajectory(reference, hand)):
        assert torch.equal(a, b)


def test_no_filter_and_zero_decay_give_one_group():
    model = _model()
    assert len(metaopt.create_optimizer(model, "sgd", lr=0.1).param_groups) == 1
    opt = metaopt.create_optimizer(model, "sgd", lr=0.1, weight_decay=0.1,
                                   filter_bias_and_norm=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1


def test_no_weight_decay_hook_bare_params_and_explicit_groups():
    model = _model()
    model.no_weight_decay = lambda: {"0.weight"}
    groups = param_groups(model, 0.1)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert id(model[0].weight) in ids[0] and id(model[0].weight) not in ids[1]
    bare = param_groups(list(_model().parameters()), 0.1)  # no names: the ndim rule alone
    assert [len(g["params"]) for g in bare] == [4, 2]
    explicit = [{"params": list(model.parameters()), "lr": 0.5}]
    opt = metaopt.create_optimizer(explicit, "sgd", lr=0.1, weight_decay=0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.5


def test_names_are_case_and_separator_insensitive_and_prefixed():
    model = _model()
    for name in ("adamw", "AdamW", "torch.optim.AdamW", "adam-w"):
        assert type(metaopt.create_optimizer(model, name)) is torch.optim.AdamW
    for name in ("RK4", "metaopt.optim.RK4", "rk4"):
        assert type(metaopt.create_optimizer(model, name)) is metaopt.optim.RK4
    assert type(metaopt.create_optimizer(model, "AdaptiveRK")) is metaopt.optim.AdaptiveRK


@pytest.mark.parametrize("name, suggestion", [("adamm", "'adam'"), ("rk5", "'rk4'"),
                                              ("garo_quadratic", "'garo_quadratics'"),
                                              ("dcoa", "'dcao'")])
def test_unknown_name_says_did_you_mean(name, suggestion):
    with pytest.raises(ValueError, match=f"did you mean .*{suggestion}"):
        metaopt.create_optimizer(_model(), name)


def test_missing_path_and_bad_arguments_are_clear_errors():
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        metaopt.create_optimizer(_model(), "runs/absent/optimizer.safetensors")
    with pytest.raises(ValueError, match="has no weight_decay"):
        metaopt.create_optimizer(_model(), "lbfgs", weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        metaopt.create_optimizer(_model(), "sgd", lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="rk4"):
        metaopt.create_optimizer(_model(), "rk4", momentum=0.9)


def test_metaopt_optimizer_equals_direct_construction():
    model, reference = _model(), _model()
    opt = metaopt.create_optimizer(model, "ralston", lr=0.05)
    hand = metaopt.optim.Ralston(reference.parameters(), lr=0.05)
    for a, b in zip(_trajectory(model, opt), _trajectory(reference, hand)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("by_path", [False, True])
def test_pretrained_by_name_or_path_equals_load_optimizer(by_path):
    from metaopt.checkpoint import resolve
    name = metaopt.list_pretrained()[0]
    model, reference = _model(), _model()
    opt = metaopt.create_optimizer(model, str(resolve(name)) if by_path else name)
    hand = metaopt.load_optimizer(name, reference.parameters())
    for a, b in zip(_trajectory(model, opt), _trajectory(reference, hand)):
        assert torch.equal(a, b)


def test_learned_optimizer_weight_decay_scale_is_a_multiplier_with_exempt_group():
    name = metaopt.list_pretrained()[0]
    default = metaopt.create_optimizer(_model(), name)
    assert [g["weight_decay_scale"] for g in default.param_groups] == [1.0]  # default kept
    assert "weight_decay" not in default.param_groups[0]  # GARO has no decay rate to show
    grouped = metaopt.create_optimizer(_model(), "garo", weight_decay_scale=2.0)
    assert [g["weight_decay_scale"] for g in grouped.param_groups] == [0.0, 2.0]
    with pytest.warns(DeprecationWarning, match="now called weight_decay_scale"):
        old = metaopt.create_optimizer(_model(), "garo", weight_decay=2.0)
    assert [g["weight_decay_scale"] for g in old.param_groups] == [0.0, 2.0]
    assert all("weight_decay" not in g for g in old.param_groups)


@pytest.mark.parametrize("name, defaults", [("sgd_momentum", {"momentum": 0.9}),
                                            ("nesterov", {"momentum": 0.9, "nesterov": True})])
def test_presets_equal_hand_written_sgd(name, defaults):
    model, reference = _model(), _model()
    opt = metaopt.create_optimizer(model, name, lr=0.05)
    hand = torch.optim.SGD(reference.parameters(), lr=0.05, weight_decay=0.0, **defaults)
    for a, b in zip(_trajectory(model, opt), _trajectory(reference, hand)):
        assert torch.equal(a, b)
