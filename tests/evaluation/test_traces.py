"""TracingFactory / optimizer_trace against a hand-written loop reading the optimizers' own
attributes, and scripts/evaluate.py evaluating checkpoints by name and path, with PNGs."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import metaopt
from metaopt.checkpoint import resolve
from metaopt.evaluation import TracingFactory, make_optimizer, optimizer_trace
from metaopt.factory import NamedOptimizerFactory

REPO = Path(__file__).resolve().parents[2]
PRETRAINED = metaopt.list_pretrained()[0]


def _quadratic_steps(opt, x, steps):
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = (torch.arange(1.0, 4.0) * x ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)


def test_garo_trace_equals_hyperparams_read_by_hand():
    traced = TracingFactory(NamedOptimizerFactory(PRETRAINED))
    x1 = torch.ones(3, requires_grad=True)
    _quadratic_steps(traced([x1]), x1, 5)
    x2 = torch.ones(3, requires_grad=True)
    opt = metaopt.load_optimizer(PRETRAINED, [x2])
    lr = []
    for _ in range(5):
        _quadratic_steps(opt, x2, 1)
        lr.append(opt.hyperparams["lr"])
    assert traced.traces[0]["lr_t"] == lr and len(traced.traces[0]["momentum_t"]) == 5
    assert torch.equal(x1, x2)  # tracing does not change the run


def test_dcao_trace_is_its_probe_and_schedule():
    x = torch.ones(3, requires_grad=True)
    opt = metaopt.optim.DCAO([x], lr=0.1, probe_every=2, k=1, lanczos_iters=3, alpha=0.1)
    _quadratic_steps(opt, x, 1)
    trace = optimizer_trace(opt)
    # the Hessian is diag(2, 4, 6): spectral radius 6 (dense oracle), lr_t = 0.1 exp(-0.1 * 6)
    assert trace["spectral_radius"] == pytest.approx(6.0, rel=1e-5)
    assert trace["lr_t"] == pytest.approx(0.1 * torch.exp(torch.tensor(-0.6)).item(), rel=1e-5)


def test_hybrid_trace_records_its_mode_as_read_by_hand():
    settings = {"lr": 0.01, "momentum": 0.5, "grad_threshold": 0.8, "min_dwell": 2,
                "criteria": ("gradient",)}  # on this problem: GD, then ODE from step 3
    traced = TracingFactory(NamedOptimizerFactory("hybrid_gdode", **settings))
    x1 = torch.ones(3, requires_grad=True)
    _quadratic_steps(traced([x1]), x1, 8)
    x2 = torch.ones(3, requires_grad=True)
    opt = metaopt.optim.HybridGDODE([x2], **settings)
    modes = []
    for _ in range(8):
        _quadratic_steps(opt, x2, 1)
        modes.append(opt.mode)
    assert traced.traces[0]["mode"] == modes
    assert set(modes) == {"gd", "ode"}  # the run crossed a switch, so the trace shows one
    assert len(traced.traces[0]["gradient_evaluations"]) == 8


def test_untraceable_optimizer_gets_empty_traces_and_factory_protocol_holds():
    traced = TracingFactory(make_optimizer("adam", lr=0.1))
    x = torch.ones(3, requires_grad=True)
    _quadratic_steps(traced([x]), x, 2)
    assert traced.traces == [{}]
    tuned = traced.with_hyperparameters(lr=0.5)
    assert isinstance(tuned, TracingFactory) and tuned.hyperparameters["lr"] == 0.5


def _evaluate_module():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" /
                                                  "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_evaluate_checkpoints_by_name_and_path_with_plots(tmp_path):
    evaluate_script = _evaluate_module()
    directory = metaopt.hub.save_pretrained(PRETRAINED, tmp_path / "hubdir")
    results = evaluate_script.main([
        f"out_dir={tmp_path / 'out'}", "steps=8", "eval_every=4", "task_seeds=[0]",
        "track_memory=false",
        "tasks=[{name: quadratic, kwargs: {dim: [2, 3]}}]",
        (f"optimizers=[{{name: {PRETRAINED}}}, {{name: '{resolve(PRETRAINED)}', label: file}}, "
         f"{{name: '{directory}', label: hub}}, {{name: adamw, hyperparameters: {{lr: 0.01}}}}]")])
    by_label = {r.optimizer: r for r in results}
    assert by_label[PRETRAINED].train_losses == by_label["file"].train_losses \
        == by_label["hub"].train_losses  # one checkpoint, three ways to name it
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    traced = {t["optimizer"] for t in payload["traces"]}
    assert traced == {PRETRAINED, "file", "hub"}  # adamw exposes nothing to trace
    assert all(len(t["trace"]["lr_t"]) == 8 for t in payload["traces"])
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert plots == ["loss_quadratic.png", "traces_quadratic.png"]
    assert all((tmp_path / "out" / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
               for p in plots)


def test_evaluate_unknown_checkpoint_is_a_config_error(tmp_path):
    evaluate_script = _evaluate_module()
    with pytest.raises(evaluate_script.ConfigError, match="did you mean"):
        evaluate_script.main([f"out_dir={tmp_path}", "tasks=[{name: quadratic}]",
                              "optimizers=[{name: garo_quadratic}]"])
    with pytest.raises(evaluate_script.ConfigError, match="no checkpoint"):
        evaluate_script.main([f"out_dir={tmp_path}", "tasks=[{name: quadratic}]",
                              "optimizers=[{name: runs/none/optimizer.safetensors}]"])


def test_evaluate_logs_pngs_and_trace_charts_to_wandb_offline(tmp_path):
    evaluate_script = _evaluate_module()
    out = tmp_path / "out"
    evaluate_script.main([f"out_dir={out}", "steps=5", "eval_every=5", "task_seeds=[0]",
                          "track_memory=false", "wandb.mode=offline",
                          "tasks=[{name: quadratic, kwargs: {dim: [2, 3]}}]",
                          f"optimizers=[{{name: {PRETRAINED}, label: learned}}]"])
    media = next((out / "wandb").glob("offline-run-*")) / "files" / "media"
    assert [p.name.split("_")[0] for p in (media / "images" / "plots").iterdir()] \
        and any(p.name.startswith("loss_quadratic") for p in (media / "images" / "plots").iterdir())
    table = next((media / "table" / "traces" / "quadratic" / "learned").glob("lr_t_table*.json"))
    logged = [row[1] for row in json.loads(table.read_text())["data"]]
    recorded = json.loads((out / "results.json").read_text())["traces"][0]["trace"]["lr_t"]
    assert logged == pytest.approx(recorded, rel=1e-12)  # the chart is the recorded trace
