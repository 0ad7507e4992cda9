"""Aligning a scan (and the twin built from it) to the robot base frame ``fr3_link0``.

The scan frame is related to the base by an unknown similarity (``twinrl_twin.scan.Similarity``,
``p_base = s * R @ p_scan + t``). The robot is the one object whose geometry is known in the
base frame: its description (URDF) posed at the scan-time joint configuration (``robot.json``).
Alignment matches the scanned robot to that model in two stages (docs/alignment.md):

1. **Coarse** (open3d): robot points of the scan (depth pixels labelled robot, back-projected;
   or the robot Gaussians of ``splats.ply`` for scans without depth) against points sampled on
   the posed model. An initial scale from the ratio of the two clouds' spreads, FPFH features
   with RANSAC global registration (point-to-point estimation with scaling), point-to-point ICP
   with scaling, then point-to-plane ICP.
2. **Refine** (differentiable silhouettes, torch): ``L = mean_views (I_urdf - I_gs)^2`` over a
   translation, a rotation vector and a log-scale with Adam. ``I_gs``: the robot Gaussians mapped
   to the base frame by the current similarity, rendered as soft alpha masks
   (``twinrl_twin.silhouette``); ``I_urdf``: the posed model's silhouette in the same views,
   drawn by the same renderer from surfels on the model surface (so both masks share one edge
   response), or ray cast (``refine.target: raycast``). The views are the scan's cameras placed
   in the base frame by the coarse estimate and then held fixed: at the true transform the two
   silhouettes coincide in every view, and two or more views fix depth and scale.

:func:`align_scan` runs both and returns an :class:`AlignmentResult`;
:func:`write_report` writes ``alignment.json`` and overlay PNGs. Ground truth (simulated
scans) is only read to score the result (:func:`similarity_errors`), never to compute it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup.config import load_config, resolve_config_path

from .robot_geometry import RobotGeometry, make_intersector, silhouette
from .scan import LABEL_ROBOT, Intrinsics, Scan, Similarity, write_json_atomic, write_png_atomic

__all__ = ["CoarseConfig", "RefineConfig", "AlignmentConfig", "AlignmentError", "AlignmentResult",
           "load_alignment_config", "robot_geometry_for", "scan_robot_points", "robot_gaussians",
           "coarse_align", "refine_align", "align_scan", "similarity_errors", "mask_iou", "write_report"]

class AlignmentError(ValueError):
    """Alignment cannot run on this input (the message names the scan and what is missing)."""


@dataclass
class CoarseConfig:
    frame_stride: int = 1            # every n-th frame's robot pixels
    pixel_stride: int = 2            # every n-th pixel in each direction
    model_points: int = 80000        # samples on the posed robot model
    voxel: float = 0.01              # m: FPFH/RANSAC resolution (after the initial scale)
    normal_radius: float = 2.0       # x voxel
    feature_radius: float = 5.0      # x voxel
    ransac_distance: float = 1.5     # x voxel
    ransac_iterations: int = 100000
    ransac_confidence: float = 0.999
    ransac_tries: int = 3            # independent RANSAC runs; the best after ICP is kept
    icp_voxel: float = 0.003         # m: point density for ICP
    icp_distance: float = 0.02       # m: first ICP correspondence distance (shrinks x0.5 per round)
    icp_rounds: int = 3
    icp_iterations: int = 50
    min_points: int = 200            # fewer robot points than this is an error

    def validate(self) -> None:
        for k in ("frame_stride", "pixel_stride", "model_points", "ransac_iterations", "ransac_tries",
                  "icp_rounds", "icp_iterations", "min_points"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        for k in ("voxel", "normal_radius", "feature_radius", "ransac_distance", "icp_voxel", "icp_distance"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive")
        if not 0 < self.ransac_confidence < 1:
            raise ValueError("ransac_confidence must be in (0, 1)")


@dataclass
class RefineConfig:
    enabled: bool = True
    views: int = 4                   # scan cameras used as refinement views (evenly spread)
    width: int = 160                 # render width in pixels (height keeps the aspect)
    supersample: int = 2             # target silhouettes ray cast at this factor, then averaged
    iterations: int = 80 
    lr_translation: float = 1e-3     # m per step
    lr_rotation: float = 1e-3        # rad per step
    lr_log_scale: float = 1e-3
    max_gaussians: int = 8000
    opacity: float = 0.9             # fixed opacity of every Gaussian (0: their own opacities)
    gaussian_scale: float = 1.0      # multiplier on the Gaussians' scales
    patch_radius: int = 3            # pixels around each projected centre
    target: str = "surfels"          # I_urdf: "surfels" (model drawn by the same renderer) | "raycast"
    learn_edge: bool = False         # also fit the masks' edge response (global opacity and size)
    lr_edge: float = 0.05
    eps2d: float = 0.1               # px^2 added to projected covariances (anti-aliasing)
    frame_stride: int = 1            # robot Gaussians from depth: frames and pixels used
    pixel_stride: int = 2
    gaussians: str = "auto"          # robot Gaussians: auto | surfels (from depth) | splats (splats.ply)
    voxel: float = 0.004             # m: robot surfel spacing when built from depth
    surfel_thickness: float = 0.1    # surfel scale along the normal / in-plane scale

    def validate(self) -> None:
        for k in ("views", "width", "supersample", "iterations", "max_gaussians", "patch_radius",
                  "frame_stride", "pixel_stride"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")
        for k in ("lr_translation", "lr_rotation", "lr_log_scale", "gaussian_scale", "voxel"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be positive")
        if self.gaussians not in ("auto", "surfels", "splats"):
            raise ValueError(f"gaussians must be auto, surfels or splats, got {self.gaussians!r}")
        if self.target not in ("surfels", "raycast"):
            raise ValueError(f"target must be 'surfels' or 'raycast', got {self.target!r}")
        if not 0 <= self.opacity < 1:
            raise ValueError("opacity must be in [0, 1)")
        if self.eps2d < 0:
            raise ValueError("eps2d must be >= 0")


@dataclass
class AlignmentConfig:
    robot_geometry: str = "auto"     # auto | urdf | description (see robot_geometry_for)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    iou_views: int = 12              # scan frames scored by mask IoU in the report
    overlay_views: int = 4           # overlay PNGs written
    seed: int = 0

    def validate(self) -> None:
        if self.robot_geometry not in ("auto", "urdf", "description"):
            raise ValueError(f"robot_geometry must be auto, urdf or description, got {self.robot_geometry!r}")
        if self.iou_views < 1 or self.overlay_views < 0:
            raise ValueError("iou_views must be >= 1 and overlay_views >= 0")


def load_alignment_config(path: Optional[str] = None, overrides=()) -> AlignmentConfig:
    return load_config(resolve_config_path(path or "alignment"), AlignmentConfig, overrides)


@dataclass
class AlignmentResult:
    similarity: Similarity                     # final scan -> base
    stages: dict[str, Similarity]              # stage name -> estimate after that stage
    timing: dict[str, float]                   # seconds per stage
    info: dict = field(default_factory=dict)   # per-stage diagnostics


# -- inputs -------------------------------------------------------------------------------------
def robot_geometry_for(scan: Scan, mode: str = "auto") -> RobotGeometry:
    """The robot model of ``scan``. ``urdf``: the URDF named in robot.json. ``description``:
    the project's FR3 description (capsules; the generated URDF approximates them by
    cylinders). ``auto``: the description when robot.json names a URDF generated from it,
    the URDF otherwise."""
    if scan.robot is None:
        raise AlignmentError(f"{scan.root}: no robot.json: alignment needs the robot's URDF and scan-time joints")
    urdf = Path(scan.robot.urdf)
    from .sim import fr3_model

    if fr3_model.use_description(mode, urdf):
        return RobotGeometry.from_description()
    return RobotGeometry.from_urdf(urdf, scan.robot.base_link)


def _posed_model(scan: Scan, geometry: RobotGeometry):
    return geometry.mesh(scan.robot.joint_positions, scan.robot.gripper_width)


def scan_robot_points(scan: Scan, cfg: CoarseConfig, progress: bool = False) -> np.ndarray:
    """Robot points (scan frame): robot-labelled depth pixels back-projected, or the robot
    Gaussians' centres of ``splats.ply`` for a scan without depth or masks."""
    from tqdm import tqdm

    if scan.has_depth and scan.has_masks:
        pts = []
        for f in tqdm(scan.frames[::cfg.frame_stride], desc="robot points", unit="frame", leave=False,
                      disable=not progress):
            p = f.points(cfg.pixel_stride)
            pts.append(p["points"][p["labels"] == LABEL_ROBOT])
        points = np.concatenate(pts) if pts else np.zeros((0, 3))
        source = "robot-labelled depth pixels (label 1 in masks/)"
    elif scan.splats_path is not None:
        points = _robot_splats(scan).means.astype(float)
        source = f"robot Gaussians of {scan.splats_path.name}"
    else:
        raise AlignmentError(f"{scan.root}: no robot points: alignment needs depth maps with robot masks "
                             "(depth/ + masks/) or a splats.ply with robot labels")
    if len(points) < cfg.min_points:
        raise AlignmentError(f"{scan.root}: only {len(points)} robot points from {source} "
                             f"(need >= {cfg.min_points}); is the robot in view and labelled {LABEL_ROBOT}?")
    return points


