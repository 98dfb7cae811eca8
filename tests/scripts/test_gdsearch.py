"""scripts/gdsearch.py: config validation before any work, --list, and every study's outputs.

The end-to-end runs of every discovered study (with its ``SMOKE`` overrides) are marked slow:
``make test-slow`` or ``pytest -m slow tests/scripts/test_gdsearch.py``.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.studies import discover

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gdsearch.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gdsearch_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gdsearch = _load_script()

STUDIES = discover()


@dataclass
class _Inner:
    sigma: float = 0.1


@dataclass
class _Config:
    lr: float = 0.1
    steps: int = 3
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.2])
    inner: _Inner = field(default_factory=_Inner)

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps: must be > 0, got {self.steps}")


@pytest.mark.parametrize("override, key", [
    ("bogus=1", "bogus"), ("steps=abc", "steps"), ("lr=nan", "lr"), ("lr=-inf", "lr"),
    ("lrs=[0.1,inf]", "lrs[1]"), ("inner.sigma=nan", "inner.sigma"), ("inner.nope=1", "nope"),
    ("steps=0", "steps"), ("steps", "steps"),
])
def test_bad_config_is_one_line_naming_the_key(override, key):
    with pytest.raises(gdsearch.ConfigError) as info:
        gdsearch.load_config(_Config, None, [override])
    message = str(info.value)
    assert key in message and "\n" not in message


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\nsteps: 7\ninner:\n  sigma: 0.25\n")
    cfg = gdsearch.load_config(_Config, path, ["steps=9"])
    assert isinstance(cfg, _Config) and (cfg.lr, cfg.steps, cfg.inner.sigma) == (0.5, 9, 0.25)
    path.write_text("lr: .nan\n")
    with pytest.raises(gdsearch.ConfigError, match="'lr'"):
        gdsearch.load_config(_Config, path, [])


def test_list_names_every_study(capsys):
    assert gdsearch.main(["--list"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line.split()[0] for line in lines] == list(STUDIES)


def test_cli_errors_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert gdsearch.main(["no_such_study", "--out", str(out)]) == 2
    assert "unknown study" in capsys.readouterr().err
    for name in STUDIES:
        assert gdsearch.main([name, "--out", str(out), "no_such_key=1", "--wandb", "disabled"]) == 2
        assert "no_such_key" in capsys.readouterr().err
    assert not out.exists()


def test_every_study_has_a_committed_config():
    for name, module in STUDIES.items():
        path = ROOT / "configs" / "gdsearch" / f"{name}.yaml"
        assert path.exists(), name
        gdsearch.load_config(module.Config, path, list(getattr(module, "SMOKE", [])))


@pytest.mark.slow  # every study end to end: ~35 s CPU in all (torch.optim's first step alone ~3 s)
@pytest.mark.parametrize("name", list(STUDIES))
def test_study_writes_csv_png_report_and_log(name, tmp_path):
    _run_and_check(name, tmp_path)


def _run_and_check(name, tmp_path):
    module = STUDIES[name]
    code = gdsearch.main([name, "--out", str(tmp_path), "--wandb", "disabled",
                          *getattr(module, "SMOKE", [])])
    assert code == 0
    assert list(tmp_path.glob("*.csv")) and list(tmp_path.glob("*.png"))
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# ") and len(report) > 100
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    images = {r["image"] for r in records if "image" in r}
    assert {p.stem for p in tmp_path.glob("*.png")} <= images
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.slow  # a fresh interpreter importing every study (torch, matplotlib, tasks)
def test_script_runs_as_a_command():
    import subprocess
    result = subprocess.run([sys.executable, str(SCRIPT), "--list"], check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines() if line] == list(STUDIES)


def test_one_study_end_to_end_in_the_default_suite(tmp_path):
    """The cheapest study through the driver (the rest run under -m slow)."""
    _run_and_check("rk_vs_sgd", tmp_path)
