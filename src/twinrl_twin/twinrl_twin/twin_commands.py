"""``twinrl twin build`` and ``twinrl twin rollout`` (registered by :mod:`twinrl_twin.cli`).

    twinrl twin build --scan scans/pp --task pick_and_place --out twins/pp [--groundtruth-alignment] [--json]
    twinrl twin rollout --twin twins/pp --policy expert --episodes 20 [--workers 2] [--json]
    twinrl twin calibrate --twin twins/pp --demos data/real_demos [--arm] [--network] [--pairs DIR] [--levels 16] [--json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    from .sim.config import TASKS

    b = sub.add_parser("build", help="build a kinematic twin (render assets) from a scan")
    b.add_argument("--scan", required=True, type=Path, help="scan directory (docs/scan_format.md)")
    b.add_argument("--task", required=True, choices=TASKS, help="task the twin runs (config/tasks/<task>.yaml)")
    b.add_argument("--out", required=True, type=Path, help="twin directory to create")
    b.add_argument("--groundtruth-alignment", action="store_true",
                   help="simulated scans only: use the ground-truth scan -> base similarity instead of "
                        "running the alignment (twinrl_twin.alignment)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of config/twin.yaml 'build'")
    b.add_argument("--overwrite", action="store_true", help="replace an existing twin directory")
    b.add_argument("--json", action="store_true", help="print a JSON report on the last line")
    b.set_defaults(func=cmd_build)

    r = sub.add_parser("rollout", help="run episodes in N parallel twin envs, success per grid cell")
    r.add_argument("--twin", required=True, type=Path, help="twin directory (twinrl twin build)")
    r.add_argument("--policy", default="expert", choices=("expert", "random"))
    r.add_argument("--episodes", type=int, default=10)
    r.add_argument("--region", default="all", choices=("id", "ood", "all"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=1, help="worker processes")
    r.add_argument("--envs", type=int, default=0, help="parallel envs (default: one per worker)")
    r.add_argument("--no-render", action="store_true", help="skip the camera images (state only)")
    r.add_argument("--json", action="store_true", help="print one JSON summary on the last line")
    r.set_defaults(func=cmd_rollout)

    c = sub.add_parser("calibrate", help="colour-calibrate the twin's cameras against real demos replayed in it")
    c.add_argument("--twin", required=True, type=Path, help="twin directory (twinrl twin build); gets colour_map.npz")
    c.add_argument("--demos", required=True, nargs="+", type=Path, help="real demos with images (datasets or files)")
    c.add_argument("--pairs", type=Path, default=None, help="keep the twin replays of the demos here")
    c.add_argument("--levels", type=int, default=16, help="colour bins per channel (4, 8, 16, 32 or 64)")
    c.add_argument("--min-samples", type=int, default=50, help="pixels a colour bin needs to be corrected")
    c.add_argument("--network", action="store_true",
                   help="fit the appearance network instead (appearance.pt: corrects shapes and shading a colour "
                        "map cannot; twinrl_twin.appearance)")
    c.add_argument("--steps", type=int, default=None, help="--network: training steps per camera (default 1500)")
    c.add_argument("--arm", action="store_true",
                   help="first fit the arm's per-joint tracking to the demos (twin.json arm_tracking; "
                        "twinrl_twin.arm_tracking), so the twin's arm follows the robot's path")
    c.add_argument("--json", action="store_true", help="print a JSON report on the last line")
    c.set_defaults(func=cmd_calibrate)


def cmd_build(args) -> int:
    from .scan import ScanError, load_groundtruth, load_scan
    from .twin_assets import build_twin, load_build_config

    cfg = load_build_config(overrides=args.overrides)
    try:
        if args.groundtruth_alignment:
            sim = load_groundtruth(args.scan).scan_to_base
            source = "groundtruth"
        else:
            try:
                from .alignment import align_scan
            except ImportError:
                print("twinrl twin build: error: twinrl_twin.alignment is not available; for a simulated scan "
                      "pass --groundtruth-alignment", file=sys.stderr)
                return 2
            result = align_scan(load_scan(args.scan), progress=sys.stderr.isatty())
            sim = result.similarity
            source = "alignment"
        report = build_twin(args.scan, args.out, args.task, sim, source, cfg=cfg, overwrite=args.overwrite)
    except (FileExistsError, ScanError, ValueError) as exc:
        print(f"twinrl twin build: error: {exc}", file=sys.stderr)
        return 2
    c = report["counts"]
    print(f"twin written to {report['twin']} (task {report['task']}, alignment: {source}, scale "
          f"{report['alignment']['scale']:.4f})")
    print(f"  scene {c['scene_points']} points, fixture {c['fixture_points']} points / {c['fixture_faces']} faces, "
          f"object {c['object_faces']} faces, robot {c['robot_links']} links / {c['robot_faces']} faces")
    if report.get("preview"):
        print(f"  preview {report['preview']}")
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_rollout(args) -> int:
    from .twin_assets import TwinAssetError
    from .twin_rollout import rollout

    try:
        summary = rollout(args.twin, args.policy, args.episodes, args.region, args.seed, args.workers,
                          num_envs=args.envs or None, render=not args.no_render,
                          progress=sys.stderr.isatty() or not args.json)
    except (TwinAssetError, ValueError) as exc:
        print(f"twinrl twin rollout: error: {exc}", file=sys.stderr)
        return 2
    print(f"task {summary['task']}  policy {summary['policy']}  region {summary['region']}  "
          f"episodes {summary['episodes']}  envs {summary['envs']}  workers {summary['workers']}")
    print(f"success rate {summary['success_rate']:.3f} ({summary['successes']}/{summary['episodes']})  "
          f"mean length {summary['mean_length']:.1f} steps  {summary['env_steps_per_s']:.1f} env steps/s")
    for reg, v in summary["regions"].items():
        if v["episodes"]:
            print(f"  {reg:>3}: {v['successes']}/{v['episodes']} = {v['success_rate']:.3f}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_calibrate(args) -> int:
    from twinrl_bringup.dataset import DatasetError

    from .appearance import AppearanceConfig
    from .colour_map import ColourMapError, FitConfig, calibrate_twin
    from .twin_assets import TwinAssetError

    network = None
    if args.network:
        network = AppearanceConfig() if args.steps is None else AppearanceConfig(steps=args.steps)
    try:
        report = calibrate_twin(args.twin, [str(d) for d in args.demos], args.pairs,
                                FitConfig(levels=args.levels, min_samples=args.min_samples),
                                progress=sys.stderr.isatty() or not args.json, network=network, arm=args.arm)
    except (ColourMapError, DatasetError, TwinAssetError, ValueError, FileNotFoundError) as exc:
        print(f"twinrl twin calibrate: error: {exc}", file=sys.stderr)
        return 2
    fit = report.get("arm_tracking")
    if fit:
        print(f"arm tracking fitted to {fit['episodes']} demos: TCP rms {fit['tcp_rms_mm_before']:.2f} -> "
              f"{fit['tcp_rms_mm_after']:.2f} mm (twin.json arm_tracking)")
    if network is not None:
        print(f"appearance network written to {report['appearance']} ({report['pairs']} demos replayed in the "
              f"twin); overlay {report['overlay']}")
    else:
        print(f"colour map written to {report['colour_map']} ({report['pairs']} demos replayed in the twin, "
              f"{report['levels']} levels per channel); overlay {report['overlay']}")
    for cam, v in report["cameras"].items():
        extra = f" ({v['bins']} colour bins, {v['pixels']} pixels)" if network is None else ""
        print(f"  {cam:<13} mean |twin - real| {v['mean_abs_diff_before']:.1f} -> {v['mean_abs_diff_after']:.1f}"
              f"{extra}")
    if report["drawn"] != ("appearance" if network is not None else "colour_map"):
        print(f"twinrl twin calibrate: warning: {args.twin} also has an appearance network (appearance.pt), "
              "which the twin draws instead of the colour map; remove it, or render with appearance=false, "
              "to draw the colour map", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0