def _robot_splats(scan: Scan):
    from .splats import read_ply

    scene = read_ply(scan.splats_path)
    if scene.labels is None or not np.any(scene.labels == LABEL_ROBOT):
        raise AlignmentError(f"{scan.splats_path}: no Gaussians labelled robot ({LABEL_ROBOT})")
    return scene.select_label(LABEL_ROBOT)


def robot_gaussians(scan: Scan, cfg: RefineConfig, scale_hint: float, points: Optional[np.ndarray] = None):
    """Robot Gaussians (scan frame) for the silhouettes. ``cfg.gaussians``: ``surfels`` are
    made from the robot's depth points (``points``, or back-projected here): voxel-downsampled
    to ``cfg.voxel`` metres (``scale_hint`` metres per scan unit), flat discs on the estimated
    surface (normal-axis scale ``surfel_thickness`` x spacing); discs, unlike round blobs, do
    not grow the silhouette, at the contour they are seen edge-on. ``splats``: the robot
    Gaussians of ``splats.ply``. ``auto``: surfels when the scan has depth and masks, else splats."""
    has_depth = scan.has_depth and scan.has_masks
    if cfg.gaussians == "splats" or (cfg.gaussians == "auto" and not has_depth):
        if scan.splats_path is None:
            raise AlignmentError(f"{scan.root}: no splats.ply for the robot Gaussians "
                                 "(and no depth maps with robot masks to make surfels from)")
        return _robot_splats(scan)
    if not has_depth:
        raise AlignmentError(f"{scan.root}: robot surfels need depth maps with robot masks (depth/ + masks/)")
    if points is None:
        points = scan_robot_points(scan, CoarseConfig(frame_stride=cfg.frame_stride, pixel_stride=cfg.pixel_stride))
    spacing = cfg.voxel / scale_hint
    scene = surfels(points, spacing, cfg.surfel_thickness)
    for _ in range(4):                         # coarser spacing (not random holes) above the budget
        if len(scene) <= cfg.max_gaussians:
            break
        spacing *= 1.05 * math.sqrt(len(scene) / cfg.max_gaussians)
        scene = surfels(points, spacing, cfg.surfel_thickness)
    return scene


