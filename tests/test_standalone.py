"""The library stands alone: ``import metaopt`` imports neither ``tasks`` nor ``scripts`` nor the
heavy optional packages, and task families come through ``metaopt.task_registry``."""
from __future__ import annotations

from pathlib import Path

import pytest

from metaopt import task_registry

from .fresh_python import ROOT, run_fresh

HEAVY = ("tasks", "scripts", "wandb", "matplotlib", "sklearn", "omegaconf", "torchdiffeq", "scipy")


@pytest.mark.parametrize("statement", [
    "import metaopt", "import metaopt.cli",
    "import metaopt.analysis, metaopt.evaluation, metaopt.meta, metaopt.logging"])
def test_import_pulls_in_nothing_above_the_library(statement):
    code = (f"{statement}; import sys; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert run_fresh(code).strip() == ""


def test_listing_and_loading_checkpoints_pulls_in_no_compiler():
    """``metaopt list`` describes every shipped checkpoint: their shape checks run on meta-device
    twins, which must not compute (meta arithmetic imports torch._dynamo, seconds of start-up);
    nor does ``metaopt list`` import pytorch_optimizer unless asked."""
    code = ("import sys, metaopt.cli; metaopt.cli.main(['list']); "
            "print('MODULES', ' '.join(m for m in ('torch._dynamo', 'pytorch_optimizer') "
            "if m in sys.modules))")
    assert run_fresh(code).strip().splitlines()[-1].strip() == "MODULES"


def test_no_sys_path_edits_in_the_library_or_scripts():
    for folder in ("metaopt", "scripts", "tasks"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "sys.path.insert" not in path.read_text(), path


def test_a_users_family_registers_and_builds(monkeypatch):
    monkeypatch.setattr(task_registry, "_FAMILIES", {})
    monkeypatch.setattr(task_registry, "_PLUGINS_LOADED", True)

    def factory(size: int = 2):
        return ("family", size)
    task_registry.register_family("user_family", factory)
    assert task_registry.family_names() == ["user_family"]
    assert task_registry.get_family("user_family", size=3) == ("family", 3)
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['sise'\]"):
        task_registry.get_family("user_family", sise=3)
    with pytest.raises(ValueError, match="already registered"):
        task_registry.register_family("user_family", factory)
    with pytest.raises(ValueError, match="unknown task family 'no_such'"):
        task_registry.get_family("no_such")


def test_entry_points_are_imported_on_first_lookup(monkeypatch, tmp_path):
    (tmp_path / "plugin_families.py").write_text(
        "from metaopt.task_registry import register_family\n"
        "register_family('plugin_family', lambda: 'built')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(task_registry, "_FAMILIES", {})
    monkeypatch.setattr(task_registry, "_PLUGINS_LOADED", False)

    class Entry:
        value = "plugin_families"
    monkeypatch.setattr(task_registry, "entry_points", lambda group: [Entry()]
                        if group == task_registry.ENTRY_POINT_GROUP else [])
    assert task_registry.family_names() == ["plugin_family"]
    assert task_registry.get_family("plugin_family") == "built"


def test_tasks_fills_the_library_registry():
    import tasks
    assert tasks.names() == task_registry.family_names()
    assert "quadratic" in task_registry.family_names()
    assert tasks._REGISTRY is task_registry._FAMILIES  # the old private name still works


def test_no_import_cycle_between_subpackages():
    """Module-level imports between metaopt's subpackages form no cycle (lazy imports inside
    functions are allowed: they run after every module is loaded)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "metaopt"

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                targets = [".".join([*base, node.module])] if node.module else \
                    [".".join([*base, alias.name]) for alias in node.names]
            else:
                targets = [node.module or ""]
            for target in targets:
                a, b = package(module), package(target)
                if target.startswith("metaopt") and a and b and a != b:
                    edges.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(a for a in edges if reaches(a, a, {a}))
    assert not cycles, f"subpackages on an import cycle: {cycles} ({edges})"
