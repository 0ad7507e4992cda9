"""``twinrl twin``: digital-twin building blocks from the command line.

    twinrl twin scan-sim --task pick_and_place --out scans/pp [--frames 60] [--seed 0]
    twinrl twin scan-info scans/pp
    twinrl twin init-splats scans/pp --out scans/pp_init.ply
    twinrl twin grasps scans/pp --out scans/pp_grasps      (or a mesh file instead of a scan)
    twinrl twin align --scan scans/pp --out scans/pp_align [--json]
    twinrl twin reconstruct --scan scans/pp --out scans/pp_splats.ply [--init PLY] [--iterations N] [--json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("twin", help="digital twin: simulated scans, scan checks, splat init, grasps",
                              description="Digital-twin building blocks (scan format: docs/scan_format.md).")
    sub = p.add_subparsers(dest="twin_command", metavar="TWIN_COMMAND")

    s = sub.add_parser("scan-sim", help="render a handheld scan of the MuJoCo sim world")
    s.add_argument("--task", required=True, help="sim task (pick_and_place, insert_hexagon, ...)")
    s.add_argument("--out", required=True, type=Path, help="scan directory to create")
    s.add_argument("--frames", type=int, default=None, help="number of frames (default: config/scan.yaml)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", default="scan", help="scan config file (default config/scan.yaml)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the 'sim' section, e.g. --set width=640")
    s.add_argument("--overwrite", action="store_true", help="replace an existing scan directory")
    s.add_argument("--json", action="store_true", help="print a JSON summary on the last line")
    s.set_defaults(func=cmd_scan_sim)

    i = sub.add_parser("scan-info", help="load and check a scan directory, print a summary")
    i.add_argument("scan", type=Path)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_scan_info)

    g = sub.add_parser("init-splats", help="initial Gaussian scene (3DGS PLY) from a scan's RGB-D frames")
    g.add_argument("scan", type=Path)
    g.add_argument("--out", required=True, type=Path, help="PLY file to write")
    g.add_argument("--config", default="scan")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the 'splat_init' section")
    g.set_defaults(func=cmd_init_splats)

    a = sub.add_parser("grasps", help="antipodal grasps on a mesh file or on every object of a scan")
    a.add_argument("source", type=Path, help="mesh file (obj/ply/glb) or scan directory")
    a.add_argument("--out", required=True, type=Path, help="directory for <object>.grasps.json")
    a.add_argument("--config", default="scan")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the 'grasps' section, e.g. --set friction=0.3")
    a.set_defaults(func=cmd_grasps)

    from .twin_commands import add_parsers as add_twin_env_parsers

    add_twin_env_parsers(sub)           # build, rollout

    al = sub.add_parser("align", help="align a scan to the robot base (coarse ICP + silhouette refinement)",
                        description="Estimate the scan -> fr3_link0 similarity from the scanned robot "
                                    "(docs/alignment.md); writes alignment.json and overlay PNGs to --out.")
    al.add_argument("--scan", required=True, type=Path, help="scan directory (docs/scan_format.md)")
    al.add_argument("--out", required=True, type=Path, help="report directory to create or update")
    al.add_argument("--config", default="alignment", help="alignment config file (default config/alignment.yaml)")
    al.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set refine.iterations=40")
    al.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    al.set_defaults(func=cmd_align)

    rc = sub.add_parser("reconstruct", help="optimise Gaussian splats against a scan's RGB frames (photometric)",
                        description="Fit a Gaussian scene to the scan's frames with a differentiable splat "
                                    "renderer (docs/reconstruction.md); prints held-out PSNR before/after.")
    rc.add_argument("--scan", required=True, type=Path, help="scan directory (docs/scan_format.md)")
    rc.add_argument("--out", required=True, type=Path, help="optimised 3DGS PLY to write (atomically)")
    rc.add_argument("--init", type=Path, default=None,
                    help="initial PLY (default: the scan's splats.ply, else back-projected RGB-D)")
    rc.add_argument("--iterations", type=int, default=None, help="Adam steps (default: config)")
    rc.add_argument("--preview", type=Path, default=None,
                    help="PNG of a held-out frame: scan | initial | optimised (default: <out>.preview.png)")
    rc.add_argument("--config", default="reconstruct", help="config file (default config/reconstruct.yaml)")
    rc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set width=96")
    rc.add_argument("--json", action="store_true", help="print a JSON summary on the last line")
    rc.set_defaults(func=cmd_reconstruct)

    def _help(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def cmd_scan_sim(args) -> int:
    from .scan_sim import load_scan_sim_config, simulate_scan, write_preview

    cfg = load_scan_sim_config(args.config, args.overrides)
    try:
        summary = simulate_scan(args.task, args.out, frames=args.frames, seed=args.seed, cfg=cfg,
                                overwrite=args.overwrite, progress=True)
    except FileExistsError as exc:
        print(f"twinrl twin scan-sim: error: {exc}", file=sys.stderr)
        return 2
    summary["preview"] = str(write_preview(args.out))
    print(f"scan written to {summary['scan']} ({summary['frames']} frames), ground truth {summary['groundtruth']}, "
          f"preview {summary['preview']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_scan_info(args) -> int:
    from .scan import load_scan

    scan = load_scan(args.scan)
    extent = scan.camera_positions()
    info = {
        "scan": str(scan.root),
        "format": scan.source_format,
        "frames": len(scan.frames),
        "image_size": [scan.frames[0].intrinsics.width, scan.frames[0].intrinsics.height],
        "depth": scan.has_depth,
        "masks": scan.has_masks,
        "labels": {str(k): v for k, v in scan.label_names().items()},
        "objects": {k: {"file": str(o.path), "faces": int(len(o.mesh.faces)),
                        "extents_m": [round(float(e), 4) for e in o.mesh.extents],
                        "pose_in_scan": o.T_scan_object is not None} for k, o in scan.objects.items()},
        "robot": None if scan.robot is None else {"urdf": scan.robot.urdf, "joints": len(scan.robot.joint_positions),
                                                   "gripper_width": scan.robot.gripper_width},
        "splats": None if scan.splats_path is None else str(scan.splats_path),
        "camera_path_extent_scan_units": [round(float(v), 4) for v in extent.max(0) - extent.min(0)],
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_init_splats(args) -> int:
    import numpy as np

    from .scan import load_scan
    from .splats import init_from_scan, load_splat_init_config, write_ply

    cfg = load_splat_init_config(args.config, args.overrides)
    scan = load_scan(args.scan)
    scene, voxel = init_from_scan(scan, cfg)
    write_ply(args.out, scene)
    counts = {scene.label_names.get(int(k), str(k)): int(v) for k, v in
              zip(*np.unique(scene.labels, return_counts=True))} if scene.labels is not None else {}
    print(f"wrote {len(scene)} Gaussians to {args.out} (voxel {voxel:.4g} scan units; per label {counts})")
    return 0


def cmd_grasps(args) -> int:
    from .grasps import load_grasp_config, sample_grasps, save_grasps
    from .scan import load_mesh, load_scan

    cfg = load_grasp_config(args.config, args.overrides)
    if args.source.is_dir():
        scan = load_scan(args.source, check_images=False)
        meshes = {name: (o.mesh, str(o.path)) for name, o in scan.objects.items()}
        if not meshes:
            print(f"twinrl twin grasps: error: {args.source}: no objects/<name>.(obj|ply|glb) meshes", file=sys.stderr)
            return 2
    else:
        meshes = {args.source.stem: (load_mesh(args.source), str(args.source))}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (mesh, path) in meshes.items():
        grasps = sample_grasps(mesh, cfg)
        out = save_grasps(args.out / f"{name}.grasps.json", grasps, name, path)
        best = f"best score {grasps[0].score:.3f}, width {grasps[0].width:.4f} m" if grasps else "no grasp found"
        print(f"{name}: {len(grasps)} grasps -> {out} ({best})")
    return 0


def cmd_align(args) -> int:
    from .alignment import AlignmentError, align_scan, load_alignment_config, write_report
    from .scan import ScanError, load_groundtruth, load_scan

    try:
        cfg = load_alignment_config(args.config, args.overrides)
        scan = load_scan(args.scan)
        result = align_scan(scan, cfg, progress=True)
    except (AlignmentError, ScanError) as exc:
        print(f"twinrl twin align: error: {exc}", file=sys.stderr)
        return 2
    try:
        truth = load_groundtruth(args.scan)     # simulated scans only: scores the result
    except ScanError:
        truth = None
    report = write_report(scan, result, args.out, cfg, truth, progress=True)
    S = result.similarity
    print(f"scan -> base: scale {S.scale:.6g}, translation {[round(float(v), 5) for v in S.translation]}; "
          f"mean robot-mask IoU {report['mask_iou']['mean']}; report {args.out / 'alignment.json'}")
    for stage, err in report.get("errors_vs_groundtruth", {}).items():
        print(f"  {stage:7s} vs ground truth: {err['translation_mm']:.2f} mm, {err['rotation_deg']:.3f} deg, "
              f"scale {err['scale_percent']:+.3f} %")
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_reconstruct(args) -> int:
    from twinrl_bringup.config import ConfigError

    from .reconstruct import ReconstructError, load_reconstruct_config, reconstruct_to_file
    from .scan import ScanError, load_scan
    from .splats import SplatFileError

    overrides = list(args.overrides) + ([f"iterations={args.iterations}"] if args.iterations is not None else [])
    preview = args.preview or args.out.with_name(args.out.name + ".preview.png")
    try:
        cfg = load_reconstruct_config(args.config, overrides)
        scan = load_scan(args.scan)
        result, source = reconstruct_to_file(scan, args.out, args.init, cfg, preview, progress=True)
    except (ConfigError, ScanError, SplatFileError, ReconstructError) as exc:
        print(f"twinrl twin reconstruct: error: {exc}", file=sys.stderr)
        return 2
    s = result.summary()
    print(f"{s['gaussians_before']} -> {s['gaussians_after']} Gaussians (from {source}), {s['iterations']} iterations "
          f"at {s['image_size'][0]}x{s['image_size'][1]} in {s['seconds']:.1f} s; held-out PSNR "
          f"{s['psnr_before_db']:.2f} -> {s['psnr_after_db']:.2f} dB over {len(s['heldout_frames'])} frames; "
          f"wrote {args.out} and {preview}")
    if args.json:
        s.update(out=str(args.out), preview=str(preview), init=source)
        print(json.dumps(s))
    return 0
