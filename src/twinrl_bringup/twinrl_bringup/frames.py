"""Frames (TCP, cameras, twin alignment) and rviz markers (envelope, ID/OOD regions, success map).

Plain logic for the ``frames`` node: which transforms exist and what the markers contain.
Camera optical frames follow REP-103's optical convention (z forward, x right, y down) and are
computed from a camera's position / look-at point / up vector.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from twinrl_bringup.config import ConfigError, load_config, load_yaml, resolve_config_path
from twinrl_bringup.transforms import matrix_to_quat

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass
class StaticFrame:
    parent: str
    child: str
    pose: Pose7


@dataclass
class FramesConfig:
    base_frame: str = "fr3_link0"
    tcp_frame: str = "fr3_hand_tcp"
    tcp_topic: str = "/twinrl/tcp_pose"
    publish_tcp: bool = True
    hand_to_tcp: Pose7 = (0.0, 0.0, 0.1034, 0.0, 0.0, 0.0, 1.0)
    camera_config: str = "cameras"
    static: list[StaticFrame] = field(default_factory=list)
    twin_frame: str = "twin_world"
    twin_alignment: Pose7 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    alignment_topic: str = "/twinrl/twin/alignment"
    markers_topic: str = "/twinrl/markers"
    success_map_topic: str = "/twinrl/success_map"
    marker_rate: float = 1.0


def load_frames_config(path=None, overrides=()) -> FramesConfig:
    return load_config(resolve_config_path(path if path is not None else "frames"), FramesConfig, overrides=overrides)


def lookat_quaternion(position, lookat, up) -> np.ndarray:
    """Quaternion (x, y, z, w) of an optical frame at ``position`` looking at ``lookat``."""
    p, t, u = (np.asarray(v, dtype=float) for v in (position, lookat, up))
    z = t - p
    n = np.linalg.norm(z)
    if n < 1e-9:
        raise ValueError("camera position and look-at point coincide")
    z /= n
    x = np.cross(z, u)        # image right = forward x up ... (right-handed, y down)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("camera up vector is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return matrix_to_quat(np.column_stack([x, y, z]))


def camera_frames(name: str, base_frame: str) -> list[StaticFrame]:
    """Optical frames of the cameras in ``config/<name>.yaml`` (position/lookat/up/parent)."""
    if not name:
        return []
    path = resolve_config_path(name)
    doc = load_yaml(path) or {}
    out = []
    for cam, c in doc.items():
        if not isinstance(c, dict) or not {"position", "lookat"} <= set(c):
            continue
        try:
            q = lookat_quaternion(c["position"], c["lookat"], c.get("up", [0.0, 0.0, 1.0]))
        except (ValueError, TypeError) as exc:
            raise ConfigError(path, cam, str(exc)) from exc
        parent = c.get("parent", "world")
        parent = base_frame if parent == "world" else parent
        child = c.get("frame_id") or f"{cam}_optical_frame"
        out.append(StaticFrame(parent, child, (*[float(v) for v in c["position"]], *[float(v) for v in q])))
    return out


def invert_pose7(p7) -> Pose7:
    from twinrl_bringup.transforms import invert_pose

    p, q = invert_pose(np.asarray(p7[:3], dtype=float), np.asarray(p7[3:], dtype=float))
    return (*[float(v) for v in p], *[float(v) for v in q])


def static_frames(cfg: FramesConfig) -> list[StaticFrame]:
    """Every static transform: hand under the TCP (if publishing the TCP), cameras, extras."""
    frames = []
    if cfg.publish_tcp:
        frames.append(StaticFrame(cfg.tcp_frame, "fr3_hand", invert_pose7(cfg.hand_to_tcp)))
    frames += camera_frames(cfg.camera_config, cfg.base_frame)
    by_child = {f.child: f for f in frames}
    for f in cfg.static:           # explicit entries replace computed ones of the same child
        by_child[f.child] = f
    return list(by_child.values())


@dataclass
class GridInfo:
    rows: int
    cols: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    id_mask: np.ndarray

    def cell_bounds(self, r: int, c: int) -> tuple[float, float, float, float]:
        dx = (self.x_range[1] - self.x_range[0]) / self.rows
        dy = (self.y_range[1] - self.y_range[0]) / self.cols
        x0, y0 = self.x_range[0] + r * dx, self.y_range[0] + c * dy
        return x0, x0 + dx, y0, y0 + dy


def load_grid(task: str) -> Optional[GridInfo]:
    """The task's workspace grid (``config/tasks/<task>.yaml: grid``), or None without one."""
    try:
        path = resolve_config_path(task, "tasks")
    except ConfigError:
        return None
    g = (load_yaml(path) or {}).get("grid")
    if not isinstance(g, dict):
        return None
    rows, cols = int(g["rows"]), int(g["cols"])
    mask = np.zeros((rows, cols), dtype=bool)
    if g.get("id_cells"):
        for r, c in g["id_cells"]:
            mask[r, c] = True
    else:
        r0, r1 = g["id_rows"]
        c0, c1 = g["id_cols"]
        mask[r0:r1 + 1, c0:c1 + 1] = True
    return GridInfo(rows, cols, tuple(g["x_range"]), tuple(g["y_range"]), mask)


