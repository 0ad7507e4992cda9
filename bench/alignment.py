#!/usr/bin/env python3
"""Twin alignment accuracy and time per stage over simulated scans in random unknown frames.

    python bench/alignment.py [--tasks pick_and_place insert_hexagon] [--seeds 0 1 2]
                              [--frames 30] [--width 320] [--height 240] [--set refine.iterations=80]
                              [--out /tmp/twinrl_bench_alignment] [--json]

For every task x seed (seed + 100 x task index, so tasks get different frames),
``twinrl twin scan-sim`` renders a scan (its scan -> base similarity:
uniform rotation, scale 0.3-3 m per scan unit, translation up to 2 m), ``align_scan`` aligns it,
and the errors of each stage (RANSAC, ICP, silhouette refinement) against the ground truth
are printed with the stage times and the robot-mask IoU of the final transform, then the
median and worst per stage against the targets (2 mm, 0.2 deg, 0.5 %, IoU 0.95).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TARGETS = {"translation_mm": 2.0, "rotation_deg": 0.2, "scale_percent": 0.5}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["pick_and_place", "insert_hexagon"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="alignment config override, e.g. refine.iterations=40")
    ap.add_argument("--out", type=Path, default=Path("/tmp/twinrl_bench_alignment"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from twinrl_twin.alignment import align_scan, load_alignment_config, write_report
    from twinrl_twin.scan import load_groundtruth, load_scan
    from twinrl_twin.scan_sim import load_scan_sim_config, simulate_scan

    cfg = load_alignment_config(None, args.overrides)
    sim_cfg = load_scan_sim_config(None, [f"width={args.width}", f"height={args.height}"])
    rows = []
    for k, task in enumerate(args.tasks):
        for seed in (s + 100 * k for s in args.seeds):       # distinct unknown frames per task
            scan_dir = args.out / f"{task}_s{seed}"
            t = time.perf_counter()
            simulate_scan(task, scan_dir, frames=args.frames, seed=seed, cfg=sim_cfg, overwrite=True, progress=False)
            t_scan = time.perf_counter() - t
            scan = load_scan(scan_dir)
            result = align_scan(scan, cfg, progress=False)
            report = write_report(scan, result, args.out / f"{task}_s{seed}_align", cfg, load_groundtruth(scan_dir),
                                  progress=False)
            row = {"task": task, "seed": seed, "scale_truth": load_groundtruth(scan_dir).scan_to_base.scale,
                   "scan_s": t_scan, "timing_s": report["timing_s"], "errors": report["errors_vs_groundtruth"],
                   "mask_iou": report["mask_iou"]["mean"]}
            rows.append(row)
            line = "  ".join(f"{st}: {e['translation_mm']:.2f} mm {e['rotation_deg']:.3f} deg "
                             f"{e['scale_percent']:+.3f} %" for st, e in row["errors"].items())
            times = " ".join(f"{k} {v:.1f}s" for k, v in row["timing_s"].items())
            print(f"{task} seed {seed} (scale {row['scale_truth']:.3f}): {line}  | IoU {row['mask_iou']:.4f} | {times}",
                  flush=True)

    summary = {}
    for stage in rows[0]["errors"]:
        s = {}
        for k, target in TARGETS.items():
            vals = np.abs([r["errors"][stage][k] for r in rows])
            s[k] = {"median": float(np.median(vals)), "max": float(vals.max()), "target": target,
                    "met_all": bool((vals <= target).all())}
        key = "refine" if stage == "refine" else "coarse"      # RANSAC and ICP are timed together
        s[f"{key}_time_s_median"] = float(np.median([r["timing_s"].get(key, 0.0) for r in rows]))
        summary[stage] = s
    ious = [r["mask_iou"] for r in rows]
    summary["mask_iou"] = {"mean": float(np.mean(ious)), "min": float(np.min(ious)), "target": 0.95,
                           "met_all": bool(min(ious) >= 0.95)}
    print("\nstage      translation mm (med/max)  rotation deg (med/max)  scale % (med/max)   met")
    for stage, s in summary.items():
        if stage == "mask_iou":
            continue
        met = all(s[k]["met_all"] for k in TARGETS)
        print(f"{stage:10s} {s['translation_mm']['median']:8.2f} / {s['translation_mm']['max']:<8.2f}"
              f"      {s['rotation_deg']['median']:7.3f} / {s['rotation_deg']['max']:<7.3f}"
              f"     {s['scale_percent']['median']:6.3f} / {s['scale_percent']['max']:<6.3f}  {'yes' if met else 'no'}")
    m = summary["mask_iou"]
    print(f"robot-mask IoU (final): mean {m['mean']:.4f}, min {m['min']:.4f} (target >= 0.95: "
          f"{'met' if m['met_all'] else 'not met'})")
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
