"""The task registry: names, construction from (YAML-like) kwargs, clear errors."""

import pytest
import torch

import tasks
from metaopt.task import TaskFamily

EXPECTED = {"quadratic", "noisy_quadratic", "rosenbrock", "beale", "himmelblau", "rastrigin",
            "ackley", "six_hump_camel", "styblinski_tang", "saddle", "monkey_saddle",
            "rosenbrock_nd", "rastrigin_nd", "least_squares", "lasso", "logistic_regression", "mlp",
            "cnn_digits", "mixture", "augmented", "sequence", "char_mlp", "autoencoder_digits",
            "residual_mlp", "attention", "tabular_regression", "resnet_digits", "vit_digits"}


def test_names_lists_every_family():
    assert set(tasks.names()) == EXPECTED
    assert tasks.names() == sorted(tasks.names())


def test_get_accepts_yaml_style_lists_and_string_dtype():
    family = tasks.get("quadratic", dim=[3, 3], condition_number=[10, 10], dtype="float64")
    task = family.sample_seed(0)
    assert task.dim == 3 and task.init_params()["x"].dtype == torch.float64


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown task family 'quadratik'"):
        tasks.get("quadratik")


def test_unknown_keyword_is_named():
    with pytest.raises(ValueError, match=r"'mlp'.*\['widht'\]"):
        tasks.get("mlp", widht=(8, 16))


@pytest.mark.parametrize("name,kwargs,message", [
    ("mlp", {"activations": ("swish",)}, "swish"),
    ("logistic_regression", {"datasets": ("mnist",)}, "mnist"),
    ("rosenbrock", {"initial_point": (1.0, 2.0, 3.0)}, "initial_point"),
    ("quadratic", {"dtype": "float17"}, "float17"),
    ("mixture", {"components": {"nope": {}}}, "nope"),
])
def test_bad_values_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tasks.get(name, **kwargs)


def test_register_plugin_family_and_duplicate_error():
    class Constant(TaskFamily):
        name = "constant_quadratic"

        def sample(self, generator):
            return tasks.get("quadratic", dim=(2, 2)).sample(generator)

    tasks.register("constant_quadratic_test", Constant)
    try:
        assert "constant_quadratic_test" in tasks.names()
        assert tasks.get("constant_quadratic_test").sample_seed(0).dim == 2
        with pytest.raises(ValueError, match="already registered"):
            tasks.register("constant_quadratic_test", Constant)
    finally:
        tasks._REGISTRY.pop("constant_quadratic_test")


def test_mixture_samples_every_component():
    family = tasks.get("mixture", components={"quadratic": {"dim": [2, 3]}, "rosenbrock": {}})
    names = {family.sample_seed(seed).name for seed in range(20)}
    assert names == {"quadratic", "rosenbrock"}
