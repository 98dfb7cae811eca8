"""docs/tutorial.md runs as written, in a temporary directory: its ```python blocks are executed
in order (one namespace), the files it asks to save (```yaml / ```python title="FILE") are
saved there, and its shell commands run through ``metaopt.cli.main`` with tiny work
(tests/docs_walk.py: a tiny copy of the config under the same name, resumable keys appended)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import tasks
from metaopt import cli

from .docs_walk import classify, commands, metaopt_argv

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
FENCE = re.compile(r'^```(\w+)([^\n]*)\n(.*?)^```', re.MULTILINE | re.DOTALL)


def _blocks():
    return [(m.group(1), m.group(2), m.group(3)) for m in FENCE.finditer(DOC.read_text())]


@pytest.fixture
def tutorial_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `import sine_task`, as from that folder
    monkeypatch.setenv("WANDB_MODE", "disabled")
    registry = dict(tasks._REGISTRY)
    yield tmp_path
    tasks._REGISTRY.clear()
    tasks._REGISTRY.update(registry)  # "sine" must not leak into other tests
    sys.modules.pop("sine_task", None)


def test_tutorial_runs_as_written(tutorial_dir, capsys):
    namespace: dict = {}
    ran, shell = 0, []
    for language, info, code in _blocks():
        if language == "python" and "title=" not in info:
            exec(compile(code, f"{DOC.name}[block {ran}]", "exec"), namespace)  # noqa: S102 (running the docs is the test)
            ran += 1
        elif language == "bash":
            for _, _, argv in commands([_snippet(code)]):
                kind, args = classify(argv)
                assert kind == "metaopt", argv
                argv_, is_help = metaopt_argv(list(args), tutorial_dir, run=True)
                assert not is_help and cli.main(argv_) == 0, capsys.readouterr().err
                shell.append(args[0])
        elif "title=" in info:
            name = re.search(r'title="([^"]+)"', info).group(1)
            (tutorial_dir / name).write_text(code)
    assert ran >= 3 and shell == ["tasks", "train", "evaluate"]
    assert (tutorial_dir / "runs" / "sine" / "optimizer.safetensors").is_file()
    assert (tutorial_dir / "runs" / "sine" / "meta_training.png").is_file()
    assert (tutorial_dir / "runs" / "sine_eval" / "plots" / "loss_sine.png").is_file()
    assert (tutorial_dir / "sine-optimizer" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "learned" in out and "adam_tuned" in out and "final loss" in out
    assert "sine:" in out and "amplitude = (0.5, 2.0)" in out  # `metaopt tasks --import`
    # the plain loop trained: the loss went down from the task's initial loss
    task = namespace["task"]
    x, y = namespace["x"], namespace["y"]
    initial = task.loss(task.init_params(), (x, y))
    assert namespace["loss"].item() < initial.item()
    assert isinstance(namespace["opt"], torch.optim.Optimizer)


def _snippet(code: str) -> Path:
    """A one-block markdown file, so commands() parses it like the docs."""
    path = Path.cwd() / ".snippet.md"
    path.write_text(f"```bash\n{code}```\n")
    return path


def test_the_tutorial_family_is_a_proper_family():
    """Its tasks are pure functions of the seed and the functional loss equals the module's."""
    namespace: dict = {}
    registry = dict(tasks._REGISTRY)
    try:
        exec(compile(_blocks()[0][2], "sine_task.py", "exec"), namespace)  # noqa: S102 (running the docs is the test)
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
                             str(tmp_path / "site")], check=False, cwd=root, capture_output=True,
                            text=True,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "tutorial" / "index.html").is_file()
