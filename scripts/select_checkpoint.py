"""Pick a meta-training run's snapshot by the learned-optimizer benchmark's protocol.

    python scripts/select_checkpoint.py RUN_DIR [OTHER_RUN_DIR ...] [--config configs/...yaml]

Scores every ``RUN_DIR/snapshots/*.safetensors`` (and ``RUN_DIR/optimizer.safetensors``) on the
config's validation tasks — median speedup vs lr-tuned Adam over tasks x held-out seeds
(``metaopt.evaluation.selection``) — prints the validation curve, writes ``selection.csv`` and
copies the best to ``RUN_DIR/selected.safetensors``. Further run directories are scored against
the same tuned references (e.g. runs of other meta-objectives), their rows named ``dir/snapshot``.
``--average-from STEP`` adds, per run, the mean of its snapshots from meta-step STEP on
(``metaopt.meta.averaging``: weight averaging against the snapshot-to-snapshot swings), written
to ``RUN_DIR/average_from_STEP.safetensors``.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import metaopt
import tasks
from metaopt.evaluation.selection import ValidationTask, select
from metaopt.meta import held_out_seeds
from metaopt.meta.averaging import average_snapshots, snapshot_step

REPO = Path(__file__).resolve().parents[1]


@dataclass
class TaskSpec:
    label: str = ""
    family: str = ""
    steps: int = 300
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectionConfig:
    seeds: int = 2
    tasks: list[TaskSpec] = field(default_factory=list)


def candidate(path: Path):
    def build(steps: int):
        def factory(params):
            return metaopt.load_optimizer(str(path), params, num_training_steps=steps)
        factory.label = path.stem
        return factory
    return build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("others", type=Path, nargs="*", help="more run directories to compare")
    parser.add_argument("--config", type=Path, default=REPO / "configs/select_garo_general.yaml")
    parser.add_argument("--average-from", type=int, default=None, metavar="STEP",
                        help="also score the mean of each run's snapshots from STEP on")
    args = parser.parse_args(argv)
    schema = OmegaConf.structured(SelectionConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(args.config)))
    named = {}
    for run in (args.run_dir, *args.others):
        paths = sorted((run / "snapshots").glob("*.safetensors"))
        final = run / "optimizer.safetensors"
        paths += [final] if final.exists() else []
        if not paths:
            print(f"select_checkpoint: no snapshots in {run}", file=sys.stderr)
            return 2
        late = [p for p in paths if (snapshot_step(p) or -1) >= (args.average_from or 0)]
        if args.average_from is not None and len(late) >= 2:
            paths.append(average_snapshots(
                late, run / f"average_from_{args.average_from:06d}.safetensors"))
        elif args.average_from is not None:
            print(f"select_checkpoint: {run}: {len(late)} snapshot(s) from step "
                  f"{args.average_from} on, no average (it needs 2)", file=sys.stderr)
        prefix = "" if run == args.run_dir else f"{run.name}/"
        named.update({prefix + p.stem: p for p in paths})
    validation = [ValidationTask(t.label, tasks.get(t.family, **t.kwargs), t.steps)
                  for t in cfg.tasks]
    best, scores = select({name: candidate(p) for name, p in named.items()}, validation,
                          held_out_seeds(cfg.seeds))
    rows = [{"snapshot": s.name, "median_speedup": round(s.median_speedup, 4),
             "diverged": s.diverged, **{k: round(v, 4) for k, v in s.per_task.items()}}
            for s in scores]
    with open(args.run_dir / "selection.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    chosen = named[best]
    shutil.copyfile(chosen, args.run_dir / "selected.safetensors")
    print(f"selected {chosen} -> {args.run_dir / 'selected.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
