"""The four tasks: their objects and fixtures (MJCF), episode setup, success and reward.

Every task has one free object (body ``object``) that the gripper manipulates and one static
fixture (body ``target``: plate, slot, holes, whiteboard). Object and fixture poses are in the
base frame ``fr3_link0``; the table top is the plane z = 0.

Besides the MJCF, a task tells the scripted expert how to grasp its object (TCP height above
the object origin, grasp yaw offset and symmetry) and where the object must go
(:meth:`Task.place_goal`).
"""
from __future__ import annotations

import math
from typing import Optional

import mujoco
import numpy as np

from twinrl_bringup import transforms as tf

from .config import TaskConfig


def _v(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def wrap_angle(a: float) -> float:
    return float((a + math.pi) % (2 * math.pi) - math.pi)


def nearest_equivalent(angle: float, reference: float, period: Optional[float]) -> float:
    """The angle equal to ``angle`` modulo ``period`` that is closest to ``reference``."""
    if not period:
        return angle
    k = round((reference - angle) / period)
    return angle + k * period


class Task:
    """Base class; subclasses fill in the geometry and the success test."""

    name = ""
    grasp_yaw_offset = 0.0          # TCP yaw minus object yaw at the grasp
    grasp_symmetry: Optional[float] = math.pi   # object yaw symmetry seen by the gripper
    place_symmetry: Optional[float] = math.pi   # yaw symmetry of object vs target at placement
    release_at_goal = True

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.model: Optional[mujoco.MjModel] = None

    # -- geometry -----------------------------------------------------------------------------
    @property
    def rest_z(self) -> float:
        """Height of the object origin when it rests on the table."""
        return self.cfg.object.size[2] / 2

    @property
    def grasp_dz(self) -> float:
        """TCP height above the object origin at the grasp."""
        return 0.0

    def xml_assets(self) -> str:
        return ""

    def xml_object(self) -> str:
        raise NotImplementedError

    def xml_target(self) -> str:
        raise NotImplementedError

    def xml_bodies(self) -> str:
        t = self.cfg.target
        obj = (f'    <body name="object" pos="0.5 0 {self.rest_z:.6g}">\n'
               f'      <freejoint name="object_free"/>\n{self.xml_object()}\n    </body>')
        quat = tf.quat_to_wxyz(tf.quat_from_euler("z", t.yaw))
        tgt = (f'    <body name="target" pos="{_v(t.position)}" quat="{_v(quat)}">\n'
               f'{self.xml_target()}\n    </body>')
        return obj + "\n" + tgt

    # -- runtime ------------------------------------------------------------------------------
    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self.model, self.data = model, data
        self.object_body = model.body("object").id
        self.target_body = model.body("target").id
        self.object_qpos = model.jnt_qposadr[model.joint("object_free").id]
        self.object_qvel = model.jnt_dofadr[model.joint("object_free").id]
        self.object_geoms = set(np.flatnonzero(model.geom_bodyid == self.object_body).tolist())
        self.target_geoms = set(np.flatnonzero(model.geom_bodyid == self.target_body).tolist())
        self.default_target_pos = model.body_pos[self.target_body].copy()
        self.default_target_quat = model.body_quat[self.target_body].copy()

    def reset(self, object_pose7: np.ndarray, target_pose7: np.ndarray) -> None:
        m, d = self.model, self.data
        m.body_pos[self.target_body] = target_pose7[:3]
        m.body_quat[self.target_body] = tf.quat_to_wxyz(target_pose7[3:])
        d.qpos[self.object_qpos:self.object_qpos + 3] = object_pose7[:3]
        d.qpos[self.object_qpos + 3:self.object_qpos + 7] = tf.quat_to_wxyz(object_pose7[3:])
        d.qvel[self.object_qvel:self.object_qvel + 6] = 0.0

    def default_target_pose7(self) -> np.ndarray:
        t = self.cfg.target
        return np.concatenate([np.asarray(t.position, float), tf.quat_from_euler("z", t.yaw)])

    def object_pose7(self) -> np.ndarray:
        d = self.data
        p = d.xpos[self.object_body].copy()
        q = tf.quat_from_wxyz(d.xquat[self.object_body])
        return np.concatenate([p, q])

    def target_pose7(self) -> np.ndarray:
        d = self.data
        return np.concatenate([d.xpos[self.target_body].copy(), tf.quat_from_wxyz(d.xquat[self.target_body])])

    def object_yaw(self) -> float:
        return tf.yaw_of(self.object_pose7()[3:])

    def target_yaw(self) -> float:
        return tf.yaw_of(self.target_pose7()[3:])

    def update(self, fingers_touch: bool) -> None:
        """Called a few times per control period (tasks with internal state)."""

    def episode_start(self) -> None:
        """Called after the episode's poses are set."""

    def success(self, fingers_touch: bool) -> bool:
        raise NotImplementedError

    def progress(self) -> float:
        """Shaped term in [-inf, 1]: larger is closer to success."""
        goal, _ = self.place_goal()
        return -float(np.linalg.norm(self.object_pose7()[:3] - goal))

    def place_goal(self) -> tuple[np.ndarray, float]:
        """(object position, object yaw) the expert puts the object at (final, resting)."""
        raise NotImplementedError

    def info(self) -> dict:
        return {}


class PickAndPlace(Task):
    """Elongated block (object.size = extents) onto a round plate (target.size[0] = radius,
    target.size[2] = thickness)."""

    name = "pick_and_place"
    place_symmetry = None

    def xml_object(self) -> str:
        o = self.cfg.object
        return (f'      <geom name="object_geom" class="object" type="box" size="{_v(np.asarray(o.size) / 2)}" '
                f'mass="{o.mass}" rgba="{_v(o.rgba)}"/>')

    def xml_target(self) -> str:
        t = self.cfg.target
        return (f'      <geom name="plate" class="fixture" type="cylinder" size="{t.size[0]:.6g} {t.size[2] / 2:.6g}" '
                f'pos="0 0 {t.size[2] / 2:.6g}" rgba="{_v(t.rgba)}"/>\n'
                f'      <geom class="fixture_visual" type="cylinder" size="{t.size[0] * 0.8:.6g} 0.0005" '
                f'pos="0 0 {t.size[2] + 0.0005:.6g}" rgba="0.75 0.75 0.7 1"/>')

    def place_goal(self):
        t = self.target_pose7()
        top = t[2] + self.cfg.target.size[2]
        return np.array([t[0], t[1], top + self.rest_z]), self.object_yaw()

    def success(self, fingers_touch: bool) -> bool:
        p = self.object_pose7()
        t = self.target_pose7()
        s = self.cfg.success
        top = t[2] + self.cfg.target.size[2]
        on_plate = (np.linalg.norm(p[:2] - t[:2]) < s.xy_tolerance
                    and abs(p[2] - (top + self.rest_z)) < s.height_tolerance)
        return bool(on_plate and not fingers_touch)


class InsertHexagon(Task):
    """Hexagonal prism (object.size[0] across flats, object.size[2] height) into a hexagonal
    slot of ``target.clearance`` larger across flats, walls ``target.size[0]`` thick and
    ``target.size[2]`` deep."""

    name = "insert_hexagon"
    grasp_yaw_offset = math.pi / 2
    grasp_symmetry = math.pi / 3
    place_symmetry = math.pi / 3
    release_at_goal = True

    @property
    def grasp_dz(self) -> float:
        return self.cfg.object.size[2] / 2 - 0.015

    def xml_assets(self) -> str:
        o = self.cfg.object
        a = o.size[0] / 2                      # apothem
        r = a / math.cos(math.pi / 6)          # circumradius
        h = o.size[2] / 2
        verts = []
        for z in (-h, h):
            for k in range(6):
                ang = math.pi / 6 + k * math.pi / 3
                verts += [r * math.cos(ang), r * math.sin(ang), z]
        return f'    <mesh name="hexagon" vertex="{_v(verts)}"/>'

    def xml_object(self) -> str:
        o = self.cfg.object
        return (f'      <geom name="object_geom" class="object" type="mesh" mesh="hexagon" mass="{o.mass}" '
                f'rgba="{_v(o.rgba)}"/>')

    def xml_target(self) -> str:
        t = self.cfg.target
        a = self.cfg.object.size[0] / 2 + t.clearance / 2
        wall, depth = t.size[0], t.size[2]
        length = 2 * (a + wall) / math.sqrt(3)
        lines = []
        for k in range(6):
            phi = k * math.pi / 3
            c = (a + wall / 2) * np.array([math.cos(phi), math.sin(phi)])
            quat = tf.quat_to_wxyz(tf.quat_from_euler("z", phi))
            lines.append(f'      <geom class="fixture" type="box" size="{wall / 2:.6g} {length / 2:.6g} {depth / 2:.6g}" '
                         f'pos="{c[0]:.6g} {c[1]:.6g} {depth / 2:.6g}" quat="{_v(quat)}" rgba="{_v(t.rgba)}"/>')
        return "\n".join(lines)

    def place_goal(self):
        t = self.target_pose7()
        yaw = nearest_equivalent(self.target_yaw(), self.object_yaw(), self.place_symmetry)
        return np.array([t[0], t[1], t[2] + self.rest_z]), yaw

    def insertion_depth(self) -> float:
        p = self.object_pose7()
        bottom = p[2] - self.cfg.object.size[2] / 2
        return float(self.target_pose7()[2] + self.cfg.target.size[2] - bottom)

    def success(self, fingers_touch: bool) -> bool:
        p = self.object_pose7()
        t = self.target_pose7()
        s = self.cfg.success
        return bool(np.linalg.norm(p[:2] - t[:2]) < s.xy_tolerance and self.insertion_depth() >= s.insert_depth)

    def info(self) -> dict:
        return {"insertion_depth": self.insertion_depth()}


class InsertTripleColumn(InsertHexagon):
    """A bar (object.size extents) with three columns hanging below it, into a fixture with
    three matching holes (``target.clearance`` wider than the columns, ``target.size[0]``
    walls, ``target.size[2]`` deep)."""

    name = "insert_triple_column"
    grasp_yaw_offset = 0.0
    grasp_symmetry = math.pi
    place_symmetry = math.pi
    column_height = 0.03
    column_width = 0.018
    column_spacing = 0.04

    @property
    def rest_z(self) -> float:
        return self.column_height + self.cfg.object.size[2] / 2

    @property
    def grasp_dz(self) -> float:
        return self.cfg.object.size[2] / 2 - 0.008

    def xml_assets(self) -> str:
        return ""

    def xml_object(self) -> str:
        o = self.cfg.object
        sx, sy, sz = o.size
        ch = self.column_height
        bar_mass = 0.6 * o.mass
        col_mass = 0.4 * o.mass / 3
        lines = [f'      <geom name="object_geom" class="object" type="box" size="{sx / 2:.6g} {sy / 2:.6g} {sz / 2:.6g}" '
                 f'mass="{bar_mass:.6g}" rgba="{_v(o.rgba)}"/>']
        for k in (-1, 0, 1):
            lines.append(f'      <geom class="object" type="box" size="{self.column_width / 2:.6g} {sy / 2:.6g} {ch / 2:.6g}" '
                         f'pos="{k * self.column_spacing:.6g} 0 {-(sz / 2 + ch / 2):.6g}" mass="{col_mass:.6g}" '
                         f'rgba="{_v(o.rgba)}"/>')
        return "\n".join(lines)

    def xml_target(self) -> str:
        t = self.cfg.target
        sy = self.cfg.object.size[1]
        c, wall, depth = t.clearance, t.size[0], t.size[2]
        hx = (self.column_width + c) / 2        # hole half extents
        hy = (sy + c) / 2
        s = self.column_spacing
        outer_x = s + hx + wall
        boxes = [((0.0, hy + wall / 2), (outer_x, wall / 2)), ((0.0, -(hy + wall / 2)), (outer_x, wall / 2)),
                 ((s + hx + wall / 2, 0.0), (wall / 2, hy)), ((-(s + hx + wall / 2), 0.0), (wall / 2, hy))]
        gap = s - 2 * hx
        for k in (-0.5, 0.5):
            boxes.append(((k * s, 0.0), (gap / 2, hy)))
        return "\n".join(
            f'      <geom class="fixture" type="box" size="{h[0]:.6g} {h[1]:.6g} {depth / 2:.6g}" '
            f'pos="{p[0]:.6g} {p[1]:.6g} {depth / 2:.6g}" rgba="{_v(t.rgba)}"/>' for p, h in boxes)

    def insertion_depth(self) -> float:
        p = self.object_pose7()
        bottom = p[2] - self.cfg.object.size[2] / 2 - self.column_height
        return float(self.target_pose7()[2] + self.cfg.target.size[2] - bottom)


class EraseWhiteboard(Task):
    """An eraser (object.size extents) wipes the ink pattern (``pattern``) off a whiteboard
    (target.size extents). A pattern cell is erased when the eraser touches the board while
    the cell centre lies under the eraser's footprint."""

    name = "erase_whiteboard"
    place_symmetry = math.pi
    release_at_goal = False
    margin = 0.025
    wipe_overshoot = 0.015     # m the outer strokes' eraser edge passes beyond the drawn area

    def __init__(self, cfg: TaskConfig):
        super().__init__(cfg)
        rows = cfg.pattern or []
        self.pattern = np.array([[ch == "#" for ch in r] for r in rows], dtype=bool)
        bx, by, _ = cfg.target.size
        self.area = (bx - 2 * self.margin, by - 2 * self.margin)
        nr, nc = self.pattern.shape
        self.cell = (self.area[0] / nr, self.area[1] / nc)
        idx = np.argwhere(self.pattern)
        self.ink_rc = idx
        self.ink_local = np.stack([-self.area[0] / 2 + (idx[:, 0] + 0.5) * self.cell[0],
                                   -self.area[1] / 2 + (idx[:, 1] + 0.5) * self.cell[1]], axis=1)
        self.erased = np.zeros(len(idx), dtype=bool)

    def xml_object(self) -> str:
        o = self.cfg.object
        return (f'      <geom name="object_geom" class="object" type="box" size="{_v(np.asarray(o.size) / 2)}" '
                f'mass="{o.mass}" rgba="{_v(o.rgba)}"/>\n'
                f'      <geom class="object_visual" type="box" size="{o.size[0] / 2 + 0.001:.6g} {o.size[1] / 2 + 0.001:.6g} 0.004" '
                f'pos="0 0 {-o.size[2] / 2 + 0.004:.6g}" rgba="0.9 0.9 0.9 1"/>')

    def xml_target(self) -> str:
        t = self.cfg.target
        bx, by, bz = t.size
        lines = [f'      <geom name="board" class="fixture" type="box" size="{bx / 2:.6g} {by / 2:.6g} {bz / 2:.6g}" '
                 f'pos="0 0 {bz / 2:.6g}" friction="0.1 0.005 0.0001" rgba="{_v(t.rgba)}"/>']
        for i, (x, y) in enumerate(self.ink_local):
            lines.append(f'      <geom name="ink{i}" class="fixture_visual" type="box" '
                         f'size="{self.cell[0] / 2:.6g} {self.cell[1] / 2:.6g} 0.0004" pos="{x:.6g} {y:.6g} {bz + 0.0004:.6g}" '
                         f'rgba="0.1 0.1 0.12 1"/>')
        return "\n".join(lines)

    def bind(self, model, data) -> None:
        super().bind(model, data)
        self.board_geom = model.geom("board").id
        self.object_geom = model.geom("object_geom").id
        self.ink_geoms = np.array([model.geom(f"ink{i}").id for i in range(len(self.ink_local))])
        self.ink_rgba = model.geom_rgba[self.ink_geoms].copy()

    def episode_start(self) -> None:
        self.erased[:] = False
        self.model.geom_rgba[self.ink_geoms] = self.ink_rgba

    def _touching_board(self) -> bool:
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            pair = {int(c.geom1), int(c.geom2)}
            if pair == {self.board_geom, self.object_geom} and c.dist < 1e-3:
                return True
        return False

    def update(self, fingers_touch: bool) -> None:
        if self.erased.all() or not self._touching_board():
            return
        t = self.target_pose7()
        Rt = tf.quat_to_matrix(t[3:])
        ink_world = t[:3] + np.c_[self.ink_local, np.zeros(len(self.ink_local))] @ Rt.T
        o = self.object_pose7()
        Ro = tf.quat_to_matrix(o[3:])
        local = (ink_world - o[:3]) @ Ro
        sx, sy, _ = self.cfg.object.size
        under = (np.abs(local[:, 0]) <= sx / 2) & (np.abs(local[:, 1]) <= sy / 2)
        newly = under & ~self.erased
        if newly.any():
            self.erased |= newly
            self.model.geom_rgba[self.ink_geoms[newly], 3] = 0.0

    def erased_fraction(self) -> float:
        return float(self.erased.mean()) if len(self.erased) else 1.0

    def progress(self) -> float:
        return self.erased_fraction()

    def place_goal(self):
        """The eraser on the board's centre with its long side across the board's x axis, always
        at the same one of the two such headings (board yaw + 90 deg): the one nearer the
        eraser's start yaw flips with that yaw's sign, which lies in the middle of the start
        range, so the turn to the board went +-44..90 deg by the sign and a policy learnt their
        mean. The wrist stays well inside its range (q7 -0.6..1.4 rad over the start yaws)."""
        t = self.target_pose7()
        top = t[2] + self.cfg.target.size[2]
        return np.array([t[0], t[1], top + self.rest_z]), self.target_yaw() + math.pi / 2

    def wipe_path(self) -> list[np.ndarray]:
        """Object positions (base frame) of a back-and-forth wipe covering the pattern area,
        with the eraser's long side across the stroke. The outer strokes reach
        ``wipe_overshoot`` past the area's sides (as a person wipes past the edge of a drawing),
        so a wipe that runs that far off across its strokes still covers the pattern."""
        t = self.target_pose7()
        Rt = tf.quat_to_matrix(t[3:])
        top = t[2] + self.cfg.target.size[2]
        sx = self.cfg.object.size[0]
        ax, ay = self.area
        span = max(0.0, ay + 2 * self.wipe_overshoot - sx)     # between the outer strokes' centres
        n_pass = 1 + math.ceil(span / (0.85 * sx) - 1e-9)      # neighbours overlap by >= 15 %
        ys = np.linspace(-span / 2, span / 2, n_pass)
        pts = []
        xs = (-ax / 2 - 0.005, ax / 2 + 0.005)
        for i, y in enumerate(ys):
            a, b = (xs if i % 2 == 0 else xs[::-1])
            pts += [np.array([a, y]), np.array([b, y])]
        out = []
        for p in pts:
            w = t[:3] + Rt @ np.array([p[0], p[1], 0.0])
            out.append(np.array([w[0], w[1], top + self.rest_z]))
        return out

    def success(self, fingers_touch: bool) -> bool:
        return self.erased_fraction() >= self.cfg.success.erase_fraction

    def info(self) -> dict:
        return {"erased_fraction": self.erased_fraction()}


TASK_CLASSES = {cls.name: cls for cls in (PickAndPlace, InsertHexagon, InsertTripleColumn, EraseWhiteboard)}


def make_task(cfg: TaskConfig) -> Task:
    return TASK_CLASSES[cfg.name](cfg)
