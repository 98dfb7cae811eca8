"""docs/tutorial.md runs as written: its ```python blocks are executed in order (one namespace)
in a temporary directory, after its ```yaml title="FILE" blocks are saved there. The only
change: `metaopt.cli.main` gets tiny step counts appended to train / evaluate (key=value
overrides, the last one wins), so the test takes seconds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import metaopt.cli
import tasks

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
FENCE = re.compile(r'^```(\w+)([^\n]*)\n(.*?)^```', re.MULTILINE | re.DOTALL)
TINY = {"train": ["steps=2", "unroll.num_tasks=2", "unroll.truncation_length=3",
                  "unroll.horizon=6", "controller.hidden_size=4", "validation.every=1",
                  "validation.num_tasks=1", "validation.horizon=4", "evaluation.enabled=false",
                  "wandb.mode=disabled", "progress=false"],
        "evaluate": ["steps=4", "eval_every=2", "task_seeds=[0]", "tuning.num_lrs=2",
                     "tuning.steps=3", "tuning.task_seeds=[10000]", "track_memory=false"]}


def _blocks():
    return [(m.group(1), m.group(2), m.group(3)) for m in FENCE.finditer(DOC.read_text())]


def test_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_main, calls = metaopt.cli.main, []

    def tiny_main(argv):
        calls.append(argv[0])
        return real_main([*argv, *TINY.get(argv[0], [])])
    monkeypatch.setattr(metaopt.cli, "main", tiny_main)
    registry = dict(tasks._REGISTRY)
    try:
        namespace: dict = {}
        ran = 0
        for language, info, code in _blocks():
            title = re.search(r'title="([^"]+)"', info)
            if language == "yaml" and title:
                (tmp_path / title.group(1)).write_text(code)
            elif language == "python":
                exec(compile(code, f"{DOC.name}[block {ran}]", "exec"), namespace)  # noqa: S102 (running the docs is the test)
                ran += 1
        assert ran >= 5 and calls == ["train", "evaluate"]
        assert (tmp_path / "runs" / "sine" / "optimizer.safetensors").is_file()
        assert (tmp_path / "runs" / "sine" / "meta_training.png").is_file()
        assert (tmp_path / "runs" / "sine_eval" / "plots" / "loss_sine.png").is_file()
        assert (tmp_path / "sine-optimizer" / "model.safetensors").is_file()
        out = capsys.readouterr().out
        assert "learned" in out and "adam_tuned" in out and "final loss" in out
        # the plain loop trained: the loss went down from the task's initial loss
        task = namespace["task"]
        x, y = namespace["x"], namespace["y"]
        initial = task.loss(task.init_params(), (x, y))
        assert namespace["loss"].item() < initial.item()
        assert isinstance(namespace["opt"], torch.optim.Optimizer)
    finally:
        tasks._REGISTRY.clear()
        tasks._REGISTRY.update(registry)  # "sine" must not leak into other tests


def test_the_tutorial_family_is_a_proper_family():
    """Its tasks are pure functions of the seed and the functional loss equals the module's."""
    namespace: dict = {}
    registry = dict(tasks._REGISTRY)
    try:
        exec(compile(_blocks()[0][2], "tutorial[0]", "exec"), namespace)  # noqa: S102 (running the docs is the test)
        family = tasks.get("sine")
        a, b = family.sample_seed(3), family.sample_seed(3)
        assert torch.equal(a.y, b.y) and a.width == b.width
        assert not torch.equal(a.y, family.sample_seed(4).y)
        module = a.module()
        batch = a.eval_batch()
        assert torch.allclose(a.loss(a.init_params(), batch), a.module_loss(module, batch))
    finally:
        tasks._REGISTRY.clear()
        tasks._REGISTRY.update(registry)
    with pytest.raises(ValueError):
        tasks.get("sine")


@pytest.mark.slow
def test_docs_site_builds_strictly(tmp_path):
    """`make docs`'s build (warnings are errors); needs the docs extra."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys
    root = DOC.parents[1]
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], check=False, cwd=root, capture_output=True, text=True,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "tutorial" / "index.html").is_file()
