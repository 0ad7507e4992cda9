"""Simulated scans of the MuJoCo sim world (``twinrl twin scan-sim``).

A handheld phone is walked along a noisy arc around the work cell (0.6-1.2 m from the
workspace, varying height, hand shake and a little roll), looking at the workspace. Every
frame is rendered with MuJoCo (RGB, z-depth, segmentation) and written in the scan format of
docs/scan_format.md. Like an SfM session, the scan frame is unknown: camera poses and depth
are expressed in a frame related to the robot base by a random similarity (rotation,
translation, scale). The true ``scan -> base`` similarity, the object poses and the camera
poses in the base frame are written apart (``<scan>/../<scan>.groundtruth.json``).

Object meshes are exported from the sim's collision geometry (metres, object body frame),
``robot.json`` holds the sim robot's URDF and the joint configuration at scan time.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import load_config, resolve_config_path

from .scan import (
    FIRST_OBJECT_LABEL,
    LABEL_ROBOT,
    Intrinsics,
    Similarity,
    frame_stem,
    groundtruth_path,
    write_json_atomic,
    write_npy_atomic,
    write_png_atomic,
)

__all__ = ["ScanSimConfig", "ScanPath", "camera_path", "random_similarity", "export_body_mesh", "simulate_scan",
           "load_scan_sim_config", "write_preview"]

SCAN_OBJECTS = ("object", "target")       # sim bodies exported as scan objects (mask labels 2, 3)


@dataclass
class ScanSimConfig:
    """Section ``sim`` of config/scan.yaml."""

    width: int = 320
    height: int = 240
    fovy: float = 60.0                                   # vertical field of view, degrees
    frames: int = 60
    look_at: tuple[float, float, float] = (0.3, 0.0, 0.22)   # aim point, base frame (m)
    look_at_jitter: float = 0.03                         # m, slow wander of the aim point
    radius: tuple[float, float] = (0.6, 1.2)             # camera distance to look_at (m)
    elevation: tuple[float, float] = (20.0, 55.0)        # degrees above the table plane
    azimuth: tuple[float, float] = (-110.0, 110.0)       # degrees around look_at; 0 = from +x
    shake_position: float = 0.004                        # m, std of the hand shake
    shake_rotation: float = 1.0                          # degrees, std of the hand shake
    roll: float = 6.0                                    # degrees, max slow roll of the phone
    max_depth: float = 3.0                               # m; farther pixels are invalid (0)
    scale: tuple[float, float] = (0.3, 3.0)              # metres per scan unit (log-uniform)
    translation: float = 2.0                             # max |t| per axis of the unknown frame (m)
    joint_noise: float = 0.15                            # rad, scan-time joints = home + U(-x, x)
    depth_format: str = "npy"                            # "npy" (scan units) or "png" (16-bit mm)

    def validate(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size {self.width}x{self.height} is too small")
        if not 10.0 <= self.fovy <= 150.0:
            raise ValueError(f"fovy must be in [10, 150] degrees, got {self.fovy}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        for name in ("radius", "elevation", "azimuth", "scale"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name}: lower bound {lo} above upper bound {hi}")
        if self.radius[0] <= 0 or self.scale[0] <= 0:
            raise ValueError("radius and scale must be positive")
        if self.depth_format not in ("npy", "png"):
            raise ValueError(f"depth_format must be 'npy' or 'png', got {self.depth_format!r}")
        if self.depth_format == "png" and self.scale != (1.0, 1.0):
            raise ValueError("depth_format 'png' stores millimetres: it needs a metric scan frame (scale: [1.0, 1.0])")


def load_scan_sim_config(path: Optional[str] = None, overrides=()) -> ScanSimConfig:
    return load_config(resolve_config_path(path or "scan"), ScanSimConfig, overrides, section="sim")


@dataclass
class ScanPath:
    """Camera poses of a handheld path: optical frames (OpenCV axes) in the base frame."""

    poses: list[np.ndarray] = field(default_factory=list)

    def positions(self) -> np.ndarray:
        return np.stack([T[:3, 3] for T in self.poses])


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, sigma_frames: float) -> np.ndarray:
    """Zero-mean unit-std noise correlated over about ``sigma_frames`` frames."""
    from scipy.ndimage import gaussian_filter1d

    raw = rng.standard_normal((n + 8 * int(sigma_frames) + 8, dims))
    sm = gaussian_filter1d(raw, sigma=max(sigma_frames, 1e-3), axis=0)[4 * int(sigma_frames) + 4:][:n]
    sm -= sm.mean(axis=0)
    std = sm.std(axis=0)
    return sm / np.where(std > 1e-12, std, 1.0)


def look_rotation(forward, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Optical-frame rotation (x right, y down, z forward) looking along ``forward``."""
    f = np.asarray(forward, float)
    f = f / np.linalg.norm(f)
    right = np.cross(f, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("viewing direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    return np.stack([right, down, f], axis=1)


def camera_path(cfg: ScanSimConfig, rng: np.random.Generator, n: Optional[int] = None) -> ScanPath:
    """A phone-like handheld arc around ``cfg.look_at`` (see the module doc)."""
    n = int(n or cfg.frames)
    s = np.linspace(0.0, 1.0, n)
    a0, a1 = np.radians(cfg.azimuth)
    if rng.random() < 0.5:                          # walk either way round
        a0, a1 = a1, a0
    az = a0 + (a1 - a0) * s + np.radians(4.0) * _smooth_noise(rng, n, 1, n / 10)[:, 0]
    r_lo, r_hi = cfg.radius
    ph = rng.uniform(0, 2 * np.pi, size=2)
    radius = r_lo + (r_hi - r_lo) * (0.5 + 0.45 * np.sin(2 * np.pi * 1.3 * s + ph[0]))
    e_lo, e_hi = np.radians(cfg.elevation)
    elev = e_lo + (e_hi - e_lo) * (0.5 + 0.45 * np.sin(2 * np.pi * 0.9 * s + ph[1]))
    centre = np.asarray(cfg.look_at, float)
    aim = centre + cfg.look_at_jitter * _smooth_noise(rng, n, 3, n / 8) * np.array([1.0, 1.0, 0.3])
    shake_p = cfg.shake_position * _smooth_noise(rng, n, 3, 1.5)
    shake_r = np.radians(cfg.shake_rotation) * _smooth_noise(rng, n, 3, 1.5)
    roll = np.radians(cfg.roll) * np.clip(_smooth_noise(rng, n, 1, n / 6)[:, 0] / 2.0, -1, 1)
    poses = []
    for i in range(n):
        horiz = radius[i] * math.cos(elev[i])
        pos = centre + np.array([horiz * math.cos(az[i]), horiz * math.sin(az[i]), radius[i] * math.sin(elev[i])])
        pos = pos + shake_p[i]
        R = look_rotation(aim[i] - pos)
        R = R @ tf.Rotation.from_rotvec(np.array([0.0, 0.0, roll[i]]) + shake_r[i]).as_matrix()
        poses.append(tf.make_transform(pos, R))
    return ScanPath(poses)


def random_similarity(cfg: ScanSimConfig, rng: np.random.Generator) -> Similarity:
    """The unknown ``scan -> base`` similarity of an SfM session: uniform rotation, scale
    log-uniform in ``cfg.scale`` (metres per scan unit), translation up to ``cfg.translation``."""
    lo, hi = cfg.scale
    scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)
    R = tf.Rotation.random(random_state=int(rng.integers(0, 2**31 - 1))).as_matrix()
    t = rng.uniform(-cfg.translation, cfg.translation, size=3)
    return Similarity(scale, R, t)


def export_body_mesh(model, body: str, collision_only: bool = True):
    """The geoms of MuJoCo body ``body`` as one trimesh in the body frame (metres)."""
    import mujoco
    import trimesh

    bid = model.body(body).id
    parts = []
    for g in np.flatnonzero(model.geom_bodyid == bid):
        if collision_only and model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0:
            continue
        kind = int(model.geom_type[g])
        size = model.geom_size[g]
        if kind == mujoco.mjtGeom.mjGEOM_BOX:
            m = trimesh.creation.box(extents=2 * size)
        elif kind == mujoco.mjtGeom.mjGEOM_CYLINDER:
            m = trimesh.creation.cylinder(radius=size[0], height=2 * size[1], sections=48)
        elif kind == mujoco.mjtGeom.mjGEOM_SPHERE:
            m = trimesh.creation.icosphere(subdivisions=2, radius=size[0])
        elif kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
            m = trimesh.creation.capsule(height=2 * size[1], radius=size[0])
        elif kind == mujoco.mjtGeom.mjGEOM_ELLIPSOID:
            m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
            m.apply_scale(size)
        elif kind == mujoco.mjtGeom.mjGEOM_MESH:
            mid = model.geom_dataid[g]
            va, nv = model.mesh_vertadr[mid], model.mesh_vertnum[mid]
            fa, nf = model.mesh_faceadr[mid], model.mesh_facenum[mid]
            m = trimesh.Trimesh(model.mesh_vert[va:va + nv].copy(), model.mesh_face[fa:fa + nf].copy(), process=True)
            m.fix_normals()
        else:
            continue
        m.apply_transform(tf.make_transform(model.geom_pos[g], tf.quat_from_wxyz(model.geom_quat[g])))
        parts.append(m)
    if not parts:
        raise ValueError(f"body {body!r} has no exportable geometry")
    return trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]


