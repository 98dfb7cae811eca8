"""scripts/config_groups.py through meta_train's load_config: groups replace, a family switch
drops stale kwargs (the reported `task.name=mlp` failure), {} / null clear, --help is complete."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import tasks
from scripts.meta_train_schema import ControllerConfig, EstimatorConfig

ROOT = Path(__file__).resolve().parents[2]
GARO = str(ROOT / "configs" / "garo.yaml")


@pytest.fixture(scope="module")
def cfgmod():
    return importlib.import_module("scripts.meta_train_config")  # as scripts.meta_train does


def _task(cfg):
    return OmegaConf.to_container(cfg.task)


def test_task_name_switch_drops_stale_kwargs_and_builds(cfgmod):
    assert "components" in _task(cfgmod.load_config(GARO, []))["kwargs"]
    cfg = cfgmod.load_config(GARO, ["task.name=mlp"])
    assert _task(cfg) == {"name": "mlp", "kwargs": {}}
    tasks.get(cfg.task.name, **cfg.task.kwargs)  # the reported failure: unknown 'components'
    # order does not matter: the switch happens before the keys that refine it
    cfg = cfgmod.load_config(GARO, ["task.kwargs.width=[8,16]", "task.name=mlp"])
    assert _task(cfg) == {"name": "mlp", "kwargs": {"width": [8, 16]}}
    # naming the same family keeps its kwargs
    assert _task(cfgmod.load_config(GARO, ["task.name=mixture"])) == \
        _task(cfgmod.load_config(GARO, []))


def test_task_group_replaces_the_section(cfgmod):
    expected = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "task" / "mlp.yaml"))
    assert _task(cfgmod.load_config(GARO, ["task=mlp"])) == expected
    cfg = cfgmod.load_config(GARO, ["task=mlp", "task.kwargs.width=[8,16]"])
    assert _task(cfg)["kwargs"] == {**expected["kwargs"], "width": [8, 16]}
    assert _task(cfgmod.load_config(GARO, ["task=beale"])) == {"name": "beale", "kwargs": {}}


@pytest.mark.parametrize("value", ["{}", "null"])
def test_empty_dict_or_null_clears_kwargs(cfgmod, value):
    assert _task(cfgmod.load_config(GARO, [f"task.kwargs={value}"]))["kwargs"] == {}


def test_dict_literal_replaces_a_free_form_dict(cfgmod):
    cfg = cfgmod.load_config(GARO, ["task.name=quadratic", "task.kwargs={dim: [2, 3]}"])
    assert _task(cfg) == {"name": "quadratic", "kwargs": {"dim": [2, 3]}}


def test_controller_and_estimator_groups_reset_to_schema_then_file(cfgmod, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("controller: {init_lr: 0.5, hidden_size: 4}\n"
                      "estimator: {name: es, sigma: 0.5}\n")
    cfg = cfgmod.load_config(str(config), ["controller=adam", "estimator=bptt"])
    assert cfg.controller.direction == "adam" and cfg.controller.hidden_size == 16
    assert cfg.controller.init_lr == ControllerConfig().init_lr  # replaced, not merged
    assert cfg.estimator.name == "bptt" and cfg.estimator.sigma == EstimatorConfig().sigma
    # keys refine the selected group, whatever their order on the command line
    cfg = cfgmod.load_config(str(config), ["controller.init_lr=0.2", "controller=adam"])
    assert cfg.controller.init_lr == 0.2 and cfg.controller.direction == "adam"


@pytest.mark.parametrize("override, match", [
    ("task=no_such_family", "invalid config group 'task'.*mlp.*registered families"),
    ("controller=no_such", "invalid config group 'controller'"),
    ("task.kwargs=3", "task.kwargs"),
    ("controller.hiden_size=3", "controller.hiden_size"),
])
def test_bad_overrides_name_their_key(cfgmod, override, match):
    with pytest.raises(cfgmod.ConfigError, match=match):
        cfgmod.load_config(GARO, [override])


@pytest.mark.parametrize("option",
                         sorted(p.stem for p in (ROOT / "configs" / "task").glob("*.yaml")))
def test_every_task_group_file_builds_its_family(cfgmod, option):
    cfg = cfgmod.load_config(GARO, [f"task={option}"])
    family = tasks.get(cfg.task.name, **OmegaConf.to_container(cfg.task.kwargs))
    family.sample_seed(0)


def test_help_lists_every_key_with_type_and_default(cfgmod):
    from scripts.config_groups import describe_keys
    text = describe_keys(cfgmod.MetaTrainConfig)

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs",):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k, v
    schema = OmegaConf.to_container(OmegaConf.structured(cfgmod.MetaTrainConfig))
    for key, default in leaves(schema):
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:")), None)
        assert line is not None, key
        assert repr(default) in line or str(default) in line, (key, line)
    assert "task=" in text and "mlp" in text and "controller=adam|sgd" in text
