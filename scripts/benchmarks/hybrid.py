"""The switching policy's own cost per step vs a GD step (target: ≤ 5%).

For the ~1M-parameter MLP at batch 256 (``common.py``), timed side by side in one process:

* ``sgd_step``: zero_grad + forward + backward + ``torch.optim.SGD(momentum=0.9, foreach)``;
* ``policy_learned`` / ``policy_heuristic``: the policy step alone — the switching features of
  ``HybridRule.features`` (gradient norm, secant curvature ‖g_t − g_{t−1}‖/‖Δθ‖ with the
  previous gradient copied, loss window) plus the decision (learned net or heuristic) and its
  host sync; the ratio to ``sgd_step`` is the number the target reads;
* ``hybrid_gd_step``: a whole ``HybridGDODE`` step in GD mode with the learned policy: the
  runtime path of ``metaopt.hybrid.runtime`` (features, policy, the fused momentum-SGD update in
  place, one host read); its ratio to ``sgd_step`` is the hybrid's whole overhead in GD mode.
"""
from __future__ import annotations

import torch

from metaopt.hybrid.hyper import HybridHyper
from metaopt.hybrid.optimizer import HybridGDODE
from metaopt.hybrid.policy import PolicyGate, SwitchingPolicy
from metaopt.hybrid.rule import HeuristicSwitch, HybridRule, run_norms
from metaopt.rules.hyper import GDHyper, ODEHyper
from metaopt.rules.runge_kutta import RungeKuttaRule
from metaopt.rules.sgd import SGDRule

from .common import batch, make_closure, mlp_1m, time_side_by_side


def run(args) -> list[dict]:
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
    return [{"candidate": name, "params": n_params, "ms": 1e3 * t, "sgd_step_ms": 1e3 * base,
             "ratio_to_sgd_step": t / base} for name, t in times.items()]
