"""The library stands alone: ``import metaopt`` imports neither ``tasks`` nor ``scripts`` nor the
heavy optional packages, and task families come through ``metaopt.task_registry``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metaopt import task_registry

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tasks", "scripts", "wandb", "matplotlib", "sklearn", "omegaconf", "torchdiffeq", "scipy")


@pytest.mark.parametrize("statement", [
    "import metaopt", "import metaopt.cli",
    "import metaopt.analysis, metaopt.evaluation, metaopt.meta, metaopt.logging"])
def test_import_pulls_in_nothing_above_the_library(statement):
    code = (f"{statement}; import sys; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == ""


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
