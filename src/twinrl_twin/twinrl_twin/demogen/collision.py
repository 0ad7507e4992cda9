"""Collision rules of the twin scene for demonstration generation (execution checks and planning).

The kinematic twin has no contact dynamics, so collisions are read from MuJoCo's collision
detection (``mj_collision``) on a private :class:`mujoco.MjData` of the twin's model: the env's
own data is never touched. A contact counts when its geoms penetrate (``dist < 0``, minus a
per-rule tolerance):

* any arm link or hand geom against the table, the fixture or the object (not held): always;
* the finger pads against the object: allowed (``allow_finger_object``);
* the finger pads against the table: allowed while the penetration is below 2 mm;
* the held object against the table or the fixture: allowed within 1 mm (the twin clamps a held
  object onto the surface under it, so sliding over the fixture top is fine; ``state_valid``
  applies the same clamp, ``TwinEnv.support_z``);
* a resting (not held) object against the table / fixture, the fixture on the table and the
  robot against itself are not checked.

:meth:`CollisionChecker.state_valid` applies the same rules to a joint configuration (for the
planners), plus the joint limits and the safety envelope (workspace box, tilt) the executed
actions have to pass.
"""
from __future__ import annotations

from typing import Optional

import mujoco
import numpy as np

from twinrl_bringup import transforms as tf

PAD_TABLE_TOLERANCE = 0.002      # m of finger-pad penetration into the table that is tolerated
HELD_OBJECT_TOLERANCE = 0.003    # m of held-object penetration into the table / fixture tolerated (scan mesh vs model)
CONTACT_TOLERANCE = 1e-6         # numerical noise for everything else ("dist < 0")

_ROBOT, _PAD, _TABLE, _FIXTURE, _OBJECT, _OTHER = range(6)


def _subtree_bodies(model: mujoco.MjModel, root: int) -> set:
    out = {root}
    for b in range(root + 1, model.nbody):
        if int(model.body_parentid[b]) in out:
            out.add(b)
    return out


def _quat_wxyz_from_matrix(R: np.ndarray) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(R, dtype=float).reshape(9))
    return q


