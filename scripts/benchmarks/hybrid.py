"""The switching policy's own cost per step vs a GD step (target: ≤ 5%).

For the ~1M-parameter MLP at batch 256 (``common.py``), timed side by side in one process:

* ``sgd_step``: zero_grad + forward + backward + ``torch.optim.SGD(momentum=0.9, foreach)``;
* ``policy_learned`` / ``policy_heuristic``: the policy step alone — the switching features of
  ``HybridRule.features`` (gradient norm, secant curvature ‖g_t − g_{t−1}‖/‖Δθ‖ with the
  previous gradient copied, loss window) plus the decision (learned net or heuristic) and its
  host sync; the ratio to ``sgd_step`` is the number the target reads;
* ``hybrid_gd_step``: a whole ``HybridGDODE`` step in GD mode with the learned policy: the
  runtime path of ``metaopt.hybrid.runtime`` (features, policy, the fused momentum-SGD update in
  place, one host read); its ratio to ``sgd_step`` is the hybrid's whole overhead in GD mode
  (target: ≤ 1.05).

On the CPU the candidates are timed twice: by the wall clock (``ratio_to_sgd_step``) and by
this process's CPU time (``cpu_ratio_to_sgd_step``, ``time.process_time``), which a loaded
machine disturbs less (a wall-clock median penalises the candidate that is preempted more).

Measured on one core of an otherwise idle machine (1-minute load 0.9–1.0, two runs):
``hybrid_gd_step`` 1.10× ``sgd_step`` by the wall clock, 1.11× in CPU time (1.27× before the
host-float switch and the copy-on-write g_prev). ``policy_learned`` / ``policy_heuristic``:
0.11–0.16 / 0.08–0.12 of an SGD step; their cost is the reference's feature passes over the 1M
parameters (‖g‖, the secant's dot products, ~30 tensor ops and a host read: 1.1–1.2 ms), not
the net (0.18 ms as torch ops; the runtime path evaluates it in NumPy, ~0.02 ms). What the
hybrid step still pays over SGD is pass 1 of the runtime path (reading g and g_prev for ‖g_i‖
and ‖g − g_prev‖: 1.2–2.4 ms after a forward and backward, g_prev cold): with it taken away the
step costs 0.98–1.05× SGD's (the fused update with the buffers' norms, the host work), with the
norms also left out 0.96–1.00× (these pieces timed in CPU time under load 3.2–4.9). The
dot-product identity ‖g‖² + ‖g_prev‖² − 2⟨g, g_prev⟩ instead of the exact difference would save
0.35–0.5 ms, not the target either.

``--mode garo``: the shipped ``hybrid_general`` (GARO as its GD module) against that GD module
alone, the shipped ``garo_general``, and ``torch.optim.Adam(foreach=True)``, on the residual
MLP, the CNN on digits, logistic regression on iris, Rosenbrock (``garo.py``'s small models) and
the ~1M-parameter MLP: every row a whole training step (zero_grad + forward + backward + step,
the loss handed to both learned optimizers), single steps and steady blocks as in ``garo.py``.
``hybrid_general_reference`` is the hybrid with its runtime GD path off: every step through
``HybridRule.step`` (the only path before ``metaopt.hybrid.garo_runtime``). Target: the
hybrid's GD step ≤ 1.05× ``garo_general``'s (``ratio_to_garo``).
"""
from __future__ import annotations

import time

import torch

from metaopt.hybrid.hyper import HybridHyper
from metaopt.hybrid.optimizer import HybridGDODE
from metaopt.hybrid.policy import PolicyGate, SwitchingPolicy
from metaopt.hybrid.rule import HeuristicSwitch, HybridRule, run_norms
from metaopt.rules.hyper import GDHyper, ODEHyper
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule

from .common import batch, make_closure, mlp_1m, time_side_by_side

GARO_MODELS = ("residual_mlp_64", "cnn_digits_16ch", "logreg_iris", "rosenbrock")
HORIZON = 10_000


