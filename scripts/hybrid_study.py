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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

import tasks
from metaopt.checkpoint import load_checkpoint, resolve
from metaopt.evaluation import evaluate, format_table, make_optimizer, summarize
from metaopt.evaluation.tuning import tune_lr_interior
from metaopt.hybrid.hyper import HybridHyper
from metaopt.hybrid.optimizer import HybridGDODE, make_gd_rule, make_ode_rule
from metaopt.hybrid.policy import PolicyGate, SwitchingPolicy
from metaopt.hybrid.rule import ConstantSwitch, HeuristicSwitch, HybridRule
from metaopt.logging import WANDB_MODES, make_logger
from metaopt.rules.adam import AdamRule
from metaopt.rules.hyper import GDHyper, ODEHyper
from metaopt.rules.sgd import SGDRule
from scripts.config_checks import check_values
from tasks.test_functions import TEST_FUNCTIONS_2D

REPO_ROOT = Path(__file__).resolve().parents[1]

FUNCTIONS = ("rastrigin", "ackley", "himmelblau", "six_hump_camel", "styblinski_tang")
#: final gap f − f* below which a start ended in the global basin: half the gap of the best
#: non-global local minimum (Rastrigin ≈ 0.99, Ackley ≈ 2.6, six-hump camel 0.816 (−0.2155),
#: Styblinski–Tang 14.1 (−64.2); Himmelblau's four minima are all global: its saddles/maximum
#: have gaps ≥ 13)
BASIN_GAP = {"rastrigin": 0.5, "ackley": 1.0, "himmelblau": 0.5, "six_hump_camel": 0.4,
             "styblinski_tang": 7.0}


@dataclass
class HybridSettings:
    gd: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    ode: str = "rk4"
    ode_scale: float = 5.0  # ODE step = lr · ode_scale (capped at ode_cfl / curvature)
    ode_cfl: float = 1.0
    min_dwell: int = 5
    window: int = 10
    criteria: list[str] = field(default_factory=lambda: ["gradient", "curvature", "stagnation"])
    grad_threshold: float = 0.01
    curvature_threshold: float = 2.0
    stagnation_threshold: float = 0.001
    hysteresis: float = 2.0


@dataclass
class StudyConfig:
    out_dir: str = "results/hybrid_study"
    functions: list[str] = field(default_factory=lambda: list(FUNCTIONS))
    grid: int = 20  # grid × grid starts (≥ 400 with the default)
    steps: int = 150
    target: float = 1e-3  # the target gap f − f*
    learned: str = ""  # a switch-only HybridGDODE checkpoint (path or shipped name); "" skips
    hybrid: HybridSettings = field(default_factory=HybridSettings)
    tuning_low: float = 1e-3  # initial log grid of the Adam / SGD-momentum lr, widened until
    tuning_high: float = 1.0  # the best lr (mean final gap) is interior
    tuning_per_decade: int = 2
    timing_steps: int = 10
    mlp_tasks: int = 3  # MLP tasks from tasks.get("mlp") (0: skip)
    mlp_steps: int = 150
    plots: bool = True
    seed: int = 0
    wandb_mode: str = "disabled"  # disabled | offline | online (results.jsonl is always written)
    hybrid_adam: bool = True  # also the heuristic hybrid with tuned Adam as its GD module
    sweep: bool = False  # instead of the study: each heuristic criterion alone and combined,
    # over the threshold grids below (how the HeuristicSwitch defaults were measured)
    sweep_grad: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    sweep_curvature: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    sweep_stagnation: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2])


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


# -- batched runs over the grid of starts ---------------------------------------------------------
def starts(name: str, grid: int) -> torch.Tensor:
    low, high = TEST_FUNCTIONS_2D[name].init_box
    axis = torch.linspace(low, high, grid + 2, dtype=torch.float64)[1:-1]  # interior lattice
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


def batched_grad_fn(name: str):
    f = TEST_FUNCTIONS_2D[name].function  # (R, 2) -> (R,): written over the last dimension

    def grad_fn(points):
        (x,) = points
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            values = f(x)
            (g,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), [g]
    return grad_fn


def run_hybrid(name, x0, policy, h: HybridSettings, steps):
    rule = HybridRule(make_gd_rule(h.gd), make_ode_rule(h.ode), min_dwell=h.min_dwell,
                      window=h.window, ode_cfl=h.ode_cfl, batched=True)
    grad_fn = batched_grad_fn(name)
    hyper = HybridHyper(gd=GDHyper(h.lr, h.momentum), ode=ODEHyper(h.lr * h.ode_scale),
                        policy=policy, stability_lr=h.lr)
    params, state = [x0.clone()], rule.init([x0])
    path, evals, modes = [x0.clone()], [], []
    with torch.no_grad():
        for _ in range(steps):
            params, state = rule.step(params, grad_fn, state, hyper)
            path.append(params[0].clone())
            evals.append(state["evaluations"].clone())
            modes.append(state["mode"].clone())
    return torch.stack(path), torch.stack(evals), torch.stack(modes)


