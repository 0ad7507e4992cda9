"""Scripted expert for the four tasks.

It reads privileged state of the sim (object and fixture poses, the commanded TCP target) and
outputs the same 7-D actions as any policy, so its episodes are valid demonstrations. One
phase machine serves every task: approach above the object, descend, close, lift, carry the
object above its goal (using the measured in-hand pose of the object, so grasp offsets are
corrected), lower onto / into the goal, release, retreat. ``erase_whiteboard`` replaces
"release" by a wipe along the task's path with the eraser pressed on the board.

``approach_error`` / ``approach_yaw_error`` make it approach like a person with a SpaceMouse:
the first hover target is off by a random x/y offset (uniform in a disc of that radius, m) and
a random heading error (uniform, +- rad); once there the expert corrects to the true hover pose
(phase "align") before it descends. Its demos then hold corrections from states a learned
policy actually reaches (off the object by its own localisation error), which error-free
demos never show (the DART idea, Laskey et al. 2017, without a noise/label split: every
recorded action is the executed one). 0 (the default) approaches straight.

``action_noise`` (m, std per axis) makes its hand unsteady throughout, as a teleoperator's is:
zero-mean Gaussian noise on every position action except while it waits for the fingers to
close or open. The next action corrects what the noise moved (the expert steers the commanded
target), so the demos visit states off its ideal path, such as an eraser a few millimetres
above the board or beside its stroke, each with the action that returns to it: the states a
policy's own drift leads to, which noise-free demos never show. The noise is part of the
recorded action (as for the approach error), so its mean over the demos is the correction.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.safety import action_towards

from .tasks import EraseWhiteboard, nearest_equivalent

DOWN = tf.Rotation.from_euler("x", math.pi)


def disc_offset(radius: float, rng: np.random.Generator) -> np.ndarray:
    """A horizontal offset (x, y, 0) uniform in a disc of ``radius`` (m): where a hand that
    aims by eye arrives around its mark (the approach error here and in demogen)."""
    r = radius * math.sqrt(rng.uniform())
    phi = rng.uniform(-math.pi, math.pi)
    return np.array([r * math.cos(phi), r * math.sin(phi), 0.0])


def tcp_quat(yaw: float) -> np.ndarray:
    """TCP pointing down, rotated by ``yaw`` about the base z axis (x, y, z, w)."""
    return tf.normalize_quat((tf.Rotation.from_euler("z", yaw) * DOWN).as_quat())


class ScriptedExpert:
    max_step = 0.045          # m per action (the envelope allows 0.05)
    max_rot = 0.22            # rad per action (the envelope allows 0.25)
    hover = 0.09              # m above the grasp / goal before descending
    lift = 0.10               # m lift of the object above its goal height while carrying

    def __init__(self, env, approach_error: float = 0.0, approach_yaw_error: float = 0.0,
                 rng: Optional[np.random.Generator] = None, action_noise: float = 0.0):
        for name, v, top in (("approach_error", approach_error, 0.05), ("approach_yaw_error", approach_yaw_error, 0.5),
                             ("action_noise", action_noise, 0.01)):
            if not (math.isfinite(float(v)) and 0.0 <= float(v) <= top):
                raise ValueError(f"{name} must be in [0, {top}], got {v!r}")
        self.env = env
        self.task = env.task_obj
        self.approach_error = float(approach_error)
        self.approach_yaw_error = float(approach_yaw_error)
        self.action_noise = float(action_noise)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.reset()

    def reset(self) -> None:
        self.approach_offset = np.zeros(3)
        self.approach_yaw = 0.0
        if self.approach_error > 0 or self.approach_yaw_error > 0:
            self.approach_offset = disc_offset(self.approach_error, self.rng)
            self.approach_yaw = float(self.rng.uniform(-1.0, 1.0) * self.approach_yaw_error)
        self.phase = "above"
        self.phase_steps = 0
        self.grasp_yaw: Optional[float] = None
        self.wipe: list = []
        self.wipe_index = 0
        self.lower_z: Optional[float] = None

    # -- helpers -------------------------------------------------------------------------------
    def _goto(self, position, quat, gripper: float, max_step: Optional[float] = None) -> np.ndarray:
        p_cmd, q_cmd = self.env.target_pose
        act = action_towards(p_cmd, q_cmd, position, quat, gripper)
        dp, rv = act[:3], act[3:6]              # views: scaled in place
        limit = self.max_step if max_step is None else max_step
        n = float(np.linalg.norm(dp))
        if n > limit:
            dp *= limit / n
        a = float(np.linalg.norm(rv))
        if a > self.max_rot:
            rv *= self.max_rot / a
        return act

    def _reached(self, position, quat, tol: float, rot_tol: float = 0.03) -> bool:
        p, q = self.env.tcp_pose()
        p_cmd, q_cmd = self.env.target_pose
        # with action noise the commanded target never lands exactly: allow three stds
        return bool(np.linalg.norm(p_cmd - position) < max(1e-4, 3 * self.action_noise) and np.linalg.norm(p - position) < tol
                    and tf.quat_angle(q, quat) < rot_tol)

    def _next(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _tcp_for_object(self, obj_pos, obj_yaw: float) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose that puts the held object at (obj_pos, obj_yaw), from its in-hand pose."""
        p_t, q_t = self.env.tcp_pose()
        o = self.task.object_pose7()
        T_tcp_obj = tf.invert(tf.pose_to_matrix(p_t, q_t)) @ tf.pose_to_matrix(o[:3], o[3:])
        # keep the object's current tilt, change its heading
        q_obj = tf.quat_multiply(tf.quat_from_euler("z", obj_yaw - tf.yaw_of(o[3:])), o[3:])
        T_des = tf.pose_to_matrix(obj_pos, q_obj) @ tf.invert(T_tcp_obj)
        p, q = tf.matrix_to_pose(T_des)
        # the TCP must stay pointing down: keep only its heading
        return p, tcp_quat(tf.yaw_of(q))

    # -- policy --------------------------------------------------------------------------------
    def act(self, obs: dict, info: dict) -> np.ndarray:
        phase = self.phase                 # the phase this action belongs to (_act may move on)
        a = self._act()
        if self.action_noise > 0 and phase not in ("close", "release"):
            dp = a[:3] + self.rng.normal(0.0, self.action_noise, 3)
            n = float(np.linalg.norm(dp))
            a[:3] = dp * min(1.0, self.max_step / max(n, 1e-12))
        return a

    def _act(self) -> np.ndarray:
        self.phase_steps += 1
        task = self.task
        o = task.object_pose7()
        p_cmd, q_cmd = self.env.target_pose
        cur_yaw = tf.yaw_of(q_cmd)

        if self.phase in ("above", "align", "descend"):
            yaw = nearest_equivalent(tf.yaw_of(o[3:]) + task.grasp_yaw_offset, cur_yaw, task.grasp_symmetry)
            self.grasp_yaw = yaw
            q = tcp_quat(yaw)
            grasp = o[:3] + np.array([0.0, 0.0, task.grasp_dz])
            hover = grasp + np.array([0.0, 0.0, self.hover])
            if self.phase == "above":
                straight = not (self.approach_offset.any() or self.approach_yaw)
                if not straight:       # aim off first (see the module doc), then align
                    hover, q = hover + self.approach_offset, tcp_quat(yaw + self.approach_yaw)
                if self._reached(hover, q, 0.01) or self.phase_steps > 40:
                    self._next("descend" if straight else "align")
                return self._goto(hover, q, -1.0)
            if self.phase == "align":
                if self._reached(hover, q, 0.004) or self.phase_steps > 20:
                    self._next("descend")
                return self._goto(hover, q, -1.0, max_step=0.02)
            if self._reached(grasp, q, 0.004) or self.phase_steps > 25:
                self._next("close")
            return self._goto(grasp, q, -1.0, max_step=0.03)

        if self.phase == "close":
            if self.phase_steps >= 5:
                self._next("lift")
            return self._goto(p_cmd, q_cmd, 1.0)

        goal_pos, goal_yaw = task.place_goal()
        carry_z = goal_pos[2] + self.lift
        if self.phase == "lift":
            target = np.array([p_cmd[0], p_cmd[1], max(p_cmd[2], carry_z - o[2] + p_cmd[2])])
            if self._reached(target, q_cmd, 0.015) or self.phase_steps > 20:
                self._next("carry")
            return self._goto(target, q_cmd, 1.0)

        if isinstance(task, EraseWhiteboard):
            return self._erase(o, goal_pos, goal_yaw)

        if self.phase == "carry":
            p, q = self._tcp_for_object(np.array([goal_pos[0], goal_pos[1], carry_z]), goal_yaw)
            if self._reached(p, q, 0.006, 0.02) or self.phase_steps > 60:
                self._next("lower")
                self.lower_z = carry_z
            return self._goto(p, q, 1.0)

        if self.phase == "lower":
            err_xy = float(np.linalg.norm(o[:2] - goal_pos[:2]))
            final = goal_pos[2] + (0.004 if task.name == "pick_and_place" else -0.004)
            entry = goal_pos[2] + task.cfg.target.size[2] + 0.005  # object bottom near the fixture top
            near = self.lower_z < entry + 0.02
            if not near:
                self.lower_z = max(final, self.lower_z - 0.015)
            elif err_xy < 0.001 or task.name == "pick_and_place":
                self.lower_z = max(final, self.lower_z - 0.006)
            p, q = self._tcp_for_object(np.array([goal_pos[0], goal_pos[1], self.lower_z]), goal_yaw)
            settled = self.lower_z <= final and abs(o[2] - final) < 0.003
            done = settled or o[2] < goal_pos[2] + 0.004
            if done or self.phase_steps > 80:
                self._next("release")
            return self._goto(p, q, 1.0, max_step=0.02)

        if self.phase == "release":
            if self.phase_steps >= 4:
                self._next("retreat")
            return self._goto(p_cmd, q_cmd, -1.0)

        # retreat
        return self._goto(p_cmd + np.array([0.0, 0.0, 0.03]), q_cmd, -1.0)

    def _erase(self, o, goal_pos, goal_yaw) -> np.ndarray:
        task: EraseWhiteboard = self.task
        if not self.wipe:
            self.wipe = task.wipe_path()
        press = 0.0
        if self.phase == "carry":
            start = self.wipe[0]
            p, q = self._tcp_for_object(np.array([start[0], start[1], start[2] + self.lift]), goal_yaw)
            if self._reached(p, q, 0.006, 0.02) or self.phase_steps > 60:
                self._next("lower")
            return self._goto(p, q, 1.0)
        if self.phase == "lower":
            start = self.wipe[0]
            p, q = self._tcp_for_object(np.array([start[0], start[1], start[2] - press]), goal_yaw)
            if self._reached(p, q, 0.003, 0.03) or self.phase_steps > 25:
                self._next("wipe")
                self.wipe_index = 1
            near = abs(o[2] - start[2]) < 0.03
            return self._goto(p, q, 1.0, max_step=0.01 if near else 0.03)
        if self.phase == "wipe":
            if self.wipe_index >= len(self.wipe):
                self.wipe_index = 0          # go over the path again until the task ends
            w = self.wipe[self.wipe_index]
            p, q = self._tcp_for_object(np.array([w[0], w[1], w[2] - press]), goal_yaw)
            p_cmd, _ = self.env.target_pose
            if np.linalg.norm(p[:2] - p_cmd[:2]) < 0.005 or self.phase_steps > 15:
                self.wipe_index += 1
                self.phase_steps = 0
            return self._goto(p, q, 1.0, max_step=0.035)
        return self._goto(self.env.target_pose[0], self.env.target_pose[1], 1.0)