def success_color(rate: float) -> tuple[float, float, float, float]:
    """Red (0) -> yellow -> green (1); grey where no trial ran (NaN)."""
    if not np.isfinite(rate):
        return (0.5, 0.5, 0.5, 0.4)
    r = float(np.clip(rate, 0.0, 1.0))
    return (min(1.0, 2.0 * (1.0 - r)), min(1.0, 2.0 * r), 0.0, 0.7)


def build_markers(frame: str, stamp, box_min, box_max, grid: Optional[GridInfo], success=None):
    """visualization_msgs/MarkerArray: envelope box, ID/OOD cells, success map (if given)."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    arr = MarkerArray()

    def marker(ns, mid, mtype):
        m = Marker()
        m.header.frame_id = frame
        m.header.stamp = stamp
        m.ns, m.id, m.type, m.action = ns, mid, mtype, Marker.ADD
        m.pose.orientation.w = 1.0
        return m

    lo, hi = np.asarray(box_min, float), np.asarray(box_max, float)
    box = marker("workspace_envelope", 0, Marker.LINE_LIST)
    box.scale.x = 0.004
    box.color = ColorRGBA(r=1.0, g=0.3, b=0.1, a=0.9)
    corners = [np.array([x, y, z]) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    for i in range(8):
        for j in range(i + 1, 8):
            if np.sum(corners[i] != corners[j]) == 1:   # an edge differs in one coordinate
                box.points += [Point(x=float(corners[i][0]), y=float(corners[i][1]), z=float(corners[i][2])),
                               Point(x=float(corners[j][0]), y=float(corners[j][1]), z=float(corners[j][2]))]
    arr.markers.append(box)

    if grid is not None:
        for region, color, want in (("id_region", (0.1, 0.4, 1.0, 0.35), True),
                                    ("ood_region", (1.0, 0.6, 0.0, 0.25), False)):
            m = marker(region, 0, Marker.CUBE_LIST)
            dx = (grid.x_range[1] - grid.x_range[0]) / grid.rows
            dy = (grid.y_range[1] - grid.y_range[0]) / grid.cols
            m.scale.x, m.scale.y, m.scale.z = dx * 0.95, dy * 0.95, 0.002
            m.color = ColorRGBA(r=color[0], g=color[1], b=color[2], a=color[3])
            for r in range(grid.rows):
                for c in range(grid.cols):
                    if bool(grid.id_mask[r, c]) == want:
                        x0, x1, y0, y1 = grid.cell_bounds(r, c)
                        m.points.append(Point(x=0.5 * (x0 + x1), y=0.5 * (y0 + y1), z=0.001))
            arr.markers.append(m)

    if success is not None and success.rows * success.cols > 0:
        m = marker("success_map", 0, Marker.CUBE_LIST)
        dx = (success.x_max - success.x_min) / success.rows
        dy = (success.y_max - success.y_min) / success.cols
        m.scale.x, m.scale.y, m.scale.z = dx * 0.8, dy * 0.8, 0.01
        rates = list(success.success_rate)
        for r in range(success.rows):
            for c in range(success.cols):
                k = r * success.cols + c
                rate = rates[k] if k < len(rates) else float("nan")
                m.points.append(Point(x=success.x_min + (r + 0.5) * dx, y=success.y_min + (c + 0.5) * dy, z=0.008))
                cr = success_color(rate)
                m.colors.append(ColorRGBA(r=cr[0], g=cr[1], b=cr[2], a=cr[3]))
        arr.markers.append(m)
        label = marker("success_map_label", 0, Marker.TEXT_VIEW_FACING)
        label.pose.position.x = success.x_max + 0.05
        label.pose.position.y = 0.5 * (success.y_min + success.y_max)
        label.pose.position.z = 0.05
        label.scale.z = 0.03
        label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        label.text = f"{success.world} success map ({success.policy_version or 'policy'})"
        arr.markers.append(label)
    return arr