def surfels(points: np.ndarray, spacing: float, thickness: float = 0.1):
    """Flat Gaussians on the surface sampled by ``points``: voxel grid ``spacing``, in-plane
    scale = mean neighbour distance, normal scale = ``thickness`` x that, normals by PCA."""
    import open3d as o3d

    from .splats import GaussianScene

    pc = _cloud(points).voxel_down_sample(spacing)
    pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3.0 * spacing, max_nn=30))
    means = np.asarray(pc.points)
    normals = np.asarray(pc.normals)
    if len(means) == 0:
        raise AlignmentError("no robot points left for the silhouette Gaussians")
    r = _neighbour_spacing(means)
    z = np.array([0.0, 0.0, 1.0])
    # rotation taking +z to the normal, as quaternions (w, x, y, z)
    axis = np.cross(z, normals)
    sin = np.linalg.norm(axis, axis=1)
    cos = normals @ z
    ang = np.arctan2(sin, cos)
    axis = np.where(sin[:, None] > 1e-9, axis / np.maximum(sin, 1e-12)[:, None], np.array([1.0, 0.0, 0.0]))
    quats = np.concatenate([np.cos(ang / 2)[:, None], axis * np.sin(ang / 2)[:, None]], axis=1)
    scales = np.stack([r, r, thickness * r], axis=1)
    n = len(means)
    return GaussianScene(means, quats, np.log(scales), np.zeros(n), np.zeros((n, 1, 3)), normals,
                         np.full(n, LABEL_ROBOT, np.uint8), {LABEL_ROBOT: "robot"})


