"""Antipodal parallel-jaw grasps on object meshes (FR3 hand), with trimesh.

Sampling: surface points with their outward normals; from each, a ray into the object (along
the inward normal, or inside the friction cone around it) finds the opposite surface. The
pair is a candidate when the width fits the hand and both contact normals lie inside the
friction cone (half angle ``atan(mu)``) of the closing axis. Around each candidate's closing
axis, approach directions are tried; an approach is kept when it is within
``max_approach_angle`` of top-down (the object's ``up`` axis), the two finger boxes (with the
approach sweep) and the palm box do not touch the mesh, and the fingers stay above the
support plane the object stands on. Candidates are scored by antipodality, centredness and
approach angle, de-duplicated and ranked.

Grasp frame (the FR3 TCP convention, ``fr3_hand_tcp``): origin at the grasp centre (midway
between the contacts), ``z`` = approach direction (out of the hand towards the object),
``y`` = closing axis (the fingers move along it), ``x = y cross z``. Poses are in the object
frame (metres); :func:`grasps_in_base` maps them to the robot base through an object pose and
optionally a scan -> base alignment (:class:`twinrl_twin.scan.Similarity`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import load_config, resolve_config_path

__all__ = ["GraspConfig", "Grasp", "load_grasp_config", "sample_grasps", "sample_grasps_file", "grasps_in_base",
           "save_grasps", "load_grasps", "finger_boxes"]


@dataclass
class GraspConfig:
    """Section ``grasps`` of config/scan.yaml."""

    samples: int = 600
    friction: float = 0.5
    cone_samples: int = 1
    max_width: float = 0.08
    min_width: float = 0.002
    approaches: int = 12
    max_approach_angle: float = 90.0
    finger_length: float = 0.045
    finger_width: float = 0.02
    finger_thickness: float = 0.01
    finger_clearance: float = 0.003
    tip_margin: float = 0.008          # fingertip beyond the contact point, along the approach
    palm_depth: float = 0.02
    palm_size: tuple[float, float] = (0.06, 0.2)   # hand body extent along x and y (m)
    sweep: float = 0.05
    support_clearance: float = 0.002
    weights: tuple[float, float, float] = (0.5, 0.25, 0.25)
    top_n: int = 20
    dedup_distance: float = 0.004
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 1 or self.approaches < 1 or self.cone_samples < 1 or self.top_n < 1:
            raise ValueError("samples, approaches, cone_samples and top_n must be >= 1")
        if not 0.0 < self.friction < 10.0:
            raise ValueError(f"friction must be in (0, 10), got {self.friction}")
        if not 0.0 <= self.min_width < self.max_width:
            raise ValueError("need 0 <= min_width < max_width")
        if not 0.0 < self.max_approach_angle <= 180.0:
            raise ValueError("max_approach_angle must be in (0, 180] degrees")
        if min(self.finger_length, self.finger_width, self.finger_thickness) <= 0:
            raise ValueError("finger dimensions must be positive")
        if self.tip_margin < 0 or self.tip_margin >= self.finger_length:
            raise ValueError("tip_margin must be in [0, finger_length)")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative and not all zero")


def load_grasp_config(path: Optional[str] = None, overrides=()) -> GraspConfig:
    return load_config(resolve_config_path(path or "scan"), GraspConfig, overrides, section="grasps")


@dataclass
class Grasp:
    pose: np.ndarray                   # 4x4 TCP pose in the object frame
    width: float                       # distance between the contacts (m)
    score: float
    antipodality: float
    centredness: float
    approach: float
    contacts: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))

    @property
    def position(self) -> np.ndarray:
        return self.pose[:3, 3].copy()

    @property
    def closing_axis(self) -> np.ndarray:
        return self.pose[:3, 1].copy()

    @property
    def approach_direction(self) -> np.ndarray:
        return self.pose[:3, 2].copy()

    def to_dict(self) -> dict:
        return {"pose7": tf.matrix_to_pose7(self.pose).tolist(), "width": self.width, "score": self.score,
                "antipodality": self.antipodality, "centredness": self.centredness, "approach": self.approach,
                "contacts": np.asarray(self.contacts).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Grasp":
        return cls(tf.pose7_to_matrix(d["pose7"]), float(d["width"]), float(d["score"]), float(d["antipodality"]),
                   float(d["centredness"]), float(d["approach"]), np.asarray(d["contacts"], dtype=float))


def _perp_basis(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (M, 3) perpendicular to unit vectors a (M, 3) and to each other."""
    ref = np.where(np.abs(a[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    u = np.cross(a, ref)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(a, u)
    return u, v


def _cone_directions(axis: np.ndarray, half_angle: float, rng: np.random.Generator) -> np.ndarray:
    """Random unit directions inside the cone of ``half_angle`` around each axis (M, 3)."""
    u, v = _perp_basis(axis)
    cos_t = rng.uniform(math.cos(half_angle), 1.0, size=len(axis))
    sin_t = np.sqrt(1.0 - cos_t ** 2)
    phi = rng.uniform(0, 2 * math.pi, size=len(axis))
    return (cos_t[:, None] * axis + sin_t[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v))


def finger_boxes(cfg: GraspConfig, width: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axis-aligned boxes (lo, hi) in the grasp frame occupied by the hand while it approaches
    with the fingers open ``finger_clearance`` beyond a grasp of ``width``: two fingers (swept
    back along the approach) and the palm."""
    tip = cfg.tip_margin
    back = -(cfg.finger_length - tip)
    y_in = width / 2 + cfg.finger_clearance
    fx = cfg.finger_width / 2
    boxes = []
    for sign in (1.0, -1.0):
        ys = sorted((sign * y_in, sign * (y_in + cfg.finger_thickness)))
        boxes.append((np.array([-fx, ys[0], back - cfg.sweep]), np.array([fx, ys[1], tip])))
    px, py = cfg.palm_size[0] / 2, max(cfg.palm_size[1] / 2, y_in + cfg.finger_thickness)
    boxes.append((np.array([-px, -py, back - cfg.palm_depth - cfg.sweep]), np.array([px, py, back])))
    return boxes


def _boxes_array(cfg: GraspConfig, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finger_boxes` for many widths at once: (lo, hi), each (3 boxes, M, 3)."""
    width = np.asarray(width, dtype=float)
    boxes = [finger_boxes(cfg, 0.0)]
    lo = np.repeat(np.stack([b[0] for b in boxes[0]])[:, None, :], len(width), axis=1)
    hi = np.repeat(np.stack([b[1] for b in boxes[0]])[:, None, :], len(width), axis=1)
    half = width / 2
    lo[0, :, 1] += half
    hi[0, :, 1] += half
    lo[1, :, 1] -= half
    hi[1, :, 1] -= half
    py = np.maximum(cfg.palm_size[1] / 2, half + cfg.finger_clearance + cfg.finger_thickness)
    lo[2, :, 1], hi[2, :, 1] = -py, py
    return lo, hi


def _collision_points(mesh, n: int, rng_seed: int) -> np.ndarray:
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=rng_seed)
    return np.concatenate([np.asarray(pts), np.asarray(mesh.vertices)])


def _first_hits(mesh, origins: np.ndarray, dirs: np.ndarray, min_dist: float):
    """Nearest hit beyond ``min_dist`` of each ray: (valid (M,), point (M, 3), face (M,))."""
    locs, ray_idx, tri_idx = mesh.ray.intersects_location(origins, dirs, multiple_hits=True)
    m = len(origins)
    best = np.full(m, np.inf)
    point = np.zeros((m, 3))
    face = np.full(m, -1)
    if len(locs):
        dist = np.einsum("ij,ij->i", locs - origins[ray_idx], dirs[ray_idx])
        ok = dist > min_dist
        for d, r, loc, t in zip(dist[ok], ray_idx[ok], locs[ok], tri_idx[ok]):
            if d < best[r]:
                best[r], point[r], face[r] = d, loc, t
    return np.isfinite(best), point, face


def sample_grasps(mesh, cfg: Optional[GraspConfig] = None, up=(0.0, 0.0, 1.0), support: Optional[float] = None,
                  on_support: bool = True) -> list[Grasp]:
    """Ranked antipodal grasps (best first, at most ``cfg.top_n``) on ``mesh`` (object frame,
    metres). ``up`` is the object-frame direction opposite to gravity; the fingers must stay
    ``support_clearance`` above the support plane ``dot(p, up) = support`` (default: the
    mesh's lowest point along ``up``) unless ``on_support`` is False."""
    import trimesh

    cfg = cfg or GraspConfig()
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("sample_grasps needs a trimesh.Trimesh with triangles")
    rng = np.random.default_rng(cfg.seed)
    up = np.asarray(up, dtype=float)
    up = up / np.linalg.norm(up)
    if on_support and support is None:
        support = float((mesh.vertices @ up).min())
    mu_angle = math.atan(cfg.friction)

    # 1. contact pairs
    p1, faces = trimesh.sample.sample_surface(mesh, cfg.samples, seed=int(rng.integers(0, 2**31 - 1)))
    p1 = np.asarray(p1)
    n1 = mesh.face_normals[faces]
    p1 = np.repeat(p1, cfg.cone_samples, axis=0)
    n1 = np.repeat(n1, cfg.cone_samples, axis=0)
    dirs = -n1 if cfg.cone_samples == 1 else _cone_directions(-n1, mu_angle, rng)
    eps = 1e-6
    hit, p2, f2 = _first_hits(mesh, p1 + eps * dirs, dirs, max(cfg.min_width * 0.5, 1e-5))
    p1, n1, p2, f2 = p1[hit], n1[hit], p2[hit], f2[hit]
    n2 = mesh.face_normals[f2]
    vec = p2 - p1
    width = np.linalg.norm(vec, axis=1)
    ok = (width >= cfg.min_width) & (width <= cfg.max_width)
    axis = vec / np.maximum(width, 1e-12)[:, None]
    ang1 = np.arccos(np.clip(np.einsum("ij,ij->i", -n1, axis), -1, 1))
    ang2 = np.arccos(np.clip(np.einsum("ij,ij->i", n2, axis), -1, 1))
    ok &= (ang1 <= mu_angle) & (ang2 <= mu_angle)
    p1, p2, axis, width = p1[ok], p2[ok], axis[ok], width[ok]
    antipodal = 1.0 - np.maximum(ang1[ok], ang2[ok]) / mu_angle
    if len(p1) == 0:
        return []

    # 2. approach directions around each closing axis
    centre = 0.5 * (p1 + p2)
    u, v = _perp_basis(axis)
    k = cfg.approaches
    theta = (np.arange(k)[None, :] * 2 * math.pi / k) + rng.uniform(0, 2 * math.pi / k, size=(len(p1), 1))
    z = (np.cos(theta)[..., None] * u[:, None, :] + np.sin(theta)[..., None] * v[:, None, :]).reshape(-1, 3)
    pair = np.repeat(np.arange(len(p1)), k)
    cos_app = z @ -up
    app_angle = np.degrees(np.arccos(np.clip(cos_app, -1, 1)))
    keep = app_angle <= cfg.max_approach_angle + 1e-9
    z, pair, cos_app = z[keep], pair[keep], cos_app[keep]
    if len(z) == 0:
        return []
    y = axis[pair]
    x = np.cross(y, z)
    c = centre[pair]
    w = width[pair]

    # 3. finger / palm collisions and support plane
    pts = _collision_points(mesh, 1500, int(rng.integers(0, 2**31 - 1)))
    lo, hi = _boxes_array(cfg, w)                                    # (3, M, 3) each
    free = np.ones(len(z), dtype=bool)
    for start in range(0, len(z), 128):
        sl = slice(start, start + 128)
        rel = pts[None, :, :] - c[sl, None, :]                       # (B, P, 3)
        local = np.stack([np.einsum("bpj,bj->bp", rel, x[sl]), np.einsum("bpj,bj->bp", rel, y[sl]),
                          np.einsum("bpj,bj->bp", rel, z[sl])], axis=-1)
        for b in range(3):
            inside = np.all((local > lo[b, sl, None, :] + 1e-6) & (local < hi[b, sl, None, :] - 1e-6), axis=-1)
            free[sl] &= ~inside.any(axis=1)
    if on_support:
        # lowest point of the two fingers at the final pose (without the sweep) along up
        frame = np.stack([x, y, z], axis=1)                          # (M, 3 axes, 3)
        up_local = frame @ up                                        # components of up in the grasp frame
        for b in range(2):
            flo = lo[b].copy()
            flo[:, 2] = hi[b, :, 2] - cfg.finger_length
            lowest = c @ up + np.minimum(flo * up_local, hi[b] * up_local).sum(axis=1)
            free &= lowest >= support + cfg.support_clearance
    if not free.any():
        return []
    z, y, x, c, w, pair, cos_app = z[free], y[free], x[free], c[free], w[free], pair[free], cos_app[free]

    # 4. scores
    centroid = mesh.center_mass if mesh.is_watertight else mesh.bounds.mean(axis=0)
    half_extent = 0.5 * float(np.max(mesh.extents))
    centred = 1.0 - np.clip(np.linalg.norm(c - centroid, axis=1) / max(half_extent, 1e-9), 0, 1)
    approach = np.clip(cos_app, 0.0, 1.0)
    wts = np.asarray(cfg.weights, dtype=float) / float(np.sum(cfg.weights))
    anti = antipodal[pair]
    score = wts[0] * anti + wts[1] * centred + wts[2] * approach
    order = np.argsort(-score, kind="stable")

    out: list[Grasp] = []
    for i in order:
        dup = False
        for g in out:
            if (np.linalg.norm(g.pose[:3, 3] - c[i]) < cfg.dedup_distance
                    and abs(float(g.pose[:3, 1] @ y[i])) > math.cos(math.radians(10))
                    and float(g.pose[:3, 2] @ z[i]) > math.cos(math.radians(15))):
                dup = True
                break
        if dup:
            continue
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x[i], y[i], z[i]], axis=1)
        pose[:3, 3] = c[i]
        j = pair[i]
        out.append(Grasp(pose, float(w[i]), float(score[i]), float(anti[i]), float(centred[i]), float(approach[i]),
                         np.stack([p1[j], p2[j]])))
        if len(out) >= cfg.top_n:
            break
    return out


def sample_grasps_file(path: os.PathLike | str, cfg: Optional[GraspConfig] = None, **kwargs) -> list[Grasp]:
    """:func:`sample_grasps` on a mesh file; a missing or bad file is a ScanError naming it."""
    from .scan import load_mesh

    return sample_grasps(load_mesh(path), cfg, **kwargs)


def grasps_in_base(grasps, T_object, alignment=None) -> list[np.ndarray]:
    """Base-frame TCP poses (4x4) of object-frame grasps, for an object at pose ``T_object``.
    Without ``alignment`` the object pose is in the base frame; with a ``scan -> base``
    :class:`~twinrl_twin.scan.Similarity` it is in the scan frame (position in scan units;
    the mesh and grasps stay metric)."""
    T = np.asarray(T_object, dtype=float)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError("T_object must be a finite 4x4 pose")
    T_base_obj = alignment.apply_pose(T) if alignment is not None else T
    return [tf.compose(T_base_obj, g.pose if isinstance(g, Grasp) else np.asarray(g, float)) for g in grasps]


def save_grasps(path: os.PathLike | str, grasps: list[Grasp], object_name: str = "", mesh_path: str = "") -> Path:
    from .scan import write_json_atomic

    path = Path(path)
    write_json_atomic(path, {"object": object_name, "mesh": mesh_path, "frame": "object",
                             "convention": "TCP: z approach, y closing axis, origin at the grasp centre",
                             "grasps": [g.to_dict() for g in grasps]})
    return path


def load_grasps(path: os.PathLike | str) -> list[Grasp]:
    import json

    from .scan import ScanError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return [Grasp.from_dict(d) for d in data["grasps"]]
    except FileNotFoundError as exc:
        raise ScanError(path, "grasp file is missing") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ScanError(path, f"malformed grasp file: {exc}") from exc
