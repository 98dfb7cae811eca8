"""metaopt.registry: one vocabulary for every name -> optimizer lookup (factory, evaluation,
analysis, the hybrid's modules, configs), plug-in sources, and the did-you-mean error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import metaopt
from metaopt import registry
from metaopt.analysis.batched import BatchedOptimizer
from metaopt.analysis.trajectories import make_optimizer as analysis_optimizer
from metaopt.evaluation import make_optimizer as evaluation_optimizer
from metaopt.hybrid.optimizer import make_gd_rule, make_ode_rule
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule

ROOT = Path(__file__).resolve().parents[1]


def _params():
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize("spelling", ["SGD", "sgd", "torch.optim.SGD", "S_G-D"])
def test_one_name_in_every_spelling_reaches_one_class(spelling):
    assert registry.canonical_name(spelling) == "sgd"
    assert type(analysis_optimizer(spelling, _params(), lr=0.1)) is torch.optim.SGD
    assert evaluation_optimizer(spelling).cls is torch.optim.SGD
    assert type(metaopt.create_optimizer(_params(), spelling, lr=0.1)) is torch.optim.SGD
    assert isinstance(make_gd_rule(spelling), SGDRule)
    assert BatchedOptimizer(spelling).name == "sgd"


def test_metaopt_names_and_tableaus_share_the_spelling():
    assert type(analysis_optimizer("RK4", _params())) is metaopt.optim.RK4
    assert type(analysis_optimizer("rk4", _params())) is metaopt.optim.RK4
    rule = make_ode_rule("RK4")
    assert isinstance(rule, RungeKuttaRule) and rule.tableau is make_ode_rule("rk4").tableau
    assert BatchedOptimizer("Heun").name == "heun"


def test_presets_carry_their_defaults_and_evaluation_adds_its_lr():
    opt = registry.build("sgd_momentum", _params(), lr=0.1)
    assert opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]
    assert registry.build("nesterov", _params(), lr=0.1).defaults["nesterov"]
    factory = evaluation_optimizer("sgd_momentum")
    assert factory.hyperparameters == {"momentum": 0.9, "lr": 0.01}


@pytest.mark.parametrize("lookup", [registry.get, lambda n: analysis_optimizer(n, _params()),
                                    evaluation_optimizer])
def test_unknown_names_say_did_you_mean_everywhere(lookup):
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'; did you mean .*'adam'"):
        lookup("adamm")


def test_rule_vocabularies_say_did_you_mean():
    with pytest.raises(ValueError, match=r"gd: unknown 'adma'; did you mean 'adam'"):
        make_gd_rule("adma")
    with pytest.raises(ValueError, match=r"ode: unknown 'rk5'; did you mean 'rk4'"):
        make_ode_rule("rk5")
    with pytest.raises(ValueError, match=r"name: unknown 'rmsprob'; did you mean 'rmsprop'"):
        BatchedOptimizer("rmsprob")


def test_register_one_optimizer_and_a_fallback_source(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    monkeypatch.setattr(registry, "_SOURCES", list(registry._SOURCES))
    registry.register("plain_descent", "torch.optim:SGD", kind="contender",
                      defaults={"lr": 0.25})
    opt = metaopt.create_optimizer(_params(), "PlainDescent")
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.25
    assert "plain_descent" in metaopt.list_optimizers("contender")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("plain-descent", torch.optim.SGD)

    def lookup(name):
        if registry.key(name) == "libadagrad":
            return registry.OptimizerSpec(name.lower(), "third_party", torch.optim.Adagrad)
        return None
    registry.register_source(lookup, kind="third_party", names=lambda: ["lib_adagrad"])
    assert type(registry.build("Lib_Adagrad", _params())) is torch.optim.Adagrad
    assert registry.names("third_party") == ["lib_adagrad"]
    assert registry.get("sgd").kind == "torch"  # a source never shadows a registered name
    with pytest.raises(ValueError, match="did you mean 'lib_adagrad'"):
        registry.get("lib_adagard_")


def test_checkpoints_are_a_source():
    name = metaopt.list_pretrained()[0]
    spec = registry.get(name.upper())
    assert spec.kind == "pretrained" and spec.learned and spec.name == name


def _config_names(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("optimizers", "optimizers_2d") and isinstance(v, list):
                out += [entry["name"] for entry in v if isinstance(entry, dict)]
            elif k == "optimizer" and isinstance(v, str):
                out.append(v)
            else:
                _config_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _config_names(v, out)
    return out


def test_every_config_spells_optimizers_the_registry_way():
    names = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        names += _config_names(yaml.safe_load(path.read_text()), [])
    assert len(names) > 20
    for name in names:
        assert name == registry.canonical_name(name), name