# -- coarse -------------------------------------------------------------------------------------
def _spread(points: np.ndarray) -> float:
    return float(np.sqrt(np.trace(np.cov(points.T))))


def _cloud(points, normals=None):
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=float)))
    if normals is not None:
        pc.normals = o3d.utility.Vector3dVector(np.asarray(normals, dtype=float))
    return pc


def coarse_align(scan_points: np.ndarray, model_points: np.ndarray, model_normals: np.ndarray,
                 cfg: CoarseConfig, seed: int = 0, progress: bool = False) -> tuple[Similarity, Similarity, dict]:
    """Scan robot points -> base. Returns (after RANSAC, after ICP, diagnostics)."""
    import open3d as o3d
    from tqdm import tqdm

    reg = o3d.pipelines.registration
    o3d.utility.random.seed(int(seed))
    centre = scan_points.mean(axis=0)
    s0 = _spread(model_points) / _spread(scan_points)
    pre = np.eye(4)                               # scan -> metric, centred
    pre[:3, :3] *= s0
    pre[:3, 3] = -s0 * centre
    src_full = _cloud((scan_points - centre) * s0)
    tgt_full = _cloud(model_points, model_normals)
    v = cfg.voxel
    src = src_full.voxel_down_sample(v)
    tgt = tgt_full.voxel_down_sample(v)
    feats = []
    for pc in (src, tgt):
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=cfg.normal_radius * v, max_nn=30))
        feats.append(reg.compute_fpfh_feature(pc, o3d.geometry.KDTreeSearchParamHybrid(
            radius=cfg.feature_radius * v, max_nn=100)))
    src_icp = src_full.voxel_down_sample(cfg.icp_voxel)
    tgt_icp = tgt_full.voxel_down_sample(cfg.icp_voxel)
    if not tgt_icp.has_normals():
        tgt_icp.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * cfg.icp_voxel, max_nn=30))

    best = None
    for attempt in tqdm(range(cfg.ransac_tries), desc="coarse (RANSAC + ICP)", unit="try", disable=not progress,
                        leave=False):
        o3d.utility.random.seed(int(seed) + attempt)
        ransac = reg.registration_ransac_based_on_feature_matching(
            src, tgt, feats[0], feats[1], True, cfg.ransac_distance * v,
            reg.TransformationEstimationPointToPoint(True), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9),
             reg.CorrespondenceCheckerBasedOnDistance(cfg.ransac_distance * v)],
            reg.RANSACConvergenceCriteria(cfg.ransac_iterations, cfg.ransac_confidence))
        M = np.asarray(ransac.transformation).copy()
        dist = cfg.icp_distance
        crit = reg.ICPConvergenceCriteria(max_iteration=cfg.icp_iterations, relative_fitness=1e-9,
                                          relative_rmse=1e-9)
        fit = None
        for _ in range(cfg.icp_rounds):
            fit = reg.registration_icp(src_icp, tgt_icp, dist, M, reg.TransformationEstimationPointToPoint(True),
                                       crit)
            M = np.asarray(fit.transformation).copy()
            fit = reg.registration_icp(src_icp, tgt_icp, dist, M, reg.TransformationEstimationPointToPlane(), crit)
            M = np.asarray(fit.transformation).copy()
            dist *= 0.5
        score = (fit.fitness, -fit.inlier_rmse)
        if best is None or score > best[0]:
            best = (score, np.asarray(ransac.transformation).copy(), M, ransac.fitness, fit)
    _, M_ransac, M_icp, ransac_fitness, fit = best
    info = {"initial_scale": s0, "scan_points": len(scan_points), "ransac_points": [len(src.points), len(tgt.points)],
            "ransac_fitness": float(ransac_fitness), "icp_points": [len(src_icp.points), len(tgt_icp.points)],
            "icp_fitness": float(fit.fitness), "icp_inlier_rmse_m": float(fit.inlier_rmse)}
    return Similarity.from_matrix(M_ransac @ pre), Similarity.from_matrix(M_icp @ pre), info


