"""The twin seen at the live robot state: camera renders, the twin robot's silhouette, an
overlay of the twin over a live image and the robot-mask IoU (the ``twin`` node's core).

:class:`TwinView` loads a built twin directory (``twinrl twin build``), poses the twin's robot
(the URDF meshes of the twin, posed by the FR3 kinematic tree) at a joint state (7 arm joints
+ gripper width) and renders both twin cameras with :class:`twinrl_twin.render.TwinRenderer`.
The cameras are the project's camera rig (``config/cameras.yaml``; the wrist camera follows
``fr3_hand``), the same rig the sim world renders from and the real cell is calibrated to.

Robot masks: the twin side is a ray-cast silhouette of the posed twin robot
(:func:`twinrl_twin.robot_geometry.silhouette`). The live side must come from the live
camera: :class:`SimRobotMask` gives the sim world's segmentation of its robot geoms at a
joint state (the sim backend is the live world of the sim graph); on a real cell the mask
comes from a segmenter publishing a mono8 mask. Without a live mask the IoU is NaN, never a
guess.

Re-alignment: :meth:`TwinView.realign` re-runs :func:`twinrl_twin.alignment.align_scan` on
the scan recorded in ``twin.json`` and :meth:`TwinView.apply_alignment` swaps the new
``scan -> base`` similarity in: every scan-derived asset (scene points, support surface,
object and fixture poses) is moved by ``new o old^-1``; the robot, defined in the base frame,
stays. The twin directory on disk is not rewritten.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .sim.gl import select_gl_backend

select_gl_backend()

from twinrl_bringup import transforms as tf  # noqa: E402

from .robot_geometry import RobotGeometry, make_intersector, silhouette  # noqa: E402
from .scan import Intrinsics, ScanError, Similarity  # noqa: E402
from .sim import fr3_model  # noqa: E402
from .sim.cameras import CAMERA_NAMES  # noqa: E402
from .sim.env import camera_config  # noqa: E402
from .sim.scene import camera_quat_wxyz  # noqa: E402
from .twin_assets import PointCloud, TwinAssetError, TwinAssets, load_twin  # noqa: E402

__all__ = ["TwinView", "SimRobotMask", "RealignError", "overlay_image", "robot_mask_iou", "JointStateError"]

_GL_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])    # OpenGL camera axes (y up, -z fwd) -> optical


class JointStateError(ValueError):
    """A joint state that cannot pose the robot (wrong length, NaN, negative width)."""


class RealignError(RuntimeError):
    """Re-alignment cannot run (scan gone or unreadable) or failed; the message says why."""


def check_joint_state(joint_positions, gripper_width) -> tuple[np.ndarray, float]:
    q = np.asarray(joint_positions, dtype=float).reshape(-1)
    if q.shape != (7,):
        raise JointStateError(f"expected 7 arm joint positions, got {q.shape[0]}")
    if not np.all(np.isfinite(q)):
        raise JointStateError(f"arm joint positions must be finite, got {q.tolist()}")
    w = float(gripper_width)
    if not math.isfinite(w) or w < 0:
        raise JointStateError(f"gripper width must be finite and >= 0, got {gripper_width}")
    return q, w


def robot_mask_iou(twin_mask: np.ndarray, live_mask: Optional[np.ndarray]) -> float:
    """IoU of the twin and live robot masks; NaN when there is no live mask (or neither mask
    has a robot pixel, where the IoU says nothing)."""
    if live_mask is None:
        return float("nan")
    a, b = np.asarray(twin_mask, bool), np.asarray(live_mask, bool)
    if a.shape != b.shape:
        raise ValueError(f"twin mask {a.shape} and live mask {b.shape} differ in size")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return img[rows][:, cols]


def _edges(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, bool)
    pad = np.pad(m, 1, mode="edge")
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~inner


def overlay_image(live: np.ndarray, twin_mask: np.ndarray, live_mask: Optional[np.ndarray] = None,
                  twin_image: Optional[np.ndarray] = None, alpha: float = 0.35) -> np.ndarray:
    """The twin over the live image, at the live image's size (H, W, 3) uint8.

    The twin render (when given) is blended in at ``alpha``; the twin robot's silhouette is
    tinted and outlined. With a live mask: both = green, twin only = red, live only = blue;
    without: the twin silhouette is tinted orange. Masks of another size are resized
    (nearest) to the live image."""
    live = np.asarray(live)
    if live.ndim != 3 or live.shape[2] != 3 or live.dtype != np.uint8:
        raise ValueError(f"live image must be (H, W, 3) uint8, got {live.shape} {live.dtype}")
    H, W = live.shape[:2]
    out = live.astype(np.float32)
    if twin_image is not None:
        out = (1 - alpha) * out + alpha * resize_nearest(np.asarray(twin_image), H, W).astype(np.float32)
    tm = resize_nearest(np.asarray(twin_mask, bool), H, W)
    col = np.zeros_like(out)
    if live_mask is None:
        tint = tm
        col[tm] = (255, 150, 30)
    else:
        lm = resize_nearest(np.asarray(live_mask, bool), H, W)
        tint = tm | lm
        col[tm & lm] = (60, 220, 90)
        col[tm & ~lm] = (255, 60, 50)
        col[~tm & lm] = (60, 120, 255)
    out[tint] = 0.55 * out[tint] + 0.45 * col[tint]
    out[_edges(tm)] = (255, 255, 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def _moved_assets(assets: TwinAssets, D: Similarity, alignment: dict) -> TwinAssets:
    """``assets`` with every scan-derived part moved by the base-frame correction ``D``."""
    scene = PointCloud(D.apply_points(assets.scene.positions).astype(np.float32), assets.scene.colors,
                       (assets.scene.radii * D.scale).astype(np.float32))
    surface = dataclasses.replace(assets.surface,
                                  vertices=D.apply_points(assets.surface.vertices).astype(np.float32)
                                  if len(assets.surface.vertices) else assets.surface.vertices)

    def pose(p7):
        return tf.matrix_to_pose7(D.apply_pose(tf.pose7_to_matrix(p7)))

    return dataclasses.replace(assets, scene=scene, surface=surface, object_pose=pose(assets.object_pose),
                               fixture_pose=pose(assets.fixture_pose), alignment=alignment)


class TwinView:
    """See the module doc. Rendering and :meth:`apply_alignment` use the OpenGL context: call
    them from one thread (the node's timer); :meth:`realign` (the slow part, no GL) may run
    in any thread."""

    def __init__(self, twin_dir, camera_overrides=None, render_config=None):
        from .render import TwinRenderer, load_render_config

        self.twin_dir = Path(twin_dir)
        if not self.twin_dir.exists():
            raise TwinAssetError(self.twin_dir, "twin directory does not exist (build one with `twinrl twin build`)")
        self.assets: TwinAssets = load_twin(self.twin_dir)
        self.cameras_cfg = camera_config(camera_overrides)
        self.cameras = {n: getattr(self.cameras_cfg, n) for n in CAMERA_NAMES}
        self.geometry = RobotGeometry.from_description()
        poses = self.geometry.link_poses(dict(zip(fr3_model.ARM_JOINTS, np.zeros(7))), 0.0)
        self.links = [n for n in self.assets.robot if n in poses]
        if not self.links:
            raise TwinAssetError(self.twin_dir / "robot_meshes.npz", "no robot link matches the FR3 kinematic tree")
        for n, cam in self.cameras.items():
            if cam.parent != "world" and cam.parent not in poses:
                raise ValueError(f"cameras.{n}.parent: no robot link named {cam.parent!r}")
        self.cam_local = {n: tf.make_transform(c.position, tf.quat_from_wxyz(camera_quat_wxyz(c)))
                          for n, c in self.cameras.items()}
        self.sizes = {n: (c.width, c.height) for n, c in self.cameras.items()}
        self._render_cfg = render_config or load_render_config()
        self._renderer_cls = TwinRenderer
        self.renderer = TwinRenderer(self.assets, self.links, self.sizes, self._render_cfg)
        self.lock = threading.RLock()
        self.alignment_version = 0

    # -- posing ---------------------------------------------------------------------------------
    def link_poses(self, joint_positions, gripper_width: float) -> dict:
        q, w = check_joint_state(joint_positions, gripper_width)
        return self.geometry.link_poses(dict(zip(fr3_model.ARM_JOINTS, q)), w)

    def camera_pose(self, name: str, link_poses: dict) -> np.ndarray:
        """4x4 camera-to-base pose of camera ``name`` (OpenGL axes: y up, looking along -z)."""
        if name not in self.cameras:
            raise KeyError(f"unknown camera {name!r} (known: {list(self.cameras)})")
        parent = self.cameras[name].parent
        T = self.cam_local[name]
        return T if parent == "world" else link_poses[parent] @ T

    def intrinsics(self, name: str) -> Intrinsics:
        c = self.cameras[name]
        f = 0.5 * c.height / math.tan(math.radians(c.fovy) / 2)
        return Intrinsics(f, f, (c.width - 1) / 2.0, (c.height - 1) / 2.0, int(c.width), int(c.height))

    # -- images ---------------------------------------------------------------------------------
    def render(self, joint_positions, gripper_width: float, names=CAMERA_NAMES) -> dict:
        """camera name -> (H, W, 3) uint8 twin image with the robot at the joint state."""
        links = self.link_poses(joint_positions, gripper_width)
        with self.lock:
            a = self.assets
            obj = tf.pose7_to_matrix(a.object_pose)
            fix = tf.pose7_to_matrix(a.fixture_pose)
            out = {}
            for n in names:
                c = self.cameras[n]
                out[n] = self.renderer.render(self.camera_pose(n, links), c.fovy, (c.width, c.height), links, obj,
                                              fix, static_camera=c.parent == "world", camera=n)
        return out

    def robot_mesh(self, link_poses: dict):
        """The twin's robot (its URDF meshes) posed, as one trimesh in the base frame."""
        import trimesh

        parts = []
        for n in self.links:
            m = self.assets.robot[n]
            v = m.vertices.astype(float) @ link_poses[n][:3, :3].T + link_poses[n][:3, 3]
            parts.append(trimesh.Trimesh(v, m.faces, process=False))
        return trimesh.util.concatenate(parts)

    def silhouette(self, name: str, joint_positions, gripper_width: float) -> np.ndarray:
        """(H, W) bool mask of the twin robot in camera ``name`` at the joint state."""
        links = self.link_poses(joint_positions, gripper_width)
        mesh = self.robot_mesh(links)
        T_opt = self.camera_pose(name, links) @ _GL_TO_OPTICAL
        return silhouette(mesh, T_opt, self.intrinsics(name), make_intersector(mesh))

    def compare(self, name: str, joint_positions, gripper_width: float, live: np.ndarray,
                live_mask: Optional[np.ndarray] = None, twin_image: Optional[np.ndarray] = None) -> tuple:
        """(overlay image at the live image's size, robot-mask IoU or NaN) for camera ``name``.
        The IoU is computed at the twin camera's resolution (the live mask is resized to it)."""
        tmask = self.silhouette(name, joint_positions, gripper_width)
        lm = None
        if live_mask is not None:
            lm = np.asarray(live_mask)
            if lm.ndim != 2:
                raise ValueError(f"live mask must be (H, W), got {lm.shape}")
            lm = resize_nearest(lm.astype(bool), *tmask.shape)
        iou = robot_mask_iou(tmask, lm)
        return overlay_image(live, tmask, lm, twin_image), iou

    # -- alignment ------------------------------------------------------------------------------
    @property
    def scan_path(self) -> Optional[Path]:
        s = self.assets.meta.get("scan") if isinstance(self.assets.meta, dict) else None
        return Path(s) if s else None

    @property
    def alignment(self) -> Similarity:
        return Similarity.from_dict(self.assets.alignment, str(self.twin_dir / "twin.json"))

    def realign(self, cfg=None, progress: bool = False) -> Similarity:
        """Re-run alignment on the twin's scan; returns the new ``scan -> base`` similarity
        (not applied: see :meth:`apply_alignment`). Raises :class:`RealignError`."""
        from .alignment import align_scan, load_alignment_config
        from .scan import load_scan

        scan = self.scan_path
        if scan is None:
            raise RealignError(f"{self.twin_dir / 'twin.json'}: records no scan path")
        if not scan.exists():
            raise RealignError(f"scan {scan} (recorded in {self.twin_dir / 'twin.json'}) is gone")
        try:
            loaded = load_scan(scan)
            result = align_scan(loaded, cfg or load_alignment_config(), progress=progress)
        except (ScanError, ValueError, OSError) as exc:
            raise RealignError(f"alignment of {scan} failed: {exc}") from exc
        return result.similarity

    def apply_alignment(self, new: Similarity, source: str = "realign") -> dict:
        """Swap in ``new`` (scan -> base): moves the scan-derived assets and rebuilds the
        renderer. Returns the change (translation_mm, rotation_deg, scale_percent)."""
        from .alignment import similarity_errors

        with self.lock:
            old = self.alignment
            change = similarity_errors(new, old)
            D = Similarity.from_matrix(new.matrix @ old.inverse().matrix)
            assets = _moved_assets(self.assets, D, dict(new.to_dict(), source=source))
            renderer = self._renderer_cls(assets, self.links, self.sizes, self._render_cfg)
            self.renderer.close()
            self.assets, self.renderer = assets, renderer
            self.alignment_version += 1
        return change

    def close(self) -> None:
        with self.lock:
            if self.renderer is not None:
                self.renderer.close()
                self.renderer = None


class SimRobotMask:
    """Robot masks of the sim world's cameras at a joint state (MuJoCo segmentation of the
    robot's geoms): the live robot mask where the live world is the sim backend."""

    def __init__(self, task: str = "pick_and_place", camera_overrides=None):
        import mujoco

        from .sim import make_env

        self._mj = mujoco
        self.env = make_env(task, render=True, camera_overrides=camera_overrides)
        self.robot_geoms = np.array(sorted(self.env.robot_geoms))

    def masks(self, joint_positions, gripper_width: float, names=CAMERA_NAMES) -> dict:
        q, w = check_joint_state(joint_positions, gripper_width)
        env = self.env
        env.data.qpos[env.arm_qpos] = q
        env.data.qpos[env.finger_qpos] = w / 2
        self._mj.mj_kinematics(env.model, env.data)
        self._mj.mj_camlight(env.model, env.data)          # camera poses (the wrist follows the hand)
        out = {}
        for n, (seg, _, _) in env.render_cameras(segmentation=True).items():
            if n in names:
                out[n] = (seg[..., 1] == int(self._mj.mjtObj.mjOBJ_GEOM)) & np.isin(seg[..., 0], self.robot_geoms)
        return out

    def close(self) -> None:
        self.env.close()
