"""``create_optimizer`` falls back to ``pytorch_optimizer``'s names after torch.optim, metaopt's
own optimizers and the checkpoints, with the same no-decay groups and did-you-mean."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import metaopt
from metaopt import third_party

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))


@pytest.mark.parametrize("name, cls", [("lion", "Lion"), ("lamb", "Lamb"), ("adan", "Adan"),
                                       ("prodigy", "Prodigy"),
                                       ("schedule_free_adamw", "ScheduleFreeAdamW")])
def test_pytorch_optimizer_names_resolve(name, cls):
    opt = metaopt.create_optimizer(_model(), name, lr=1e-3)
    assert type(opt) is getattr(pytorch_optimizer, cls)


def test_no_decay_groups_follow_the_same_rule():
    model = _model()
    opt = metaopt.create_optimizer(model, "Lion", lr=1e-4, weight_decay=0.1)
    exempt = {id(p) for p in model.parameters() if p.ndim <= 1}  # biases and the norm scale
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_decay[0.0] == exempt
    assert by_decay[0.1] == {id(p) for p in model.parameters()} - exempt
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    # Lion's update is lr·sign(·) per coordinate, plus lr·wd·θ decoupled decay (|θ| < 1 here)
    steps = [(b - p.detach()).abs().max().item() for b, p in zip(before, model.parameters(),
                                                                    strict=True)]
    assert all(s <= 1e-4 * (1 + 0.1) for s in steps) and max(steps) == pytest.approx(1e-4,
                                                                                     rel=0.1)


def test_torch_and_metaopt_names_win():
    assert type(metaopt.create_optimizer(_model(), "adamw", lr=1e-3)) is torch.optim.AdamW
    assert type(metaopt.create_optimizer(_model(), "sgd", lr=1e-3)) is torch.optim.SGD
    assert "lion" in third_party.names() and len(third_party.names()) > 100


def test_did_you_mean_covers_the_union():
    with pytest.raises(ValueError, match="did you mean 'lion'"):
        metaopt.create_optimizer(_model(), "lionn")
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        metaopt.create_optimizer(_model(), "adamww")


def test_without_the_library_the_name_is_unknown(monkeypatch):
    monkeypatch.setattr(third_party, "available", lambda: False)
    third_party.names.cache_clear()
    try:
        with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
            metaopt.create_optimizer(_model(), "lion")
    finally:
        third_party.names.cache_clear()
