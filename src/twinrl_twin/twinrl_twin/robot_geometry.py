"""The robot's surface at a joint configuration, from its URDF: posed triangle meshes, surface
samples and binary silhouettes (ray cast) in pinhole views.

:class:`RobotGeometry` reads a URDF's kinematic tree (fixed, revolute, continuous and
prismatic joints) and the ``visual`` geometry of its links (box, cylinder, sphere, mesh
files). :meth:`RobotGeometry.from_description` builds the same structure from the project's
FR3 description (``twinrl_twin.sim.fr3_model``), whose capsules the generated URDF can only
approximate by cylinders. All lengths are metres in the base link's frame.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf

__all__ = ["RobotGeometryError", "RobotGeometry", "description_meshes", "silhouette", "make_intersector"]


class RobotGeometryError(ValueError):
    """A robot description cannot be read or posed. The message names the file or joint."""


@dataclass
class _Joint:
    name: str
    kind: str                   # fixed | revolute | continuous | prismatic
    parent: str
    child: str
    origin: np.ndarray          # 4x4 parent -> joint frame at q = 0
    axis: np.ndarray
    mimic: Optional[tuple[str, float, float]] = None   # (joint, multiplier, offset)


@dataclass
class RobotGeometry:
    """Kinematic tree plus per-link meshes (in the link frame)."""

    name: str
    base_link: str
    joints: list[_Joint]
    link_meshes: dict = field(default_factory=dict)      # link name -> trimesh.Trimesh
    source: str = ""

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_urdf(cls, path: os.PathLike | str, base_link: Optional[str] = None) -> "RobotGeometry":
        import trimesh

        path = Path(path)
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise RobotGeometryError(f"{path}: cannot read URDF: {exc}") from exc
        if root.tag != "robot":
            raise RobotGeometryError(f"{path}: root element is <{root.tag}>, expected <robot>")
        meshes = {}
        for link in root.findall("link"):
            parts = []
            for vis in link.findall("visual"):
                T = _origin(vis.find("origin"))
                geom = vis.find("geometry")
                if geom is None or len(geom) == 0:
                    continue
                g = geom[0]
                try:
                    if g.tag == "box":
                        m = trimesh.creation.box(extents=_floats(g.get("size"), 3))
                    elif g.tag == "cylinder":
                        m = trimesh.creation.cylinder(radius=float(g.get("radius")), height=float(g.get("length")),
                                                      sections=48)
                    elif g.tag == "sphere":
                        m = trimesh.creation.icosphere(subdivisions=3, radius=float(g.get("radius")))
                    elif g.tag == "mesh":
                        fn = g.get("filename", "")
                        if fn.startswith("package://") or fn.startswith("file://"):
                            raise RobotGeometryError(f"{path}: link {link.get('name')}: mesh {fn!r} needs a ROS "
                                                     "package path; give the URDF with file-relative mesh paths")
                        m = trimesh.load(path.parent / fn, force="mesh")
                        if g.get("scale"):
                            m.apply_scale(_floats(g.get("scale"), 3))
                    else:
                        continue
                except (TypeError, ValueError) as exc:
                    raise RobotGeometryError(f"{path}: link {link.get('name')}: bad <{g.tag}>: {exc}") from exc
                m.apply_transform(T)
                parts.append(m)
            if parts:
                meshes[link.get("name")] = trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]
        joints = []
        for j in root.findall("joint"):
            kind = j.get("type", "")
            if kind not in ("fixed", "revolute", "continuous", "prismatic"):
                raise RobotGeometryError(f"{path}: joint {j.get('name')}: type {kind!r} is not supported")
            axis_el = j.find("axis")
            axis = _floats(axis_el.get("xyz"), 3) if axis_el is not None else np.array([1.0, 0.0, 0.0])
            mim = j.find("mimic")
            mimic = None if mim is None else (mim.get("joint"), float(mim.get("multiplier", 1.0)),
                                              float(mim.get("offset", 0.0)))
            joints.append(_Joint(j.get("name"), kind, j.find("parent").get("link"), j.find("child").get("link"),
                                 _origin(j.find("origin")), axis / max(np.linalg.norm(axis), 1e-12), mimic))
        children = {j.child for j in joints}
        roots = [lk.get("name") for lk in root.findall("link") if lk.get("name") not in children]
        base = base_link or (roots[0] if roots else None)
        if base is None:
            raise RobotGeometryError(f"{path}: no root link")
        if not meshes:
            raise RobotGeometryError(f"{path}: no link has visual geometry")
        return cls(root.get("name", ""), base, _ordered(joints, base), meshes, str(path))

    @classmethod
    def from_description(cls, desc=None) -> "RobotGeometry":
        """The project's FR3 description (capsules and boxes, exactly as the sim has them)."""
        import trimesh

        from .sim import fr3_model

        desc = desc if desc is not None else fr3_model.describe()
        meshes = {}
        for name, parts in description_meshes(desc).items():
            parts = [m for m, _ in parts]
            meshes[name] = trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]
        joints = []
        for j in desc.joints:
            mimic = (j.mimic, 1.0, 0.0) if j.mimic else None
            joints.append(_Joint(j.name, j.kind, j.parent, j.child, tf.make_transform(j.pos, tf.quat_to_matrix(j.quat)),
                                 np.asarray(j.axis, float), mimic))
        return cls(desc.name, "fr3_link0", _ordered(joints, "fr3_link0"), meshes, "twinrl_twin.sim.fr3_model")

    # -- posing ---------------------------------------------------------------------------------
    def joint_names(self, movable: bool = True) -> list[str]:
        return [j.name for j in self.joints if not movable or j.kind != "fixed"]

    def link_poses(self, joint_positions: dict[str, float], gripper_width: Optional[float] = None) -> dict:
        """Base-frame 4x4 pose of every link. Prismatic finger joints that are not given take
        ``gripper_width / 2`` (parallel gripper); any other missing movable joint is an error."""
        q = {k: float(v) for k, v in joint_positions.items()}
        poses = {self.base_link: np.eye(4)}
        for j in self.joints:
            if j.parent not in poses:
                continue
            T = poses[j.parent] @ j.origin
            if j.kind != "fixed":
                if j.name in q:
                    v = q[j.name]
                elif j.mimic is not None and j.mimic[0] in q:
                    v = j.mimic[1] * q[j.mimic[0]] + j.mimic[2]
                elif j.kind == "prismatic" and gripper_width is not None:
                    v = gripper_width / 2.0
                else:
                    raise RobotGeometryError(f"{self.source}: no position for joint {j.name!r}")
                if not math.isfinite(v):
                    raise RobotGeometryError(f"{self.source}: joint {j.name!r} position is not finite")
                q[j.name] = v
                if j.kind == "prismatic":
                    T = T @ tf.make_transform(j.axis * v)
                else:
                    T = T @ tf.make_transform(rotation=tf.Rotation.from_rotvec(j.axis * v).as_matrix())
            poses[j.child] = T
        return poses

    def mesh(self, joint_positions: dict[str, float], gripper_width: Optional[float] = None):
        """The whole robot as one trimesh in the base frame."""
        import trimesh

        poses = self.link_poses(joint_positions, gripper_width)
        parts = []
        for name, m in self.link_meshes.items():
            if name in poses:
                mm = m.copy()
                mm.apply_transform(poses[name])
                parts.append(mm)
        return trimesh.util.concatenate(parts)

    def sample_surface(self, joint_positions: dict[str, float], gripper_width: Optional[float], n: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` area-uniform surface samples (base frame) and their outward normals."""
        import trimesh

        mesh = self.mesh(joint_positions, gripper_width)
        pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
        return np.asarray(pts), np.asarray(mesh.face_normals[face])


def description_meshes(desc=None, sections: int = 32) -> dict:
    """Per link of the project's FR3 description (``twinrl_twin.sim.fr3_model``): its geoms as
    (trimesh in the link frame, rgba) pairs; capsules are true capsules with ``sections`` facets
    around the axis (the generated URDF can only approximate them by flat-ended cylinders)."""
    import trimesh

    from .sim import fr3_model

    desc = desc if desc is not None else fr3_model.describe()
    out = {}
    for link in desc.links:
        parts = []
        for g in link.geoms:
            if g.kind == "box":
                m = trimesh.creation.box(extents=2 * np.asarray(g.size))
                m.apply_transform(tf.make_transform(g.pos, tf.quat_to_matrix(g.quat)))
            else:
                a, b = np.asarray(g.fromto[:3]), np.asarray(g.fromto[3:])
                L = float(np.linalg.norm(b - a))
                m = trimesh.creation.capsule(height=L, radius=g.size[0], count=[sections, max(sections // 2, 4)])
                R = _z_to((b - a) / L) if L > 1e-12 else np.eye(3)
                m.apply_transform(tf.make_transform((a + b) / 2, R))
            parts.append((m, tuple(g.rgba)))
        if parts:
            out[link.name] = parts
    return out


def silhouette(mesh, T_base_camera: np.ndarray, intrinsics, intersector=None) -> np.ndarray:
    """(H, W) bool mask of the pixels whose ray (through the pixel centre at integer
    coordinates, OpenCV optical axes) hits ``mesh``. ``intersector``: a reusable
    ``trimesh.ray`` intersector of ``mesh`` (built when not given)."""
    H, W = int(intrinsics.height), int(intrinsics.width)
    v, u = np.mgrid[0:H, 0:W]
    d = np.stack([(u.ravel() - intrinsics.cx) / intrinsics.fx, (v.ravel() - intrinsics.cy) / intrinsics.fy,
                  np.ones(H * W)], axis=1)
    R, t = T_base_camera[:3, :3], T_base_camera[:3, 3]
    dirs = d @ R.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(t, dirs.shape)
    if intersector is None:
        intersector = make_intersector(mesh)
    hit = intersector.intersects_any(origins, dirs)
    return hit.reshape(H, W)


def _has_embree() -> bool:
    try:
        import embreex  # noqa: F401
        return True
    except Exception:
        return False


def make_intersector(mesh):
    """A ray intersector for :func:`silhouette` (embree when available)."""
    import trimesh

    if _has_embree():
        return trimesh.ray.ray_pyembree.RayMeshIntersector(mesh)
    return trimesh.ray.ray_triangle.RayMeshIntersector(mesh)


def _z_to(u: np.ndarray) -> np.ndarray:
    """A rotation taking +z to the unit vector ``u``."""
    z = np.array([0.0, 0.0, 1.0])
    c = np.cross(z, u)
    s = np.linalg.norm(c)
    if s < 1e-12:
        return np.eye(3) if u[2] > 0 else np.diag([1.0, -1.0, -1.0])
    return tf.Rotation.from_rotvec(c / s * math.atan2(s, float(u @ z))).as_matrix()


def _floats(text, n: int) -> np.ndarray:
    vals = np.array([float(x) for x in (text or "").split()])
    if len(vals) != n or not np.all(np.isfinite(vals)):
        raise ValueError(f"expected {n} finite numbers, got {text!r}")
    return vals


def _origin(el) -> np.ndarray:
    if el is None:
        return np.eye(4)
    xyz = _floats(el.get("xyz", "0 0 0"), 3)
    rpy = _floats(el.get("rpy", "0 0 0"), 3)
    # URDF rpy: fixed-axis roll about x, then pitch about y, then yaw about z
    return tf.make_transform(xyz, tf.Rotation.from_euler("xyz", rpy).as_matrix())


def _ordered(joints: list[_Joint], base: str) -> list[_Joint]:
    """Joints in parent-before-child order from ``base``."""
    by_parent: dict[str, list[_Joint]] = {}
    for j in joints:
        by_parent.setdefault(j.parent, []).append(j)
    out, stack = [], [base]
    while stack:
        link = stack.pop()
        for j in by_parent.get(link, []):
            out.append(j)
            stack.append(j.child)
    return out
