"""What a person reads: the table's diverged column as a count of runs, and loss plots where a
diverged run is marked where it diverged, with a marker at every evaluation."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from metaopt.evaluation import RunResult, format_table, summarize

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import plots  # noqa: E402  (scripts/ is not a package)


def _run(seed, diverged, step=None, losses=(4.0, 2.0, 1.0)):
    result = RunResult(optimizer="opt", family="fam", task="fam", task_seed=seed, seed=0, steps=20)
    result.diverged, result.divergence_step = diverged, step
    result.train_losses = list(losses)
    result.eval_steps = [0, 10, 20][:len(losses)]
    result.eval_train_losses = list(losses)
    return result


def test_diverged_column_is_a_count_of_runs():
    rows = summarize([_run(0, True, 1), _run(1, True, 2)])
    assert rows[0]["diverged_runs"] == 2 and rows[0]["diverged"] == 1.0
    table = format_table(rows, ["optimizer", "runs", "diverged"])
    assert table.splitlines()[-1].split() == ["opt", "2", "2/2"]
    half = format_table(summarize([_run(0, True, 1), _run(1, False)]), ["runs", "diverged"])
    assert half.splitlines()[-1].split() == ["2", "1/2"]


def test_loss_plot_marks_divergence_and_every_evaluation():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fine = _run(0, False).to_dict()
    # diverged at step 15 after two evaluations (last finite loss 2.0); and one that diverged
    # at step 3, before any evaluation but the first
    broken = _run(1, True, 15, losses=(4.0, 2.0, math.inf)).to_dict()
    broken["eval_train_losses"] = [4.0, 2.0]
    broken["eval_steps"] = [0, 10]
    early = {**_run(2, True, 3, losses=(4.0, 3.0, 2.5, math.nan)).to_dict(),
             "optimizer": "early", "eval_steps": [0], "eval_train_losses": [4.0]}
    fig, ax = plt.subplots()
    plots.draw_family_losses(ax, [fine, broken, early], {})
    lines = ax.get_lines()
    curve = [ln for ln in lines if ln.get_marker() == "o" and ln.get_label().startswith("opt")]
    assert curve and list(curve[0].get_xdata()) == [0, 10, 20]  # a point per evaluation
    crosses = [ln for ln in lines if ln.get_marker() == "x"]
    where = sorted((float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in crosses)
    assert where == [(3.0, 2.5), (15.0, 2.0)]
    labels = [ln.get_label() for ln in lines if not ln.get_label().startswith("_")]
    assert "opt (1/2 diverged)" in labels and "early (1/1 diverged)" in labels
    assert ax.get_yscale() == "log"
    plt.close(fig)


def _meta_training_scale(tmp_path, losses):
    pytest.importorskip("matplotlib")
    import json

    import matplotlib.figure
    lines = [json.dumps({"step": s, "meta_loss": v}) for s, v in enumerate(losses, 1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    captured = {}
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["scale"] = fig.axes[0].get_yscale()
        return real(fig, *args, **kwargs)
    matplotlib.figure.Figure.savefig = keep
    try:
        assert plots.meta_training_curve(tmp_path / "metrics.jsonl", tmp_path / "m.png")
    finally:
        matplotlib.figure.Figure.savefig = real
    return captured["scale"]


def test_meta_training_curve_scale(tmp_path):
    noisy = [0.5 / s for s in range(1, 40)] + [-1e-3]  # one noisy meta-step below 0
    assert _meta_training_scale(tmp_path, noisy) == "log"
    assert _meta_training_scale(tmp_path, [-0.5 * s for s in range(1, 6)]) == "linear"