# -- refinement ---------------------------------------------------------------------------------
def _scaled_intrinsics(intr: Intrinsics, width: int) -> Intrinsics:
    f = width / intr.width
    height = max(1, int(round(intr.height * f)))
    fy = height / intr.height
    # pixel centres at integer coordinates: a pixel of the small image covers 1/f source pixels
    return Intrinsics(intr.fx * f, intr.fy * fy, (intr.cx + 0.5) * f - 0.5, (intr.cy + 0.5) * fy - 0.5,
                      int(width), height)


def _target_mask(intersector, T_base_cam: np.ndarray, intr: Intrinsics, supersample: int) -> np.ndarray:
    if supersample == 1:
        return silhouette(None, T_base_cam, intr, intersector).astype(np.float32)
    big = _scaled_intrinsics(intr, intr.width * supersample)
    big = Intrinsics(big.fx, big.fy, big.cx, big.cy, intr.width * supersample, intr.height * supersample)
    m = silhouette(None, T_base_cam, big, intersector).astype(np.float32)
    return m.reshape(intr.height, supersample, intr.width, supersample).mean(axis=(1, 3))


def _neighbour_spacing(points: np.ndarray, k: int = 3) -> np.ndarray:
    from scipy.spatial import cKDTree

    k = min(k + 1, len(points))
    if k < 2:
        return np.full(len(points), 1e-3)
    dist, _ = cKDTree(points).query(points, k=k)
    return np.maximum(dist[:, 1:].mean(axis=1), 1e-9)


def _pick_views(scan: Scan, n: int) -> list[int]:
    """One frame from each of ``n`` equal stretches of the scan: the one that sees most of the
    robot with least of it cut off by the image border (robot area x (1 - border share))."""
    frames = scan.frames
    if not scan.has_masks:
        return np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int).tolist()
    score = []
    for f in frames:
        m = f.mask() == LABEL_ROBOT
        border = m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum()
        perimeter = max(1.0, 4.0 * np.sqrt(m.sum()))
        score.append(m.mean() * max(0.0, 1.0 - 2.0 * border / perimeter))
    score = np.array(score)
    picks = []
    for seg in np.array_split(np.arange(len(frames)), min(n, len(frames))):
        if len(seg):
            picks.append(int(seg[np.argmax(score[seg])]))
    return picks


