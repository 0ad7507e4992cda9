#!/usr/bin/env python3
"""How much the twin's images look like the world's: the sim world and its twin put in the same
configuration, rendered by both, compared pixel by pixel (the twin-vs-real alignment check a
lab does in rviz, measured).

For ``--configs`` start configurations over the whole grid (ID and OOD cells), the sim world's
scripted expert runs the episode and the twin receives the same actions; at the steps in
``--steps`` both cameras of both worlds are compared: mean absolute difference (0-255) and
PSNR (dB), per camera. With ``--peer`` a second twin is built from the same scan with the
older flat grey clear colour (no far-field panorama) and measured the same way; the ratio
twin / peer is printed. With ``--calibrate N`` the sim's expert records N ID demos (other
starts than the measured ones), a copy of the twin is colour-calibrated against them
(``twinrl twin calibrate``) and measured too; the ratio calibrated / twin is printed. With
``--network`` as well, a second copy gets the appearance network fitted on the same demos
(``twinrl twin calibrate --network``), measured and printed the same way. An
overlay PNG (sim | twin | |difference| per camera, one row per configuration) is written to
--out.

    python bench/twin_fidelity.py [--task pick_and_place] [--twin DIR] [--configs 6]
        [--steps 0 20 40] [--image-size 256,128] [--peer] [--calibrate N [--network]] [--out DIR] [--json]

Without --twin a simulated scan of the task is made and a twin is built from it (ground-truth
alignment) under a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from common import build_twin, calibrated_twin, camera_overrides, record_demos

CAMERAS = ("third_person", "wrist")


def measure(task: str, twin_dir: Path, configs: int, steps: list[int], size, progress: bool):
    """Per camera: list of (mean abs difference, PSNR) over configurations x steps; and the
    image rows of the first configurations for the overlay."""
    from tqdm import tqdm

    from twinrl_twin.sim import make_env
    from twinrl_twin.twin_env import make_twin_env

    over = camera_overrides(size)
    sim = make_env(task, render=True, seed=0, camera_overrides=over)
    twin = make_twin_env(twin_dir, render=True, seed=0, camera_overrides=over)
    expert = sim.expert()
    cells = sim.grid.cells("all")
    rng = np.random.default_rng(0)
    stats = {c: [] for c in CAMERAS}
    rows = []
    try:
        for k in tqdm(range(configs), desc=f"twin vs sim ({twin_dir.name})", unit="config", disable=not progress):
            cell = cells[int(rng.integers(len(cells)))]
            seed = zlib.crc32(f"fidelity/{k}".encode()) & 0x7FFFFFFF
            obs_s, info = sim.reset(seed=seed, options={"cell": tuple(cell)})
            expert.reset()
            obs_t, _ = twin.reset(seed=seed, options={"configuration": info["configuration"]})
            for t in range(max(steps) + 1):
                if t in steps:
                    for c in CAMERAS:
                        a, b = obs_s[c].astype(np.float64), obs_t[c].astype(np.float64)
                        mse = float(((a - b) ** 2).mean())
                        stats[c].append((float(np.abs(a - b).mean()), 10 * np.log10(255.0 ** 2 / max(mse, 1e-9))))
                    if k < 3 and t == steps[0]:
                        rows.append([(obs_s[c], obs_t[c]) for c in CAMERAS])
                action = expert.act(obs_s, info)
                obs_s, _, term_s, trunc_s, info = sim.step(action)
                obs_t, *_ = twin.step(action)
                if term_s or trunc_s:
                    break
    finally:
        sim.close()
        twin.close()
    return stats, rows


def overlay(rows, path: Path) -> None:
    from PIL import Image

    out = []
    for row in rows:
        parts = []
        for sim_img, twin_img in row:
            h = row[0][0].shape[0]
            diff = np.abs(sim_img.astype(int) - twin_img.astype(int)).astype(np.uint8)
            trio = np.concatenate([sim_img, twin_img, diff], axis=1)
            scale = max(1, h // sim_img.shape[0])
            parts.append(np.kron(trio, np.ones((scale, scale, 1), np.uint8)))
        width = max(p.shape[1] for p in parts)
        out.append(np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts], axis=1))
    Image.fromarray(np.concatenate(out, axis=0)).save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pick_and_place")
    ap.add_argument("--twin", type=Path, default=None, help="a built twin of --task (default: build one)")
    ap.add_argument("--configs", type=int, default=6)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 20, 40], help="episode steps compared")
    ap.add_argument("--image-size", default="256,128", help="third-person,wrist square sizes")
    ap.add_argument("--peer", action="store_true", help="also measure a twin with a flat grey clear colour")
    ap.add_argument("--calibrate", type=int, default=0, metavar="N",
                    help="also measure a copy of the twin colour-calibrated against N sim expert demos")
    ap.add_argument("--network", action="store_true",
                    help="with --calibrate: also measure a copy with the appearance network fitted on those demos")
    ap.add_argument("--network-steps", type=int, default=None, metavar="N",
                    help="optimiser steps of the appearance network per camera (default: its config's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.configs < 1 or min(args.steps) < 0:
        ap.error("--configs must be >= 1 and --steps >= 0")
    if args.network and not args.calibrate:
        ap.error("--network needs --calibrate N (the demos the network is fitted on)")
    size = tuple(int(v) for v in args.image_size.split(","))
    root = Path(tempfile.mkdtemp(prefix="twinrl-fidelity-"))
    twin = args.twin or build_twin(args.task, root)
    out = args.out or root
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    steps = sorted(set(args.steps))
    results = {}
    variants = [("twin", Path(twin))]
    if args.peer:
        from twinrl_twin.scan import load_groundtruth
        from twinrl_twin.twin_assets import build_twin as build, flat_background_overrides, load_build_config, load_twin

        scan = Path(load_twin(twin).meta["scan"])
        cfg = load_build_config(None, flat_background_overrides())
        peer = root / "twin_flat_background"
        build(scan, peer, args.task, load_groundtruth(scan).scan_to_base, "groundtruth", cfg=cfg, preview=False,
              overwrite=True)
        variants.append(("peer (flat grey background)", peer))
    calibrated = None
    if args.calibrate:
        demos = record_demos(args.task, root / "calibration_demos", args.calibrate, "id", seed=50_000,
                             image_size=size, progress=progress)
        cal = calibrated_twin(Path(twin), demos, root / "twin_calibrated", progress)
        calibrated = f"colour-calibrated ({args.calibrate} demos)"
        variants.append((calibrated, cal))
        if args.network:
            from twinrl_twin.appearance import AppearanceConfig

            net_cfg = AppearanceConfig(**({"steps": args.network_steps} if args.network_steps else {}))
            net = calibrated_twin(Path(twin), demos, root / "twin_appearance", progress, network=net_cfg)
            variants.append((f"appearance network ({args.calibrate} demos)", net))
    for name, d in variants:
        stats, rows = measure(args.task, d, args.configs, steps, size, progress)
        results[name] = {c: {"mean_abs_diff": float(np.mean([s[0] for s in v])),
                             "psnr_db": float(np.mean([s[1] for s in v])), "images": len(v)}
                         for c, v in stats.items()}
        if name == "twin":
            overlay(rows, out / f"twin_fidelity_{args.task}.png")
    print(f"twin vs sim, {args.task}: {args.configs} configurations x steps {steps}, images {size[0]}/{size[1]} px")
    print(f"{'twin':<30} {'camera':<13} {'mean |diff|':>12} {'PSNR dB':>9}")
    for name, r in results.items():
        for c in CAMERAS:
            print(f"{name:<30} {c:<13} {r[c]['mean_abs_diff']:12.1f} {r[c]['psnr_db']:9.1f}")
    if args.peer:
        peer_name = variants[1][0]
        for c in CAMERAS:
            ratio = results["twin"][c]["mean_abs_diff"] / max(results[peer_name][c]["mean_abs_diff"], 1e-9)
            print(f"ratio twin / peer, {c}: {ratio:.2f}")
    if calibrated:
        for c in CAMERAS:
            ratio = results[calibrated][c]["mean_abs_diff"] / max(results["twin"][c]["mean_abs_diff"], 1e-9)
            print(f"ratio calibrated / twin, {c}: {ratio:.2f}")
        if args.network:
            net_name = variants[-1][0]
            for c in CAMERAS:
                ratio = results[net_name][c]["mean_abs_diff"] / max(results["twin"][c]["mean_abs_diff"], 1e-9)
                print(f"ratio appearance network / twin, {c}: {ratio:.2f}")
    print(f"overlay: {out / f'twin_fidelity_{args.task}.png'}")
    if args.json:
        print(json.dumps({"task": args.task, "twin": str(twin), "configs": args.configs, "steps": steps,
                          "image_size": list(size), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
