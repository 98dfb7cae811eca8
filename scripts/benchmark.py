"""Benchmarks with side-by-side ratios in one process (never timed unit tests).

    python scripts/benchmark.py [NAME ...] [--rounds N] [--device DEV] [--out DIR] [--mode M]

Each NAME is a module of ``scripts/benchmarks`` exposing ``run(args) -> list[dict]``; with no
NAME every registered benchmark runs. Rows are printed and written to ``DIR/<name>.csv``.
"""
from __future__ import annotations

import argparse
import csv
import importlib
from pathlib import Path

import torch

BENCHMARKS = {
    "basins": "scripts.benchmarks.basins",
    "dcao": "scripts.benchmarks.dcao",
    "dcao_stall": "scripts.benchmarks.dcao_stall",
    "garo": "scripts.benchmarks.garo",
    "hybrid": "scripts.benchmarks.hybrid",
    "learned": "scripts.benchmarks.learned",
    "meta": "scripts.benchmarks.meta",
    "meta_throughput": "scripts.benchmarks.meta_throughput",  # the engines alone (part of meta)
    "meta_mixture": "scripts.benchmarks.meta_mixture",
    "meta_owners": "scripts.benchmarks.meta_owners",  # groups per rank, 2 processes (a count)
    "rk": "scripts.benchmarks.rk",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {sorted(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--mode", default=None,
                        help="a benchmark's variant (meta_throughput: engines, the default, or "
                             "scaling: 1 vs 2 processes on the user's commands; hybrid: garo, "
                             "the shipped hybrid_general vs garo_general and Adam; rk: passes, "
                             "each pass over the 1M parameters hot and after a closure)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a YAML config for benchmarks that take one (learned)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    from scripts.benchmarks.common import print_table

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    for name in args.names or sorted(BENCHMARKS):
        rows = importlib.import_module(BENCHMARKS[name]).run(args)
        print_table(rows, name)
        with open(args.out / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