class CollisionChecker:
    """Disallowed contacts of the twin scene (see module doc).

    ``check(env)`` reads the env's current state; ``state_valid(q7, width, attached, T_tcp_obj)``
    tests a configuration for the planners. Both use a private MjData."""

    def __init__(self, env, allow_finger_object: bool = True, pad_table_tolerance: float = PAD_TABLE_TOLERANCE,
                 held_object_tolerance: float = HELD_OBJECT_TOLERANCE, envelope: bool = True):
        for name in ("model", "data", "arm_qpos", "finger_qpos", "task_obj", "safety"):
            if not hasattr(env, name):
                raise TypeError(f"CollisionChecker needs a TwinEnv-like env; {type(env).__name__} has no {name!r}")
        if pad_table_tolerance < 0 or held_object_tolerance < 0:
            raise ValueError("collision tolerances must not be negative")
        self.env = env
        self.model = m = env.model
        self.data = mujoco.MjData(m)
        self.allow_finger_object = bool(allow_finger_object)
        self.pad_table_tolerance = float(pad_table_tolerance)
        self.held_object_tolerance = float(held_object_tolerance)
        self.envelope = bool(envelope)
        self.arm_qpos = np.asarray(env.arm_qpos)
        self.finger_qpos = np.asarray(env.finger_qpos)
        self.object_qpos = int(env.task_obj.object_qpos)
        self.tcp_site = m.site("fr3_hand_tcp").id
        self.safety = env.safety

        robot_bodies = _subtree_bodies(m, m.body("fr3_link0").id)
        object_body = m.body("object").id
        target_body = m.body("target").id
        kind = np.full(m.ngeom, _OTHER, dtype=int)
        for g in range(m.ngeom):
            if m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0:
                continue                                        # visual only
            b = int(m.geom_bodyid[g])
            name = m.geom(g).name
            if b in robot_bodies:
                kind[g] = _PAD if name.endswith("finger_pad") else _ROBOT
            elif b == object_body:
                kind[g] = _OBJECT
            elif b == target_body:
                kind[g] = _FIXTURE
            elif b == 0 and name == "table":
                kind[g] = _TABLE
        if not np.any(kind == _TABLE):
            raise ValueError("CollisionChecker: the scene has no collidable geom named 'table'")
        self.kind = kind
        self.names = [m.geom(g).name or m.body(int(m.geom_bodyid[g])).name for g in range(m.ngeom)]
        self._object_T = np.eye(4)
        self.sync(env)

    # -- scene state ---------------------------------------------------------------------------
    def sync(self, env=None) -> None:
        """Copy the env's full state (fixture is on the shared model) into the private data;
        the object's current pose becomes the pose of the not-held object in ``state_valid``."""
        env = env if env is not None else self.env
        self._check_model(env)
        self.data.qpos[:] = env.data.qpos
        qa = self.object_qpos
        self._object_T = tf.pose_to_matrix(env.data.qpos[qa:qa + 3], tf.quat_from_wxyz(env.data.qpos[qa + 3:qa + 7]))

    def set_object_pose(self, T_obj: np.ndarray) -> None:
        """Pose (4x4, base frame) of the not-held object used by ``state_valid``."""
        T = np.asarray(T_obj, dtype=float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"set_object_pose: expected a finite 4x4 matrix, got shape {T.shape}")
        self._object_T = T.copy()

    @property
    def object_pose(self) -> np.ndarray:
        return self._object_T.copy()

    def _check_model(self, env) -> None:
        if env.model is not self.model and env.model.ngeom != self.model.ngeom:
            raise ValueError("CollisionChecker: the env's model is not the one this checker was built for")

    def _set_object(self, T: np.ndarray) -> None:
        qa = self.object_qpos
        self.data.qpos[qa:qa + 3] = T[:3, 3]
        self.data.qpos[qa + 3:qa + 7] = _quat_wxyz_from_matrix(T[:3, :3])

    # -- contacts ------------------------------------------------------------------------------
    def _violations(self, grasped: bool) -> list:
        m, d = self.model, self.data
        mujoco.mj_collision(m, d)
        out = []
        seen = set()
        kind = self.kind
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            k1, k2 = kind[g1], kind[g2]
            if k1 > k2:                         # order: robot, pad, table, fixture, object, other
                g1, g2, k1, k2 = g2, g1, k2, k1
            pen = -float(c.dist)
            bad = False
            if k1 == _ROBOT and k2 in (_TABLE, _FIXTURE, _OBJECT):
                bad = pen > CONTACT_TOLERANCE
            elif k1 == _PAD and k2 == _OBJECT:
                bad = (not self.allow_finger_object) and pen > CONTACT_TOLERANCE
            elif k1 == _PAD and k2 == _TABLE:
                bad = pen >= self.pad_table_tolerance
            elif k1 == _PAD and k2 == _FIXTURE:
                bad = pen > CONTACT_TOLERANCE
            elif grasped and k2 == _OBJECT and k1 in (_TABLE, _FIXTURE):
                bad = pen > self.held_object_tolerance
            if bad:
                pair = (self.names[g1], self.names[g2])
                if pair not in seen:
                    seen.add(pair)
                    out.append(pair)
        return out

    def check(self, env=None) -> list[tuple[str, str]]:
        """Disallowed contacts (name pairs, robot / held side first) in the env's current state."""
        env = env if env is not None else self.env
        self._check_model(env)
        self.data.qpos[:] = env.data.qpos
        mujoco.mj_kinematics(self.model, self.data)
        return self._violations(bool(getattr(env, "grasped", False)))

    def contacts_at(self, q7, width: float, attached: bool, T_tcp_obj: Optional[np.ndarray] = None) -> list:
        """Disallowed contacts of a configuration (no limit / envelope checks)."""
        q = np.asarray(q7, dtype=float).reshape(-1)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ValueError(f"contacts_at: q7 must be 7 finite joint positions, got {q.tolist()}")
        self._pose_configuration(q, width, attached, T_tcp_obj)
        return self._violations(bool(attached))

    def _pose_configuration(self, q, width, attached, T_tcp_obj) -> None:
        m, d = self.model, self.data
        d.qpos[self.arm_qpos] = q
        d.qpos[self.finger_qpos] = float(width) / 2
        if attached:
            if T_tcp_obj is None:
                if not getattr(self.env, "grasped", False):
                    raise ValueError("state_valid: attached=True needs T_tcp_obj (the env holds no object)")
                T_tcp_obj = self.env._T_tcp_obj
            mujoco.mj_kinematics(m, d)
            T_tcp = np.eye(4)
            T_tcp[:3, :3] = d.site_xmat[self.tcp_site].reshape(3, 3)
            T_tcp[:3, 3] = d.site_xpos[self.tcp_site]
            T_obj = T_tcp @ np.asarray(T_tcp_obj, dtype=float)
            support = getattr(self.env, "support_z", None)
            if support is not None:                 # the twin keeps a held object above the surface
                T_obj[2, 3] = max(T_obj[2, 3], support(T_obj))
            self._set_object(T_obj)
        else:
            self._set_object(self._object_T)
        mujoco.mj_kinematics(m, d)

    def tcp_pose_at(self, q7) -> tuple[np.ndarray, np.ndarray]:
        """(position, quaternion xyzw) of the TCP at joint positions ``q7``."""
        d = self.data
        d.qpos[self.arm_qpos] = np.asarray(q7, dtype=float)
        mujoco.mj_kinematics(self.model, d)
        return d.site_xpos[self.tcp_site].copy(), tf.matrix_to_quat(d.site_xmat[self.tcp_site].reshape(3, 3))

    def state_valid(self, q7, width: float, attached: bool, T_tcp_obj: Optional[np.ndarray] = None) -> bool:
        """True when the configuration is within the joint limits, its TCP inside the safety
        envelope (workspace box, tilt) and it has no disallowed contact."""
        q = np.asarray(q7, dtype=float).reshape(-1)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            return False
        if not self.safety.joints_within_limits(q):
            return False
        self._pose_configuration(q, width, attached, T_tcp_obj)
        if self.envelope:
            d = self.data
            if not self.safety.contains(d.site_xpos[self.tcp_site], tol=1e-4):
                return False
            R = d.site_xmat[self.tcp_site]
            # tilt: angle between the TCP z axis (third column) and straight down
            if np.arccos(np.clip(-R[8], -1.0, 1.0)) > self.safety.cfg.max_tilt + 1e-6:
                return False
        return not self._violations(bool(attached))


__all__ = ["CollisionChecker", "PAD_TABLE_TOLERANCE", "HELD_OBJECT_TOLERANCE"]
