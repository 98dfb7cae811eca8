"""Config groups and override semantics for the typed script configs (OmegaConf, Hydra-style).

A *group* is a top-level section of the schema that has a folder ``configs/<section>/``:
``task=mlp`` loads ``configs/task/mlp.yaml`` and **replaces** the ``task`` section (the schema's
defaults, then the file), as Hydra's config groups do. For ``task`` a registered family without
a file also works (``task=beale`` is ``{name: beale, kwargs: {}}``: the family's own defaults).

Override rules (``key=value``, applied after the YAML file; group selections first, then the
rest in the order given, so ``task=mlp task.kwargs.width=[8,16]`` refines the selected group):

* ``task.name=X`` changing the family clears ``task.kwargs``: keyword arguments of one family
  are meaningless for another (a stale ``components`` made ``task.name=mlp`` fail).
* ``key={...}`` on a free-form dict (``task.kwargs``, ``baselines[i].hyperparameters``)
  replaces it; ``key={}`` and ``key=null`` clear it. Dataclass sections still merge key by key.

Why OmegaConf and not Hydra's compose API: OmegaConf already types these configs, and the group
semantics needed here are one small function; Hydra would add hydra-core (and antlr4) as a
dependency, a process-global ``initialize`` context, its own override grammar (``+key``,
``~key``) over the key-named ``ConfigError`` the scripts already guarantee, and output-directory
and logging management the scripts do not want. The files keep Hydra's layout
(``configs/<group>/<option>.yaml``), so a move to Hydra later would be mechanical.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

__all__ = ["CONFIG_DIR", "apply_overrides", "describe_keys", "group_options", "groups"]


def groups(schema: Any, config_dir: Path = CONFIG_DIR) -> list[str]:
    """Top-level dataclass sections of ``schema`` that have a ``configs/<section>/`` folder."""
    sections = [f.name for f in dataclasses.fields(schema)
                if dataclasses.is_dataclass(_field_type(schema, f.name))]
    return [s for s in sections if (config_dir / s).is_dir()]


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The option names of a group: the YAML files in ``configs/<group>/``."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _field_type(schema: Any, name: str) -> Any:
    cls = schema if isinstance(schema, type) else type(schema)
    return typing.get_type_hints(cls)[name]


def _parse_value(text: str) -> Any:
    """The YAML value of an override's right-hand side, as OmegaConf's dotlist parses it."""
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]


def _group_layer(group: str, option: str, config_dir: Path) -> Any:
    path = config_dir / group / f"{option}.yaml"
    if path.is_file():
        return OmegaConf.load(path)
    known = group_options(group, config_dir)
    extra = ""
    if group == "task":
        import tasks  # a registered family without a file: its own defaults
        if option in tasks.names():
            return OmegaConf.create({"name": option, "kwargs": {}})
        extra = f"; registered families: {', '.join(tasks.names())}"
        known = sorted(set(known) | set(tasks.names()))
    close = difflib.get_close_matches(option, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"{hint}no config {path} (options: {group_options(group, config_dir)}{extra})")


def apply_overrides(merged: DictConfig, overrides: list[str], schema: type,
                    error: Callable[[str], Exception], config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Apply ``key=value`` overrides to the structured config ``merged`` (see the module doc).

    ``error(message)`` builds the exception raised for a bad override (it names the key).
    """
    group_names = groups(schema, config_dir)
    selections = [o for o in overrides if o.split("=", 1)[0] in group_names]
    rest = [o for o in overrides if o not in selections]
    # a family switch by name acts like a selection: before the keys that refine it
    rest = sorted(rest, key=lambda o: o.split("=", 1)[0].strip() != "task.name")
    for override in selections:
        group, option = override.split("=", 1)
        try:
            section = OmegaConf.merge(OmegaConf.structured(_field_type(schema, group)),
                                      _group_layer(group, option.strip(), config_dir))
            merged[group] = section
        except (OmegaConfBaseException, ValueError, OSError) as exc:
            raise error(f"invalid config group {group!r} (override {override!r}): {exc}") from exc
    for override in rest:
        key, text = override.split("=", 1)
        key = key.strip()
        try:
            value = _parse_value(text)
            if key == "task.name" and value != merged.task.name:
                merged.task.kwargs = {}  # a new family: the old family's keywords are stale
            if _is_free_dict(merged, key) and (value is None or isinstance(value, dict)):
                OmegaConf.update(merged, key, {}, merge=False)  # replace, {} / null clear
                if value:
                    OmegaConf.update(merged, key, value, merge=True)
                continue
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"{key}={text}"]))
        except (OmegaConfBaseException, TypeError) as exc:  # TypeError: key=[] on a dict
            name = getattr(exc, "full_key", None) or key
            raise error(f"invalid config key {name!r} (override {override!r}): {exc}") from exc
    return merged


