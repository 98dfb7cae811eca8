"""Relaxation vs straight-through vs ES for the switching policy, measured.

    OMP_NUM_THREADS=1 python scripts/hybrid_estimators.py [--steps 60]
        [--out runs/hybrid_estimators]

Trains the policy of ``configs/hybrid.yaml`` three ways for the same number of meta-steps —
truncated BPTT through the relaxed (gate-blended) unroll, BPTT with the straight-through gate
(hard forward), and antithetic ES on hard decisions — then scores every exported policy the way
it is deployed: ``HybridGDODE`` with hard decisions, on the held-out tasks (the evaluation table
of ``scripts/meta_train.py``). Prints wall time per meta-step and the held-out results.
"""
from __future__ import annotations

import argparse
import time

from scripts import meta_train

SETTINGS = {"relaxed_bptt": ["estimator.name=bptt", "hybrid.gate=relaxed"],
            "straight_through_bptt": ["estimator.name=bptt", "hybrid.gate=straight_through"],
            "hard_es": ["estimator.name=es", "estimator.num_pairs=4", "estimator.sigma=0.05"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hybrid.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="runs/hybrid_estimators")
    args = parser.parse_args(argv)
    rows = []
    for name, overrides in SETTINGS.items():
        started = time.perf_counter()
        result = meta_train.main(["--config", args.config, f"out_dir={args.out}/{name}",
                                  f"steps={args.steps}", f"validation.every={args.steps}",
                                  "evaluation.baselines=[]", "progress=false",
                                  "wandb.mode=disabled", *overrides])
        seconds = time.perf_counter() - started
        learned = next(r for r in result["summary"] if r["optimizer"] == "hybrid_learned")
        rows.append({"setting": name, "s_per_meta_step": seconds / args.steps,
                     "held_out_train_meta_loss": result["after"],
                     "runtime_final_norm_loss_median": learned["final_norm_loss_median"],
                     "runtime_test_loss_mean": learned["final_test_loss_mean"],
                     "runtime_diverged": learned["diverged"]})
    print("\nsetting                 s/meta-step  val(meta)  runtime median  runtime test  div")
    for r in rows:
        print(f"{r['setting']:<24}{r['s_per_meta_step']:<13.3g}{r['held_out_train_meta_loss']:<11.4g}"
              f"{r['runtime_final_norm_loss_median']:<16.4g}{r['runtime_test_loss_mean']:<14.4g}"
              f"{r['runtime_diverged']}")
    return rows


if __name__ == "__main__":
    main()
