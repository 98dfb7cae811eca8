"""A run resumes across schema changes that cannot have changed what it did."""
from __future__ import annotations

from omegaconf import OmegaConf

from scripts.meta_train_config import MetaTrainConfig, training_differences


def _config(**changes):
    cfg = OmegaConf.to_container(OmegaConf.structured(MetaTrainConfig))
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def test_a_key_added_later_at_its_default_is_no_difference():
    saved = _config()
    del saved["controller"]["features"]  # the run predates the key
    assert training_differences(saved, _config()) == []
    assert training_differences(saved, _config(**{"controller.features": "relative"})) \
        == ["controller.features"]


def test_the_hybrid_section_matters_only_to_hybrid_runs():
    saved = _config()
    saved["hybrid"]["relaxed"] = True  # a key since removed from the schema
    assert training_differences(saved, _config()) == []
    hybrid = _config(**{"controller.kind": "hybrid"})
    saved_hybrid = _config(**{"controller.kind": "hybrid"})
    saved_hybrid["hybrid"]["relaxed"] = True
    assert training_differences(saved_hybrid, hybrid) == ["hybrid.relaxed"]
    assert training_differences(_config(), _config(**{"unroll.truncation_length": 7})) \
        == ["unroll.truncation_length"]
