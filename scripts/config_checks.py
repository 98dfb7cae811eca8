"""Generic value checks for the scripts' typed configs: one walk over the whole config.

Every check names the dotted key it refuses (``evaluation.tuning_lrs[2]``), so a script can turn
it into its ``ConfigError``. The walk covers every key of the schema, including keys added later
and values inside free-form dicts and lists, so a new key is checked without being listed here:

* every float anywhere must be finite (±inf and NaN are refused: ``not x > 0`` lets inf through,
  and a non-finite hyperparameter silently turns training into a no-op or NaN weights);
* every int of the schema must be ≥ 0 (counts, sizes, seeds); stricter bounds come from tables.

Tables (by dotted key) then add what a type cannot say: strictly positive, open/closed ranges,
non-empty lists whose elements are positive.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["check_values", "one_line", "schema_int_keys", "walk"]


def one_line(message: str) -> str:
    """A multi-line library message (OmegaConf, PyYAML) folded into one line, without
    OmegaConf's ``full_key: / object_type=`` trailer (the key is named by the caller)."""
    noise = ("full_key:", "object_type=", "reference_type=", "child_flags", "parent_flags")
    parts = [line.strip() for line in str(message).splitlines()]
    return " ".join(p for p in parts if p and not p.startswith(noise))


def walk(node: Any, prefix: str = ""):
    """Yield ``(dotted_key, value)`` for every leaf of a config (containers or plain objects)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, v in enumerate(node):
            yield from walk(v, f"{prefix}[{i}]")
        if not node:
            yield prefix, node
    else:
        yield prefix, node


def _in_range(value: float, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def check_values(cfg: Any, error: Callable[[str], Exception], *, schema_ints: Sequence[str] = (),
                 positive: Sequence[str] = (),
                 ranges: Mapping[str, tuple[float, float, bool, bool]] | None = None,
                 positive_lists: Sequence[str] = ()) -> None:
    """Raise ``error(message)`` for the first bad value (see the module doc).

    ``schema_ints``: dotted keys typed ``int`` by the schema (must be ≥ 0). ``positive``: keys that
    must be > 0. ``ranges``: ``key -> (low, high, low_open, high_open)``. ``positive_lists``:
    list keys that must be non-empty with every element > 0.
    """
    for key, value in walk(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"invalid config key {key!r}: must be finite, got {value!r}")
    for key in schema_ints:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int) and value < 0:
            raise error(f"invalid config key {key!r}: must be >= 0, got {value!r}")
    for key in positive:
        value = OmegaConf.select(cfg, key)
        if not (isinstance(value, (int, float)) and value > 0):
            raise error(f"invalid config key {key!r}: must be > 0, got {value!r}")
    for key, (low, high, low_open, high_open) in (ranges or {}).items():
        value = OmegaConf.select(cfg, key)
        if not (isinstance(value, (int, float)) and _in_range(value, low, high, low_open,
                                                              high_open)):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise error(f"invalid config key {key!r}: must be in {interval}, got {value!r}")
    for key in positive_lists:
        values = OmegaConf.select(cfg, key)
        if values is None or len(values) == 0:
            raise error(f"invalid config key {key!r}: must be a non-empty list, got {values!r}")
        for i, value in enumerate(values):
            if not (isinstance(value, (int, float)) and value > 0):
                raise error(f"invalid config key '{key}[{i}]': must be > 0, got {value!r}")


def schema_int_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of every ``int`` field of a dataclass schema (nested sections included)."""
    import dataclasses
    import typing
    hints, out = typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += schema_int_keys(tp, f"{prefix}{f.name}.")
        elif tp is int:
            out.append(prefix + f.name)
    return out
