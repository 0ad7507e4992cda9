#!/usr/bin/env python3
"""Stage I demo generation rate and quality, per task and method.

For each task: record one seed demonstration with the sim world's scripted expert (ID region),
build a twin of the task from a simulated scan (ground-truth alignment) unless --twin-root has
one, generate N ID + M OOD twin demos with each method on --workers processes, then replay
every kept demo in the sim world (steered to its recorded targets; by its actions alone too).
Prints demos per minute (the paper builds a set of 30-step twin demos in about a minute; the
target here is >= 100 per minute on 2 cores), the twin candidate success rate, the rejections
by reason, and the transfer rate (the JSON rows also the actions-alone rate).

    python bench/demo_rate.py [--tasks pick_and_place insert_hexagon ...] [--methods affine plan]
                              [--n-id 30] [--n-ood 30] [--workers 2] [--seed 0] [--out DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import build_twin, record_seed

TASKS = ["pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--methods", nargs="+", default=["affine", "plan"], choices=["affine", "plan"])
    ap.add_argument("--n-id", type=int, default=30)
    ap.add_argument("--n-ood", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--twin-root", type=Path, default=None, help="reuse/keep twins here (twin_<task>)")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated demos here")
    ap.add_argument("--no-replay", action="store_true", help="skip the replay in the sim world")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from twinrl_twin.demogen.generate import generate
    from twinrl_twin.demogen.replay import transfer_rate

    tmp = tempfile.TemporaryDirectory(prefix="twinrl-demo-rate-")
    root = args.twin_root or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    out_root = args.out or Path(tmp.name) / "demos"
    rows = []
    for task in args.tasks:
        twin = build_twin(task, root)
        seed_demo = record_seed(task, root, args.seed)
        for method in args.methods:
            out = out_root / f"{task}_{method}"
            s = generate(twin, seed_demo, out, args.n_id, args.n_ood, method=method, workers=args.workers,
                         seed=args.seed, progress=sys.stderr.isatty())
            row = {"task": task, "method": method, "generated": s["generated"], "requested": s["requested"],
                   "attempts": s["attempts"], "candidate_success": s["candidate_success_rate"],
                   "rejections": s["rejections"], "demos_per_minute": s["demos_per_minute"],
                   "wall_s": s["wall_time_s"], "mean_length": s["mean_length"],
                   "ood_cells_missing": len(s["missing_cells"]["ood"])}
            if not args.no_replay and s["generated"]:
                r = transfer_rate(out, workers=args.workers, progress=sys.stderr.isatty())
                row["transfer_rate"] = r["transfer_rate"]
                row["transfer"] = f"{r['successes']}/{r['episodes']}"
                row["open_loop_rate"] = r["open_loop_rate"]
            rows.append(row)
            print(f"{task:<22} {method:<6} generated {s['generated']:>3}/{s['requested']:<3} "
                  f"candidate success {s['candidate_success_rate']:.3f}  {s['demos_per_minute']:6.1f} demos/min  "
                  f"len {s['mean_length']:.0f}  transfer {row.get('transfer', '-')} "
                  f"({row.get('transfer_rate', float('nan')):.3f})  rejections {s['rejections']}", flush=True)
    print(f"{os.cpu_count()} CPUs, {args.workers} workers; target >= 100 demos/min, >= 0.90 candidate success, "
          ">= 0.80 transfer")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