def _garo_candidates(make_module, loss_of) -> dict:
    """name -> one training step of a fresh model (``loss_of(model)``: its loss)."""
    import metaopt

    def hybrid(reference: bool):
        model = make_module()
        opt = metaopt.load_optimizer("hybrid_general", model.parameters(),
                                     num_training_steps=HORIZON)
        if reference:
            opt._runtime = None  # every step through the rule

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = loss_of(model)
            loss.backward()
            return loss
        return lambda: opt.step(closure)

    def plain(build, pass_loss: bool):
        model = make_module()
        opt = build(model.parameters())

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = loss_of(model)
            loss.backward()
            opt.step(loss=loss) if pass_loss else opt.step()
        return train_step
    return {"hybrid_general": hybrid(False), "hybrid_general_reference": hybrid(True),
            "garo_general": plain(lambda ps: metaopt.load_optimizer(
                "garo_general", ps, num_training_steps=HORIZON), True),
            "adam_foreach": plain(lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False)}


def _garo_rows(args) -> list[dict]:
    from .garo import SMALL_ROUNDS_FACTOR, _small_models, _timed_rows
    rows = []
    small = _small_models(args.seed, args.device)
    for name in GARO_MODELS:
        make_module, data, loss_fn = small[name]
        candidates = _garo_candidates(make_module, lambda m, d=data, f=loss_fn: f(m, d))
        rows += _timed_rows(candidates, args, args.rounds * SMALL_ROUNDS_FACTOR, 20,
                            "garo_general", model=name,
                            params=sum(p.numel() for p in make_module().parameters()))
    x, y = batch(torch.Generator().manual_seed(args.seed), device=args.device)
    loss = torch.nn.CrossEntropyLoss()
    candidates = _garo_candidates(
        lambda: mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device),
        lambda m: loss(m(x), y))
    rows += _timed_rows(candidates, args, args.rounds, 3, "garo_general", model="mlp_1m",
                        params=1_068_810)
    for row in rows:  # (the baseline is GARO alone: ratio = hybrid / garo_general)
        row["ratio_to_garo"] = row.pop("ratio")
        row["steady_ratio_to_garo"] = row.pop("steady_ratio")
    return rows


def run(args) -> list[dict]:
    if args.mode == "garo":
        return _garo_rows(args)
    g = torch.Generator().manual_seed(args.seed)
    x, y = batch(g, device=args.device)
    candidates = {}
    model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    n_params = sum(p.numel() for p in model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, foreach=True)
    closure = make_closure(model, sgd, x, y)

    def sgd_step():
        closure()
        sgd.step()
    candidates["sgd_step"] = sgd_step

    params = list(model.parameters())
    loss = closure().detach()
    grads = [p.grad for p in params]
    rule = HybridRule(SGDRule(), RungeKuttaRule("rk4"))
    state = rule.init(params)
    prev = [gr * 0.9 + 0.01 for gr in grads]  # a previous gradient, as a running step has
    state.update(step=5, prev_grads=prev, prev_grad_norm=run_norms(prev),
                 displacement_norm=torch.ones((), device=params[0].device))
    policy = SwitchingPolicy().to(args.device)
    for label, gate in (("policy_learned", PolicyGate(policy)),
                        ("policy_heuristic", HeuristicSwitch())):
        hyper = HybridHyper(gd=GDHyper(1e-2), ode=ODEHyper(1e-2), policy=gate,
                            stability_lr=1e-2)

        def policy_step(gate=gate, hyper=hyper):
            feats, _ = rule.features(params, grads, loss, state, hyper, None)
            return bool(gate.gate(feats) > 0.5)  # the decision reaches the host
        candidates[label] = policy_step

    hybrid_model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
    hybrid = HybridGDODE(hybrid_model.parameters(), lr=1e-2, policy=SwitchingPolicy())
    hybrid_closure = make_closure(hybrid_model, hybrid, x, y)

    def hybrid_step():
        hybrid.step(hybrid_closure)
    candidates["hybrid_gd_step"] = hybrid_step
    times = time_side_by_side(candidates, rounds=args.rounds, device=args.device)
    base = times["sgd_step"]
    rows = [{"candidate": name, "params": n_params, "ms": 1e3 * t, "sgd_step_ms": 1e3 * base,
             "ratio_to_sgd_step": t / base} for name, t in times.items()]
    if torch.device(args.device).type == "cpu":  # this process's CPU time (module docstring)
        cpu = time_side_by_side(candidates, rounds=args.rounds, clock=time.process_time)
        for row in rows:
            row["cpu_ratio_to_sgd_step"] = cpu[row["candidate"]] / cpu["sgd_step"]
    return rows