def refine_align(scan: Scan, initial: Similarity, model_mesh, cfg: RefineConfig, seed: int = 0,
                 progress: bool = True, gaussians=None, points: Optional[np.ndarray] = None
                 ) -> tuple[Similarity, dict]:
    """Minimise ``mean_views (I_urdf - I_gs)^2`` over a similarity update (see module doc)."""
    import torch
    from tqdm import tqdm

    from .silhouette import GaussianSilhouette

    t0 = time.perf_counter()
    scene = gaussians if gaussians is not None else robot_gaussians(scan, cfg, initial.scale, points)
    if len(scene) > cfg.max_gaussians:
        scene = scene.subset(np.sort(np.random.default_rng(seed).choice(len(scene), cfg.max_gaussians, False)))
    base = scene.transformed(initial)             # Gaussians in the base frame at the coarse estimate
    op = base.opacities() if cfg.opacity == 0 else cfg.opacity
    renderer = GaussianSilhouette(base.means, base.quats, base.scales() * cfg.gaussian_scale, op,
                                  patch_radius=cfg.patch_radius, eps2d=cfg.eps2d)
    views = _pick_views(scan, cfg.views)
    viewmats, Ks, poses = [], [], []
    for i in views:
        f = scan.frames[i]
        intr = _scaled_intrinsics(f.intrinsics, cfg.width)
        T = initial.apply_pose(f.T_scan_camera)            # fixed virtual camera in the base frame
        poses.append((T, intr))
        viewmats.append(np.linalg.inv(T))
        Ks.append(intr.K)
    W, H = intr.width, intr.height
    viewmats = torch.tensor(np.stack(viewmats), dtype=torch.float32)
    Ks = torch.tensor(np.stack(Ks), dtype=torch.float32)
    if cfg.target == "surfels":
        # the model drawn by the same renderer: surfels on its surface at the scan surfels' spacing,
        # so that both masks share one edge response and only the geometry differs
        spacing = float(np.median(base.scales()[:, :2]))
        n = int(min(400000, max(20000, 6.0 * model_mesh.area / spacing ** 2)))
        import trimesh

        samples, _ = trimesh.sample.sample_surface(model_mesh, n, seed=seed)
        model = surfels(np.asarray(samples), spacing, cfg.surfel_thickness)
        # match the scan surfels' size (voxel spacing and neighbour distance differ a little)
        model = surfels(np.asarray(samples), spacing ** 2 / float(np.median(model.scales()[:, :2])),
                        cfg.surfel_thickness)
        model_renderer = GaussianSilhouette(model.means, model.quats, model.scales() * cfg.gaussian_scale,
                                            op if np.isscalar(op) else float(np.median(op)),
                                            patch_radius=cfg.patch_radius, eps2d=cfg.eps2d)
        with torch.no_grad():
            zero = torch.zeros(3)
            target = model_renderer.render(torch.zeros(()), zero, zero, viewmats, Ks, W, H)
    else:
        intersector = make_intersector(model_mesh)
        target = torch.tensor(np.stack([_target_mask(intersector, T, intr, cfg.supersample) for T, intr in poses]))
    pivot = torch.tensor(np.asarray(model_mesh.vertices).mean(axis=0), dtype=torch.float32)
    t_prep = time.perf_counter() - t0

    tr = torch.zeros(3, requires_grad=True)
    rv = torch.zeros(3, requires_grad=True)
    ls = torch.zeros((), requires_grad=True)
    groups = [{"params": [tr], "lr": cfg.lr_translation}, {"params": [rv], "lr": cfg.lr_rotation},
              {"params": [ls], "lr": cfg.lr_log_scale}]
    edge_a = edge_b = None
    if cfg.learn_edge:
        start = float(np.clip(np.median(np.broadcast_to(op, (len(renderer),))), 0.05, 0.95))
        edge_a = torch.tensor(math.log(start / (1 - start)), requires_grad=True)
        edge_b = torch.zeros((), requires_grad=True)
        groups.append({"params": [edge_a, edge_b], "lr": cfg.lr_edge})
    opt = torch.optim.Adam(groups)
    # cosine decay of every learning rate to 5 % of its start
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k, cfg.iterations) / cfg.iterations)))
    losses = []
    with torch.no_grad():
        first = renderer.render(ls, rv, tr, viewmats, Ks, W, H, pivot, edge_a, edge_b)
    for _ in tqdm(range(cfg.iterations), desc="refine", unit="it", disable=not progress, leave=False):
        opt.zero_grad()
        img = renderer.render(ls, rv, tr, viewmats, Ks, W, H, pivot, edge_a, edge_b)
        loss = ((img - target) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        last = renderer.render(ls, rv, tr, viewmats, Ks, W, H, pivot, edge_a, edge_b)
        final_loss = float(((last - target) ** 2).mean())
    from .silhouette import rotvec_to_matrix

    with torch.no_grad():
        R = rotvec_to_matrix(rv.double()).numpy()
        s = float(np.exp(float(ls)))
        c = pivot.double().numpy()
        delta = Similarity(s, R, c + tr.double().numpy() - s * R @ c)
    result = Similarity.from_matrix(delta.matrix @ initial.matrix)
    tgt_bin = target.numpy() >= 0.5
    info = {"views": views, "image_size": [W, H], "gaussians": len(renderer),
            "loss_initial": float(((first - target) ** 2).mean()), "loss_final": final_loss,
            "iou_initial": [mask_iou(a >= 0.5, b) for a, b in zip(first.numpy(), tgt_bin)],
            "iou_final": [mask_iou(a >= 0.5, b) for a, b in zip(last.numpy(), tgt_bin)],
            "update": {"translation_mm": (1000 * tr.detach().numpy()).tolist(),
                       "rotation_deg": float(np.degrees(np.linalg.norm(rv.detach().numpy()))),
                       "scale_percent": 100 * (s - 1)},
            "edge": None if edge_a is None else {"opacity": float(torch.sigmoid(edge_a.detach())),
                                                  "size": float(torch.exp(edge_b.detach()))},
            "loss_curve": [losses[i] for i in np.linspace(0, len(losses) - 1, min(len(losses), 20)).astype(int)],
            "prepare_s": t_prep}
    return result, info


# -- whole pipeline -----------------------------------------------------------------------------
def align_scan(scan: Scan, cfg: Optional[AlignmentConfig] = None, progress: bool = True) -> AlignmentResult:
    """Coarse + refined ``scan -> base`` similarity of ``scan`` (needs robot.json and robot
    points: depth + masks, or a labelled splats.ply)."""
    cfg = cfg or load_alignment_config()
    timing: dict[str, float] = {}
    t = time.perf_counter()
    geometry = robot_geometry_for(scan, cfg.robot_geometry)
    mesh = _posed_model(scan, geometry)
    model_pts, model_nrm = geometry.sample_surface(scan.robot.joint_positions, scan.robot.gripper_width,
                                                   cfg.coarse.model_points, seed=cfg.seed)
    scan_pts = scan_robot_points(scan, cfg.coarse, progress)
    timing["inputs"] = time.perf_counter() - t
    t = time.perf_counter()
    s_ransac, s_icp, info_c = coarse_align(scan_pts, model_pts, model_nrm, cfg.coarse, cfg.seed, progress)
    timing["coarse"] = time.perf_counter() - t
    stages = {"ransac": s_ransac, "icp": s_icp}
    info = {"coarse": info_c, "robot_model": geometry.source}
    final = s_icp
    if cfg.refine.enabled:
        t = time.perf_counter()
        final, info["refine"] = refine_align(scan, s_icp, mesh, cfg.refine, cfg.seed, progress, points=scan_pts)
        timing["refine"] = time.perf_counter() - t
        stages["refine"] = final
    return AlignmentResult(final, stages, timing, info)


# -- scoring and report -------------------------------------------------------------------------
def similarity_errors(estimate: Similarity, truth: Similarity, points: Optional[np.ndarray] = None) -> dict:
    """Errors of a ``scan -> base`` estimate, expressed in the base frame through
    ``D = estimate o truth^-1``: translation (mm) = how far D moves the base origin, rotation
    (deg) = angle of D, scale (%) = estimate/truth - 1, and the mean/max displacement (mm) of
    ``points`` (base frame, e.g. the robot surface) when given."""
    D = Similarity.from_matrix(estimate.matrix @ truth.inverse().matrix)
    ang = math.degrees(math.acos(float(np.clip((np.trace(D.rotation) - 1) / 2, -1.0, 1.0))))
    out = {"translation_mm": 1000 * float(np.linalg.norm(D.translation)), "rotation_deg": ang,
           "scale_percent": 100 * (estimate.scale / truth.scale - 1)}
    if points is not None:
        d = np.linalg.norm(D.apply_points(points) - points, axis=1)
        out["robot_mean_mm"] = 1000 * float(d.mean())
        out["robot_max_mm"] = 1000 * float(d.max())
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _overlay(rgb: np.ndarray, twin: np.ndarray, scanned: np.ndarray) -> np.ndarray:
    """Twin silhouette over the scan frame: both = green, twin only = red, scan only = blue."""
    out = rgb.astype(np.float32) * 0.55
    col = np.zeros_like(out)
    col[twin & scanned] = (60, 220, 90)
    col[twin & ~scanned] = (255, 60, 50)
    col[~twin & scanned] = (60, 120, 255)
    any_ = twin | scanned
    out[any_] += 0.45 * col[any_]
    out[~any_] = rgb[~any_]
    return np.clip(out, 0, 255).astype(np.uint8)


def write_report(scan: Scan, result: AlignmentResult, out: os.PathLike | str, cfg: Optional[AlignmentConfig] = None,
                 groundtruth=None, progress: bool = True) -> dict:
    """``<out>/alignment.json`` and ``<out>/overlay_<frame>.png``; returns the report dict."""
    from tqdm import tqdm

    cfg = cfg or load_alignment_config()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    geometry = robot_geometry_for(scan, cfg.robot_geometry)
    mesh = _posed_model(scan, geometry)
    intersector = make_intersector(mesh)
    S = result.similarity
    t = time.perf_counter()
    picks = np.linspace(0, len(scan.frames) - 1, min(cfg.iou_views, len(scan.frames))).round().astype(int)
    picks = sorted(set(picks.tolist()))
    overlay_set = set(np.asarray(picks)[np.linspace(0, len(picks) - 1, min(cfg.overlay_views, len(picks)))
                                        .round().astype(int)].tolist()) if cfg.overlay_views else set()
    ious, overlays = {}, []
    for i in tqdm(picks, desc="report views", unit="view", disable=not progress, leave=False):
        f = scan.frames[i]
        twin = silhouette(None, S.apply_pose(f.T_scan_camera), f.intrinsics, intersector)
        mask = f.mask()
        if mask is None:
            continue
        scanned = mask == LABEL_ROBOT
        ious[f.name] = mask_iou(twin, scanned)
        if i in overlay_set:
            p = out / f"overlay_{Path(f.name).stem}.png"
            write_png_atomic(p, _overlay(f.rgb(), twin, scanned), durable=False)
            overlays.append(p.name)
    timing = dict(result.timing)
    timing["report"] = time.perf_counter() - t
    report = {
        "scan": str(scan.root),
        "transform": {"scale": S.scale, "rotation": S.rotation.tolist(), "translation": S.translation.tolist(),
                      "matrix": S.matrix.tolist(), "convention": "p_base = scale * rotation @ p_scan + translation"},
        "stages": {k: v.to_dict() for k, v in result.stages.items()},
        "mask_iou": {"per_view": ious, "mean": float(np.mean(list(ious.values()))) if ious else None,
                     "meaning": "ray-cast robot model through the final transform vs the scan's robot masks"},
        "timing_s": timing,
        "info": result.info,
        "overlays": overlays,
    }
    if groundtruth is not None:
        pts = np.asarray(mesh.vertices)
        report["errors_vs_groundtruth"] = {k: similarity_errors(v, groundtruth.scan_to_base, pts)
                                           for k, v in result.stages.items()}
        report["groundtruth"] = str(groundtruth.path)
    write_json_atomic(out / "alignment.json", report)
    return report