class _FrameRenderer:
    """RGB / depth / segmentation of a posed pinhole camera with a MuJoCo free camera."""

    def __init__(self, model, width: int, height: int, fovy: float):
        import mujoco

        self.mujoco = mujoco
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
        model.vis.global_.fovy = fovy
        self.renderer = mujoco.Renderer(model, height, width)
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.option = mujoco.MjvOption()
        self.option.geomgroup[:] = 1
        self.option.sitegroup[:] = 0

    def _scene(self, data, T_base_cam: np.ndarray) -> None:
        mj = self.mujoco
        r = self.renderer
        self.cam.lookat[:] = T_base_cam[:3, 3] + T_base_cam[:3, 2]
        r.update_scene(data, camera=self.cam, scene_option=self.option)
        fl = r.scene.flags
        for flag in (mj.mjtRndFlag.mjRND_SHADOW, mj.mjtRndFlag.mjRND_REFLECTION, mj.mjtRndFlag.mjRND_SKYBOX,
                     mj.mjtRndFlag.mjRND_FOG):
            fl[flag] = 0
        for eye in r.scene.camera:                  # both eyes: a mono pinhole at the pose
            eye.pos[:] = T_base_cam[:3, 3]
            eye.forward[:] = T_base_cam[:3, 2]
            eye.up[:] = -T_base_cam[:3, 1]
            eye.frustum_center = 0.0

    def render(self, data, T_base_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.renderer
        self._scene(data, T_base_cam)
        rgb = r.render().copy()
        r.enable_depth_rendering()
        self._scene(data, T_base_cam)
        depth = r.render().copy()
        r.disable_depth_rendering()
        r.enable_segmentation_rendering()
        self._scene(data, T_base_cam)
        seg = r.render().copy()
        r.disable_segmentation_rendering()
        return rgb, depth, seg

    def close(self) -> None:
        try:
            self.renderer.close()
        except Exception:
            pass


def _label_lut(env) -> tuple[np.ndarray, dict[int, str]]:
    m = env.model
    lut = np.zeros(m.ngeom, dtype=np.uint8)
    lut[sorted(env.robot_geoms)] = LABEL_ROBOT
    names = {}
    for k, body in enumerate(SCAN_OBJECTS):
        label = FIRST_OBJECT_LABEL + k
        lut[np.flatnonzero(m.geom_bodyid == m.body(body).id)] = label
        names[label] = body
    return lut, names


def simulate_scan(task: str, out: os.PathLike | str, frames: Optional[int] = None, seed: int = 0,
                  cfg: Optional[ScanSimConfig] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Render a scan of the sim world for ``task`` into directory ``out`` (see module doc).

    The scan is built in a temporary sibling directory and moved into place at the end, so an
    interrupted run leaves nothing half-written under ``out``. Returns a summary dict.
    """
    import mujoco
    from tqdm import tqdm

    from .sim import fr3_model, make_env
    from .sim.cameras import intrinsics as pinhole_intrinsics

    cfg = cfg or load_scan_sim_config()
    n = int(cfg.frames if frames is None else frames)
    if n < 2:
        raise ValueError(f"frames must be >= 2, got {n}")
    out = Path(out)
    gt_file = groundtruth_path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
        if not out.is_dir() or (any(out.iterdir()) and not (out / "cameras.json").is_file()):
            raise FileExistsError(f"{out} is not a scan directory; refusing to overwrite it")
    rng = np.random.default_rng(seed)
    env = make_env(task, render=False, seed=seed)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    renderer = None
    try:
        env.reset(seed=seed)
        m, d = env.model, env.data
        # scan-time robot configuration (kinematic: the scan is a snapshot)
        lo, hi = np.asarray(env.fr3.joint_lower), np.asarray(env.fr3.joint_upper)
        q = np.clip(env.home + rng.uniform(-cfg.joint_noise, cfg.joint_noise, size=7), lo, hi)
        width = float(rng.uniform(0.0, 2 * env.fr3.gripper.finger_travel))
        d.qpos[env.arm_qpos] = q
        d.qpos[env.finger_qpos] = width / 2
        d.qvel[:] = 0.0
        mujoco.mj_forward(m, d)

        sim = random_similarity(cfg, rng)          # scan -> base
        to_scan = sim.inverse()
        path = camera_path(cfg, rng, n)
        intr = Intrinsics(**pinhole_intrinsics(cfg.width, cfg.height, cfg.fovy))
        lut, label_names = _label_lut(env)
        renderer = _FrameRenderer(m, cfg.width, cfg.height, cfg.fovy)

        if tmp.exists():
            shutil.rmtree(tmp)
        for sub in ("frames", "depth", "masks", "objects", "robot"):
            (tmp / sub).mkdir(parents=True)
        entries = []
        visible = {name: 0 for name in label_names.values()}
        visible["robot"] = 0
        for i, T_base_cam in enumerate(tqdm(path.poses, desc=f"scan-sim {task}", unit="frame",
                                            disable=not progress)):
            rgb, depth, seg = renderer.render(d, T_base_cam)
            geom = (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)) & (seg[..., 0] >= 0)
            mask = np.zeros(seg.shape[:2], dtype=np.uint8)
            mask[geom] = lut[seg[..., 0][geom]]
            depth = depth.astype(np.float32)
            depth[(depth <= 0) | (depth > cfg.max_depth) | ~np.isfinite(depth)] = 0.0
            stem = frame_stem(i)
            write_png_atomic(tmp / "frames" / f"{stem}.png", rgb, durable=False)
            write_png_atomic(tmp / "masks" / f"{stem}.png", mask, durable=False)
            if cfg.depth_format == "npy":
                write_npy_atomic(tmp / "depth" / f"{stem}.npy", (depth / sim.scale).astype(np.float32), durable=False)
            else:
                write_png_atomic(tmp / "depth" / f"{stem}.png", np.round(depth * 1000.0).astype(np.uint16), durable=False)
            T_scan_cam = to_scan.apply_pose(T_base_cam)
            entries.append({"image": f"frames/{stem}.png", "transform": np.round(T_scan_cam, 10).tolist()})
            for label, name in label_names.items():
                visible[name] += int((mask == label).any())
            visible["robot"] += int((mask == LABEL_ROBOT).any())

        write_json_atomic(tmp / "cameras.json", {
            "version": 1,
            "axes": "opencv",
            "intrinsics": intr.to_dict(),
            "mask_labels": {str(k): v for k, v in label_names.items()},
            "source": f"twinrl twin scan-sim --task {task} --seed {seed}",
            "frames": entries,
        })
        object_poses_base = {}
        object_poses_scan = {}
        for body in SCAN_OBJECTS:
            mesh = export_body_mesh(m, body)
            mesh.export(tmp / "objects" / f"{body}.obj")
            bid = m.body(body).id
            T = tf.make_transform(d.xpos[bid], tf.quat_from_wxyz(d.xquat[bid]))
            object_poses_base[body] = tf.matrix_to_pose7(T).tolist()
            p, qx = tf.matrix_to_pose(to_scan.apply_pose(T))
            object_poses_scan[body] = {"position": p.tolist(), "quaternion": qx.tolist()}
        write_json_atomic(tmp / "objects" / "poses.json", object_poses_scan)
        urdf = fr3_model.to_urdf(fr3_model.describe(env.fr3))
        (tmp / "robot" / "fr3.urdf").write_text(urdf)
        joints = {name: float(v) for name, v in zip(fr3_model.ARM_JOINTS, q)}
        write_json_atomic(tmp / "robot.json", {"urdf": "robot/fr3.urdf", "base_link": "fr3_link0",
                                               "joint_positions": joints, "gripper_width": width})
        gt = {
            "scan_to_base": sim.to_dict(),
            "task": task,
            "seed": int(seed),
            "object_poses_base": object_poses_base,
            "camera_poses_base": [np.round(T, 10).tolist() for T in path.poses],
            "joint_positions": joints,
            "gripper_width": width,
            "note": "ground truth of a simulated scan: for tests and benchmarks, never read by the pipeline",
        }
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        write_json_atomic(gt_file, gt)
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"scan": str(out), "groundtruth": str(gt_file), "frames": n, "task": task, "seed": int(seed),
            "scale": sim.scale, "frames_with": visible}



def write_preview(scan_root: os.PathLike | str, columns: int = 6, rows: int = 2, out: Optional[Path] = None) -> Path:
    """A contact sheet PNG of a scan (RGB over label masks, evenly spaced frames), written
    to ``<scan>/preview.png`` (ignored by the scan loader)."""
    from .scan import load_scan

    scan = load_scan(scan_root, check_images=False)
    n = min(len(scan.frames), columns * rows)
    picks = np.linspace(0, len(scan.frames) - 1, n).round().astype(int)
    palette = np.array([[0, 0, 0], [90, 160, 255], [255, 80, 60], [80, 220, 90], [250, 220, 60], [200, 90, 220]],
                       dtype=np.uint8)
    tiles = []
    for i in picks:
        f = scan.frames[i]
        rgb = f.rgb()
        mask = f.mask()
        tile = rgb
        if mask is not None:
            overlay = palette[np.minimum(mask, len(palette) - 1)]
            tile = np.concatenate([rgb, (0.5 * rgb + 0.5 * overlay).astype(np.uint8)], axis=0)
        tiles.append(tile)
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((h * rows, w * columns, 3), dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    out = Path(out) if out else Path(scan_root) / "preview.png"
    write_png_atomic(out, sheet)
    return out
