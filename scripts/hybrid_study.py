"""The hybrid GD–ODE optimizer's evaluation as a script: GD only, ODE only, heuristic and learned
switching, against tuned baselines.

    OMP_NUM_THREADS=1 python scripts/hybrid_study.py [--config configs/hybrid_study.yaml]
        [key=value ...]

On Rastrigin, Ackley, Himmelblau, six-hump camel and Styblinski-Tang (``tasks.test_functions``,
known global minima) from a ``grid × grid`` lattice of starts over each function's box, it runs
GD only, ODE only, the heuristic hybrid, the learned hybrid (a ``HybridGDODE`` checkpoint) and
Adam / SGD-momentum with lr tuned per function on a log grid widened until the best is interior.
All starts of a method run at once: ``HybridRule(batched=True)`` / the GD rules treat the leading
dimension as independent runs (``tests/rules/test_hybrid.py`` holds that equal to separate runs).
Per function and method: fraction of starts ending in the global basin (final gap below the
basin threshold: below every non-global local minimum), fraction reaching the target gap,
median iterations and gradient evaluations to it, median final gap; time per iteration and
optimizer-state memory come from the runtime torch.optim optimizers on one start. MLP tasks run
through the evaluation harness (``metaopt.evaluation``). Writes ``out_dir``: ``table.csv``,
``mlp.csv``, ``results.jsonl`` (with the mode traces) and PNGs (trajectories on the contour, the
mode over time).
"""
from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import tasks
from metaopt.checkpoint import load_checkpoint, resolve
from metaopt.evaluation import evaluate, format_table, make_optimizer, summarize
from metaopt.evaluation.tuning import tune_lr_interior
from metaopt.hybrid.optimizer import HybridGDODE
from metaopt.hybrid.policy import PolicyGate, SwitchingPolicy
from metaopt.hybrid.rule import ConstantSwitch, HeuristicSwitch
from metaopt.logging import WANDB_MODES, make_logger
from scripts.config_checks import check_values
from scripts.hybrid_study_config import FUNCTIONS, HybridSettings, StudyConfig
from scripts.hybrid_study_plots import plot_function
from scripts.hybrid_study_runs import (
    metrics,
    run_baseline,
    run_hybrid,
    runtime_cost,
    starts,
    tune,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def load(argv) -> tuple[StudyConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "hybrid_study.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = OmegaConf.structured(StudyConfig)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(args.config),
                              OmegaConf.from_dotlist(args.overrides))
    except Exception as error:  # noqa: BLE001 (OmegaConf/YAML errors name the key)
        raise SystemExit(f"config error: {error}") from None
    check_values(cfg, lambda m: SystemExit(f"config error: {m}"),
                 positive=("grid", "steps", "target", "hybrid.lr", "hybrid.ode_scale",
                           "tuning_low", "tuning_high", "tuning_per_decade", "timing_steps"))
    if cfg.wandb_mode not in WANDB_MODES:
        raise SystemExit(f"config error: invalid config key 'wandb_mode': must be one of "
                         f"{list(WANDB_MODES)}, got {cfg.wandb_mode!r}")
    unknown = set(cfg.functions) - set(FUNCTIONS)
    if unknown:
        raise SystemExit(f"config error: invalid config key 'functions': unknown {sorted(unknown)}")
    return cfg, args


# -- the methods compared -------------------------------------------------------------------------
def hybrid_kwargs(h: HybridSettings) -> dict:
    return dict(lr=h.lr, gd=h.gd, momentum=h.momentum, ode=h.ode, ode_scale=h.ode_scale,
                ode_cfl=h.ode_cfl, min_dwell=h.min_dwell, window=h.window,
                criteria=tuple(h.criteria), grad_threshold=h.grad_threshold,
                curvature_threshold=h.curvature_threshold,
                stagnation_threshold=h.stagnation_threshold, hysteresis=h.hysteresis)


def methods(cfg, learned):
    """name -> (batched policy, runtime options, module settings) for the hybrid variants.

    The learned hybrid runs as shipped: its checkpoint's GD/ODE settings (the policy's stability
    feature reads the lr it was trained with); the others use ``cfg.hybrid``."""
    h = cfg.hybrid
    heuristic = HeuristicSwitch(tuple(h.criteria), h.grad_threshold, h.curvature_threshold,
                                h.stagnation_threshold, h.hysteresis)
    out = {"gd_only": (ConstantSwitch(0.0), {"policy": "gd"}, h),
           "ode_only": (ConstantSwitch(1.0), {"policy": "ode"}, h),
           "hybrid_heuristic": (heuristic, {"policy": "heuristic"}, h)}
    if learned is not None:
        keys = ("gd", "lr", "momentum", "ode", "ode_scale", "ode_cfl", "min_dwell", "window")
        options = {k: v for k, v in learned.optimizer_config.items() if k in keys}
        settings = OmegaConf.merge(h, options)
        policy = learned.controller
        out["hybrid_learned"] = (PolicyGate(copy.deepcopy(policy).double(), hard=True),
                                 {"policy": policy.float(), **options}, settings)
    return out


# -- MLP tasks -------------------------------------------------------------------------------------
def mlp_table(cfg, policy_module) -> list[dict]:
    family = tasks.get("mlp", width=[16, 32], depth=[1, 2])
    kw = hybrid_kwargs(cfg.hybrid)
    optimizers = {}
    for name, (_, extra, _) in methods(cfg, policy_module).items():
        def factory(params, extra=extra):
            options = {**kw, **extra}
            if not isinstance(options["policy"], str):
                options["policy"] = copy.deepcopy(options["policy"])
            return HybridGDODE(params, **options)
        factory.label = name
        optimizers[name] = factory
    for base, extra in (("adam", {}), ("sgd_momentum", {"momentum": 0.9})):
        tuned = tune_lr_interior(make_optimizer(base, **extra), family, cfg.mlp_steps // 2)
        optimizers[f"{base}(lr={tuned.best_lr:.3g})"] = make_optimizer(
            base, label=f"{base}(lr={tuned.best_lr:.3g})", **extra, lr=tuned.best_lr)
    results = evaluate({"mlp": family}, optimizers, cfg.mlp_steps,
                       task_seeds=[2 ** 30 + i for i in range(cfg.mlp_tasks)], track_memory=True,
                       target=0.1, target_kind="relative")
    return summarize(results)


def sweep(cfg, out: Path) -> list[dict]:
    """The heuristic's criteria alone and combined, per threshold (batched runs only)."""
    h = cfg.hybrid
    variants = [("gradient", {"grad_threshold": v}) for v in cfg.sweep_grad]
    variants += [("curvature", {"curvature_threshold": v}) for v in cfg.sweep_curvature]
    variants += [("stagnation", {"stagnation_threshold": v}) for v in cfg.sweep_stagnation]
    variants += [("gradient+curvature+stagnation", {})]
    rows = []
    for name in cfg.functions:
        x0 = starts(name, cfg.grid)
        for criteria, thresholds in variants:
            settings = {"grad_threshold": h.grad_threshold,
                        "curvature_threshold": h.curvature_threshold,
                        "stagnation_threshold": h.stagnation_threshold, **thresholds}
            policy = HeuristicSwitch(tuple(criteria.split("+")), hysteresis=h.hysteresis,
                                     **settings)
            path, evals, mode = run_hybrid(name, x0, policy, h, cfg.steps)
            rows.append({"function": name, "criteria": criteria,
                         "threshold": next(iter(thresholds.values()), "defaults"),
                         **metrics(name, path, evals, cfg.target),
                         "ode_fraction": float(mode.double().mean())})
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows, list(rows[0])))
    return rows


