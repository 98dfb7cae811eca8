"""Config fuzz: ±inf, NaN, empty lists, wrong types and unknown keys for EVERY key of
the ``MetaTrainConfig`` schema, found by walking the dataclasses (keys added later are covered
without editing this file).

Each attack runs what ``meta_train.py --check`` runs (``load_config``, then ``build`` and
``read_run_dir``: the validation a training run does before any work) against an existing run
directory. The default suite attacks every key once (the attack kind rotating over the keys);
``-m slow`` runs every key against every attack. Attacks that no value of that type may pass
(±inf/NaN for numbers, a list for a scalar, a scalar for a list …) must raise ``ConfigError`` with
one line naming the key; values that are legitimate for the type (``out_dir=inf`` is a folder
name, ``wandb.tags=[]``) may pass validation instead. Either way the run directory is untouched.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from .test_meta_train import _load_script
from .test_meta_train_reliability import snapshot

SCRIPT = _load_script()
Schema = SCRIPT.MetaTrainConfig


def _leaves(cls, prefix=""):
    """(dotted key, type) for every field of the schema, sections flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, tp


def _sections(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    yield prefix.rstrip(".")
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], f"{prefix}{f.name}.")


NUMBER_ATTACKS = [".inf", "-.inf", ".nan", "[]", "abc", "inf", "nan", "1e400", "{}", "[1]"]
LIST_ATTACKS = ["abc", "{}"]


def _attacks(key, tp):
    """(override value, must_refuse, key the message must name) for one schema field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float or tp is int:
        return [(v, True, key) for v in NUMBER_ATTACKS]
    if tp is bool:
        return [(v, True, key) for v in [".inf", ".nan", "[]", "abc", "-.inf", "{}"]]
    if tp is str or (origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
                     and str in args):
        return [(v, True, key) for v in ["[]", "{}", "[1]"]] + \
            [(v, False, key) for v in [".inf", ".nan", "-.inf", "''"]]
    if origin is list and args[0] is float:
        return [(v, True, key) for v in ["[.inf]", "[]", "[.nan]", "[1.0,-.inf]", "[abc]",
                                         "[[1]]", *LIST_ATTACKS]]
    if origin is list and dataclasses.is_dataclass(args[0]):
        inner = typing.get_type_hints(args[0])
        item = {f: ("x" if t is str else 1 if t is bool else {}) for f, t in inner.items()}
        out = []
        for name, t in inner.items():
            if typing.get_origin(t) is dict:  # a free-form dict inside each item
                out += [(f"[{{{name}: {{lr: {v}}}}}]", True, key) for v in (".inf", "-.inf",
                                                                             ".nan")]
        return out + [(v, True, key) for v in LIST_ATTACKS] + [
            ("[]", None, key), (f"[{{{next(iter(item))}: x, bogus: 1}}]", True, key)]
    if origin is list:
        return [(v, True, key) for v in LIST_ATTACKS] + [("[]", None, key)]
    if origin is dict:  # free-form: its entries are values too
        return [(f"{{x: {v}}}", True, key) for v in (".inf", "-.inf", ".nan")] + \
            [(v, True, key) for v in ["[]", "abc", "[1]"]]
    raise AssertionError(f"no attacks for {key}: {tp}")


ATTACKS = {key: _attacks(key, tp) for key, tp in _leaves(Schema)}
# every key against every attack (slow), and every key once, the attack kind rotating (default)
FULL = [(f"{key}={value}", refuse, named)
        for key, attacks in ATTACKS.items() for value, refuse, named in attacks]
SAMPLE = [(f"{key}={attacks[i % len(attacks)][0]}", *attacks[i % len(attacks)][1:])
          for i, (key, attacks) in enumerate(ATTACKS.items())]
UNKNOWN = [(f"{section + '.' if section else ''}no_such_key=1", True,
            f"{section + '.' if section else ''}no_such_key") for section in _sections(Schema)]


def test_every_schema_key_is_attacked():
    keys = {key for key, _ in _leaves(Schema)}
    assert {case[0].split("=", 1)[0] for case in SAMPLE} == keys and len(keys) >= 60
    kinds = {case[0].split("=", 1)[1] for case in SAMPLE}
    assert {".inf", "-.inf", ".nan", "[]", "abc"} <= kinds  # ±inf, NaN, empty list, wrong type


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("user data that must survive")
    return folder


def _fuzz(run_dir, cases):
    before = snapshot(run_dir)
    failures = []
    for override, must_refuse, named in cases:
        try:  # exactly what --check runs, minus argparse
            cfg = SCRIPT.load_config(None, [f"out_dir={run_dir}", "wandb.mode=disabled",
                                            override])
            _, _, trainer = SCRIPT.build(cfg, cfg.device)
            SCRIPT.read_run_dir(cfg, Path(cfg.out_dir), trainer=trainer)
        except SCRIPT.ConfigError as error:
            message = str(error)
            if f"'{named}" not in message or "\n" in message:
                failures.append(f"{override}: message does not name {named!r} on one line: "
                                f"{message}")
        except Exception as error:  # noqa: BLE001 (any other error type is the finding)
            failures.append(f"{override}: {type(error).__name__}: {error}")
        else:
            if must_refuse:
                failures.append(f"{override}: accepted")
    assert snapshot(run_dir) == before
    assert not failures, "\n".join(failures)


def test_fuzz_every_key_once_and_unknown_keys(run_dir):
    _fuzz(run_dir, SAMPLE + UNKNOWN)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(4))
def test_fuzz_every_key_with_every_attack(run_dir, chunk):
    _fuzz(run_dir, FULL[chunk::4])