def run_baseline(name, x0, kind, lr, steps):
    rule = AdamRule() if kind == "adam" else SGDRule()
    hyper = GDHyper(lr) if kind == "adam" else GDHyper(lr, momentum=0.9)
    grad_fn = batched_grad_fn(name)
    params, state, path = [x0.clone()], rule.init([x0]), [x0.clone()]
    with torch.no_grad():
        for _ in range(steps):
            params, state = rule.step(params, grad_fn, state, hyper)
            path.append(torch.nan_to_num(params[0], nan=1e6).clamp(-1e6, 1e6))
    evals = torch.arange(1, steps + 1, dtype=torch.float64)[:, None].expand(-1, x0.shape[0])
    return torch.stack(path), evals, None


def gaps(name, path):
    fn = TEST_FUNCTIONS_2D[name]
    values = fn.function(path)
    return torch.nan_to_num(values - fn.minimum_value, nan=math.inf)


def metrics(name, path, evals, target) -> dict:
    gap = gaps(name, path)  # (steps + 1, R)
    final = gap[-1]
    reached = gap[1:] < target
    hit = reached.any(0)
    first = reached.float().argmax(0)
    iters = (first + 1)[hit].double()
    ev = evals.gather(0, first[None])[0][hit] if hit.any() else torch.empty(0)
    def med(t):
        return float(t.median()) if t.numel() else math.nan

    return {"global_basin": float((final < BASIN_GAP[name]).double().mean()),
            "reached_target": float(hit.double().mean()), "iters_to_target": med(iters),
            "evals_to_target": med(ev.double()), "final_gap_median": float(final.median()),
            "evals_total_mean": float(evals[-1].double().mean())}


def tune(name, x0, kind, cfg) -> float:
    """lr with the lowest mean final gap on a log grid widened until the best is interior."""
    per = cfg.tuning_per_decade
    lo, hi = math.log10(cfg.tuning_low), math.log10(cfg.tuning_high)
    scores: dict[float, float] = {}
    for _ in range(8):
        n = int(round((hi - lo) * per)) + 1
        for e in torch.linspace(lo, hi, n).tolist():
            lr = float(f"{10 ** e:.4g}")
            if lr not in scores:
                path, _, _ = run_baseline(name, x0, kind, lr, cfg.steps)
                final = gaps(name, path[-1:])[0]
                scores[lr] = float(final.clamp(max=1e6).mean())
        best = min(scores, key=scores.get)
        ordered = sorted(scores)
        if best == ordered[0]:
            lo -= 1
        elif best == ordered[-1]:
            hi += 1
        else:
            return best
    return best


# -- runtime cost on one start ---------------------------------------------------------------------
def runtime_cost(name, factory, steps) -> tuple[float, float]:
    """(ms per iteration, optimizer-state floats per parameter) of a torch.optim optimizer."""
    fn = TEST_FUNCTIONS_2D[name].function
    x = starts(name, 3)[4].clone().float().requires_grad_()
    opt = factory([x])

    def closure():
        opt.zero_grad()
        loss = fn(x)
        loss.backward()
        return loss
    started = time.perf_counter()
    for _ in range(steps):
        opt.step(closure)
    ms = 1e3 * (time.perf_counter() - started) / steps
    floats = sum(v.numel() for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor))
    return ms, floats / x.numel()


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


# -- plots ---------------------------------------------------------------------------------------
def plot_function(name, paths, modes, out: Path, every: int = 41):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fn = TEST_FUNCTIONS_2D[name]
    low, high = fn.init_box
    axis = torch.linspace(low, high, 200, dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    zs = fn.function(torch.stack([xs, ys], -1))
    fig, axes = plt.subplots(1, len(paths), figsize=(3.2 * len(paths), 3.2), squeeze=False)
    for ax, (method, path) in zip(axes[0], paths.items()):
        ax.contour(xs, ys, zs - zs.min(), levels=25, linewidths=0.4, cmap="viridis")
        for r in range(0, path.shape[1], every):
            p = path[:, r].clamp(low, high)
            ax.plot(p[:, 0], p[:, 1], lw=0.7)
            ax.plot(p[-1, 0], p[-1, 1], "k.", ms=3)
        for m in fn.minimizers:
            ax.plot(*m, "r*", ms=8)
        ax.set_title(method, fontsize=8)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
    fig.suptitle(f"{name}: trajectories from every {every}th start (spread over the lattice)")
    fig.tight_layout()
    fig.savefig(out / f"{name}_trajectories.png", dpi=110)
    plt.close(fig)
    if modes:
        fig, ax = plt.subplots(figsize=(5, 3))
        for method, m in modes.items():
            ax.plot(m.double().mean(1), label=method)
        ax.set_xlabel("iteration")
        ax.set_ylabel("fraction of starts in ODE mode")
        ax.set_title(f"{name}: mode over time")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{name}_modes.png", dpi=110)
        plt.close(fig)


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