def _is_free_dict(merged: DictConfig, key: str) -> bool:
    """True for a ``dict[str, Any]`` field (not a dataclass section)."""
    node = OmegaConf.select(merged, key, throw_on_missing=False)
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


# --------------------------------------------------------------------------------- --help text
def _comments(cls: type) -> dict[str, str]:
    """``field -> trailing comment`` from the dataclass source (the schema's documentation)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    # a comment may go on over the following comment-only lines (hybrid.gate's choices)
    out = {}
    for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$((?:\n\s+#.*$)*)", source, re.MULTILINE):
        more = [line.strip().lstrip("#").strip() for line in m.group(3).splitlines()]
        out[m.group(1)] = " ".join([m.group(2).strip(), *filter(None, more)])
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(tp).replace("typing.", ""))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return OmegaConf.to_container(OmegaConf.structured(value)) \
            if dataclasses.is_dataclass(value) or (isinstance(value, list) and value
                                                   and dataclasses.is_dataclass(value[0])) \
            else value
    return "???"


def _lines(cls: type, prefix: str = "", values: Any = None) -> list[str]:
    hints, comments, out = typing.get_type_hints(cls), _comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _lines(tp, f"{prefix}{f.name}.", values)
            continue
        default = _default(f)
        if values is not None and not prefix.endswith("<i>."):  # the config file's value
            node = OmegaConf.select(values, prefix + f.name, throw_on_missing=False)
            default = OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) \
                else node
        args = typing.get_args(tp)
        if typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            out.append(f"  {prefix}{f.name}: list of {args[0].__name__} = {default!r}")
            out += _lines(args[0], f"{prefix}{f.name}.<i>.")  # the fields of each element
            continue
        comment = f"  # {comments[f.name]}" if f.name in comments else ""
        out.append(f"  {prefix}{f.name}: {_type_name(tp)} = {default!r}{comment}")
    return out


def describe_keys(schema: type, config_dir: Path = CONFIG_DIR, *,
                  override_rules: bool = True, values: Any = None, source: str = "") -> str:
    """The ``--help`` epilog: every config key with its type, default and comment, and the
    groups with their options (``override_rules``: the script applies ``apply_overrides``).
    ``values`` (the merged config of ``--config source`` and its overrides) replaces the
    schema's defaults by the values the run would use."""
    head = f"config keys (key=value overrides; type = value from {source}):" if values is not None \
        else "config keys (key=value overrides; type = default):"
    lines = [head, *_lines(schema, values=values)]
    names = groups(schema, config_dir)
    if names:
        lines += ["", "config groups (group=option replaces the whole section):"]
        lines += [f"  {group}=" + "|".join(group_options(group, config_dir)) for group in names]
    if "task" in names:
        lines += ["  (task=<any registered family> also works: `metaopt tasks` lists them)", "",
                  "task.name=X changing the family clears task.kwargs."]
    if override_rules:
        lines.append("key={} or key=null clears a free-form dict; key={...} replaces it.")
    return "\n".join(lines)