def main(argv=None) -> dict:
    cfg, _ = load(argv)
    torch.set_num_threads(1)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.sweep:
        return {"sweep": sweep(cfg, out)}
    policy_module = None
    if cfg.learned:
        policy_module = load_checkpoint(resolve(cfg.learned))
        if not isinstance(policy_module.controller, SwitchingPolicy):  # GARO as its GD module
            raise SystemExit(f"config error: invalid config key 'learned': {cfg.learned!r} drives "
                             "its GD steps with a GARO controller, whose one global state does not "
                             "batch over this study's starts; `metaopt analyze ode_value` studies "
                             "it (or learned='' skips the learned row)")
    logger = make_logger(out, wandb_mode=cfg.wandb_mode, name="hybrid_study",
                         config=OmegaConf.to_container(cfg), jsonl_name="results.jsonl")
    rows, started = [], time.perf_counter()
    for name in cfg.functions:
        x0 = starts(name, cfg.grid)
        paths, modes = {}, {}
        tuned = {kind: tune(name, x0, kind, cfg) for kind in ("adam", "sgd_momentum")}
        variants = methods(cfg, policy_module)
        if cfg.hybrid_adam:  # the heuristic over tuned Adam's GD module (lr tuned for Adam)
            adam = OmegaConf.merge(cfg.hybrid, {"gd": "adam", "lr": tuned["adam"]})
            variants["hybrid_heuristic_adam"] = (variants["hybrid_heuristic"][0],
                                                 {"policy": "heuristic", "gd": "adam",
                                                  "lr": tuned["adam"]}, adam)
        for method, (policy, extra, settings) in variants.items():
            path, evals, mode = run_hybrid(name, x0, policy, settings, cfg.steps)
            kw = {**hybrid_kwargs(cfg.hybrid), **extra}
            ms, floats = runtime_cost(name, lambda ps, kw=kw: HybridGDODE(
                ps, **{**kw, "policy": copy.deepcopy(kw["policy"])}), cfg.timing_steps)
            rows.append({"function": name, "method": method, "lr": settings.lr,
                         **metrics(name, path, evals, cfg.target), "ms_per_iter": ms,
                         "state_floats_per_param": floats})
            paths[method] = path
            if method.startswith("hybrid"):
                modes[method] = mode
                logger.log_series(f"{name}/{method}/ode_fraction",
                                  {"ode_fraction": mode.double().mean(1).tolist()}, 0)
        for kind, torch_cls in (("adam", torch.optim.Adam), ("sgd_momentum", torch.optim.SGD)):
            lr = tuned[kind]
            path, evals, _ = run_baseline(name, x0, kind, lr, cfg.steps)
            extra = {"momentum": 0.9} if kind == "sgd_momentum" else {}
            ms, floats = runtime_cost(name, lambda ps, c=torch_cls, lr=lr, e=extra:
                                      c(ps, lr=lr, **e), cfg.timing_steps)
            rows.append({"function": name, "method": f"{kind}_tuned", "lr": lr,
                         **metrics(name, path, evals, cfg.target), "ms_per_iter": ms,
                         "state_floats_per_param": floats})
            paths[f"{kind}_tuned"] = path
        for row in rows[-len(paths):]:
            logger.log({f"{name}/{row['method']}/{k}": v for k, v in row.items()
                        if isinstance(v, float)}, 0)
        if cfg.plots:
            plot_function(name, paths, modes, out)
        print(f"{name}: done ({time.perf_counter() - started:.0f}s)", flush=True)
    columns = list(rows[0])
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(format_table(rows, columns))
    mlp = []
    if cfg.mlp_tasks > 0:
        mlp = mlp_table(cfg, policy_module)
        cols = ["optimizer", "runs", "diverged", "final_norm_loss_median", "reached_target",
                "steps_to_target_median", "grad_evals_mean", "ms_per_step", "state_kb"]
        print(format_table(mlp, cols))
        with open(out / "mlp.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(mlp[0]))
            writer.writeheader()
            writer.writerows(mlp)
    logger.log_table("hybrid_study", rows, 0)
    logger.close()
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    print(f"wrote {out} in {time.perf_counter() - started:.0f}s")
    return {"rows": rows, "mlp": mlp}


if __name__ == "__main__":
    main()
