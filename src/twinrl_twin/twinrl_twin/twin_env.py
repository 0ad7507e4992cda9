"""The kinematic digital twin as a Gym-style environment, with the sim world's spaces.

Same interface as :class:`twinrl_twin.sim.env.SimEnv`: observation keys ``third_person``
(256x256x3), ``wrist`` (128x128x3), ``proprio`` (22,), ``tcp_pose``, ``joint_positions``,
``joint_velocities``, ``gripper_width``; the 7-D action ``[dx, dy, dz, rx, ry, rz, gripper]``;
``reset(seed, options={configuration|region|cell|in_hand_xy})``; ``step -> obs, reward,
terminated, truncated, info`` with ``success`` and ``configuration``.

No dynamics: the action passes the same safety envelope, the same damped-least-squares IK
(on the sim's robot model, kinematics only: ``mj_kinematics``) gives the joint positions,
and the arm is there at the end of the 0.1 s period. The fingers move at a fixed speed. The
object is attached to the hand while grasped: when the fingers close and a slice of the
object lies between the finger pads, narrower than the opening, the fingers stop at the
object's width, the object is centred between them and follows the TCP (with the reset
option ``in_hand_xy`` it sits at that x / y of the TCP frame instead: where a demonstration
showed it held). Opening releases it and it drops onto the surface under it (table, plate,
fixture top, or the hole of an insertion fixture when its axis is within tolerance). A held
object cannot go below that surface (it slips up in the hand). Success, reward and task state come from the sim's task
definitions (config/tasks/*.yaml, :mod:`twinrl_twin.sim.tasks`); the eraser wipes the cells
under its footprint while its bottom is on the board.

Images come from the twin's own assets (scan Gaussians, scan meshes, URDF meshes) through
:class:`twinrl_twin.render.TwinRenderer`, not from the sim renderer.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .sim.gl import select_gl_backend

select_gl_backend()

import mujoco  # noqa: E402

from twinrl_bringup import transforms as tf  # noqa: E402
from twinrl_bringup.config import load_config, resolve_config_path  # noqa: E402
from twinrl_bringup.dataset import command_vector  # noqa: E402
from twinrl_bringup.safety import SafetyEnvelope, SafetyResult, load_safety_config  # noqa: E402

from .sim import fr3_model  # noqa: E402
from .sim.cameras import CAMERA_NAMES  # noqa: E402
from .sim.config import load_task_config  # noqa: E402
from .sim.control import DLSIK  # noqa: E402
from .sim.env import CONTROL_DT, camera_config, episode_configuration, reset_arguments  # noqa: E402
from .sim.grid import WorkspaceGrid  # noqa: E402
from .sim.scene import build_scene_xml, camera_quat_wxyz  # noqa: E402
from .sim.tasks import EraseWhiteboard, PickAndPlace, make_task, wrap_angle  # noqa: E402
from .twin_assets import TwinAssets, load_twin  # noqa: E402


@dataclass
class InteractionConfig:
    finger_speed: float = 0.1
    grasp_margin: float = 0.004
    min_grasp_width: float = 0.003
    insert_xy_tolerance: float = 0.002
    insert_yaw_tolerance: float = 0.06
    contact_tolerance: float = 0.003
    # Arm tracking of its joint targets, per control step (second order): the joint motion of a
    # step is arm_damping x the previous step's motion + arm_gain x the remaining error.
    # 1.0 / 0.0 is a kinematic arm that reaches every target within the step. One number for
    # every joint or seven, one per joint; a twin whose tracking was fitted to recorded demos
    # (twinrl_twin.arm_tracking, twin.json "arm_tracking") uses its own fit instead.
    arm_gain: Any = 0.42
    arm_damping: Any = 0.18
    # A held object pressed onto its support: the support stops the arm (the TCP stays where
    # the object rests on it), and the contact force, press_stiffness x how far the arm's target
    # lies below that, stops the arm like the robot's force limit (target := measured pose) once
    # it exceeds safety.force_threshold. 0: no contact model, the object slips up in the hand.
    press_stiffness: float = 6000.0

    def validate(self) -> None:
        if self.finger_speed <= 0:
            raise ValueError("finger_speed must be positive")
        gain, damping = arm_gains(self.arm_gain, "arm_gain"), arm_gains(self.arm_damping, "arm_damping")
        if not (np.all(gain > 0.0) and np.all(gain <= 1.0) and np.all(damping >= 0.0) and np.all(damping < 1.0)):
            raise ValueError(f"arm_gain must be in (0, 1] and arm_damping in [0, 1), got {self.arm_gain}, "
                             f"{self.arm_damping}")
        if min(self.grasp_margin, self.min_grasp_width, self.insert_xy_tolerance, self.insert_yaw_tolerance,
               self.contact_tolerance, self.press_stiffness) < 0:
            raise ValueError("tolerances must not be negative")


def arm_gains(value, name: str) -> np.ndarray:
    """One number or seven (per arm joint) -> (7,) floats; anything else is a ValueError naming ``name``."""
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or 7 numbers (one per joint), got {value!r}") from None
    if v.ndim == 0:
        v = np.full(7, float(v))
    if v.shape != (7,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be a number or 7 numbers (one per joint), got {value!r}")
    return v


def load_interaction_config(path=None, overrides=()) -> InteractionConfig:
    return load_config(resolve_config_path(path if path is not None else "twin"), InteractionConfig,
                       overrides=overrides, section="interaction")


def end_of_step_velocity(dq: np.ndarray, dq_prev: np.ndarray, dt: float) -> np.ndarray:
    """Joint velocity at the end of a step from the joint motion of this step and the one before.

    A step's motion over ``dt`` is its mean velocity, i.e. the velocity at mid-step when the
    velocity changes steadily; the end of the step lies half a step beyond, so the velocity is
    extrapolated by half the change between the two mean velocities: 1.5 v_t - 0.5 v_{t-1}.
    The sim world and the robot report the measured velocity at the moment of the observation,
    not the step's mean (which lags it by half a step)."""
    return (1.5 * np.asarray(dq, float) - 0.5 * np.asarray(dq_prev, float)) / dt


def _mat_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (x, y, z, w), w >= 0 (MuJoCo's fast conversion)."""
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(R, dtype=float).reshape(9))
    xyzw = np.array([q[1], q[2], q[3], q[0]])
    return -xyzw if xyzw[3] < 0 else xyzw


def _yaw(R: np.ndarray) -> float:
    """Heading of the x axis on the base x/y plane (as ``transforms.yaw_of``)."""
    return float(np.arctan2(R[1, 0], R[0, 0]))


def _camera_pose(cam) -> np.ndarray:
    """4x4 camera (OpenGL axes) in its parent frame, from the cameras config."""
    return tf.make_transform(cam.position, tf.quat_from_wxyz(camera_quat_wxyz(cam)))



MAX_IN_HAND_XY = 0.02      # m: farther from the TCP than this, an object is not between the pads
TOUCH = 1e-4              # m: a held object closer than this to its support touches it


def _in_hand_xy(value) -> Optional[np.ndarray]:
    """The ``in_hand_xy`` reset option: None, or the held object's origin in the TCP frame's
    x / y (m) to use when the next grasp forms, instead of where the fingers met it (centred
    along the closing axis). A demonstration can show where the cell's physics leaves the
    object in the hand (it slides a little along the pads as they close and lift)."""
    if value is None:
        return None
    try:
        xy = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"reset option in_hand_xy: expected [x, y] in metres, got {value!r}") from None
    if xy.shape != (2,) or not np.all(np.isfinite(xy)):
        raise ValueError(f"reset option in_hand_xy: expected 2 finite values [x, y] in metres, got {value!r}")
    if float(np.max(np.abs(xy))) > MAX_IN_HAND_XY:
        raise ValueError(f"reset option in_hand_xy: {xy.tolist()} m is more than {MAX_IN_HAND_XY} m from the TCP "
                         f"(the object would not be between the finger pads)")
    return xy

class TwinEnv:
    """See module doc. Create with :func:`make_twin_env`."""

    metadata = {"render_fps": 10}

    def __init__(self, twin, render: bool = True, seed: int = 0, camera_overrides=None, task_overrides=(),
                 interaction: Optional[InteractionConfig] = None, render_config=None):
        self.assets: TwinAssets = twin if isinstance(twin, TwinAssets) else load_twin(twin)
        self.task = self.assets.task
        self.task_cfg = load_task_config(self.task, task_overrides)
        self.task_obj = make_task(self.task_cfg)
        self.grid = WorkspaceGrid(self.task_cfg.grid)
        self.cameras_cfg = camera_config(camera_overrides)
        self.fr3 = fr3_model.load_fr3_config()
        self.icfg = interaction or load_interaction_config()
        fit = self.assets.meta.get("arm_tracking")
        if fit:                                  # the twin's own fit (twinrl_twin.arm_tracking)
            self.icfg = dataclasses.replace(self.icfg, arm_gain=list(fit["gain"]), arm_damping=list(fit["damping"]))
        self.icfg.validate()
        self._arm_gain = arm_gains(self.icfg.arm_gain, "arm_gain")
        self._arm_damping = arm_gains(self.icfg.arm_damping, "arm_damping")
        self.control_dt = CONTROL_DT
        self.time_limit = self.task_cfg.time_limit
        self.safety = SafetyEnvelope(load_safety_config())
        self.render_enabled = bool(render)

        xml = build_scene_xml(self.task_obj, self.cameras_cfg, None, fr3_model.describe(self.fr3))
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in fr3_model.ARM_JOINTS])
        self.arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in fr3_model.ARM_JOINTS])
        self.finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in fr3_model.FINGER_JOINTS])
        self.tcp_site = m.site("fr3_hand_tcp").id
        self.home = np.asarray(self.fr3.home, dtype=float)
        self.ik = DLSIK(m, "fr3_hand_tcp", self.arm_qpos, self.arm_dof, self.safety.clip_joints, self.home)
        self.task_obj.bind(m, self.data)
        if isinstance(self.task_obj, EraseWhiteboard):
            # the sim reads MuJoCo contacts; the twin has none: geometric contact instead
            self.task_obj._touching_board = self._eraser_on_board
        self.twin_target = np.asarray(self.assets.fixture_pose, dtype=float)

        g = self.fr3.gripper
        self.max_width = 2 * g.finger_travel
        self.pad_half_x = g.pad_width / 2
        self.pad_z = (0.01 - g.pad_length, 0.01)          # finger pads along the TCP z axis
        # object surface samples (object frame) for the between-the-fingers test
        import trimesh

        om = self.assets.object_mesh
        tm = trimesh.Trimesh(om.vertices, om.faces, process=False)
        samples, _ = trimesh.sample.sample_surface_even(tm, 3000, seed=0)
        self.object_samples = np.vstack([np.asarray(samples, float), om.vertices.astype(float)])
        # fixture footprint radius + object radius: closer than this, a released object lands on the fixture
        self._fixture_reach = float(np.max(np.linalg.norm(self.assets.fixture_mesh.vertices[:, :2], axis=1))
                                    + np.max(np.linalg.norm(om.vertices[:, :2], axis=1)))

        self.renderer = None
        self.link_bodies = {}
        if self.render_enabled:
            from .render import TwinRenderer, load_render_config

            names = [n for n in self.assets.robot if _body_id(m, n) is not None]
            self.link_bodies = {n: _body_id(m, n) for n in names}
            sizes = {n: (getattr(self.cameras_cfg, n).width, getattr(self.cameras_cfg, n).height) for n in CAMERA_NAMES}
            self.renderer = TwinRenderer(self.assets, names, sizes, render_config or load_render_config())
            self.cam_local = {n: _camera_pose(getattr(self.cameras_cfg, n)) for n in CAMERA_NAMES}
            self.cam_parent = {n: getattr(self.cameras_cfg, n).parent for n in CAMERA_NAMES}
            self._ink_points = self._ink_point_index()
            self._ink_drawn = None
            for n, parent in self.cam_parent.items():
                if parent != "world" and _body_id(m, parent) is None:
                    raise ValueError(f"cameras.{n}.parent: no robot body named {parent!r}")

        self._seed_rng = np.random.default_rng(seed)
        self._q = self.home.copy()          # joint positions of the arm
        self._q_des = self.home.copy()      # its joint targets (IK of the commanded TCP target)
        self._dq = np.zeros(7)              # joint motion of the last step
        self._dq_prev = np.zeros(7)         # and of the step before
        self._qvel = np.zeros(7)
        self._width = self.max_width
        self._gripper = -1.0
        self._target_pos = np.zeros(3)
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self._T_obj = np.eye(4)
        self._grasped = False
        self._T_tcp_obj = np.eye(4)
        self._in_hand_xy: Optional[np.ndarray] = None
        self._steps = 0
        self._force_stops = 0               # contact force stops (InteractionConfig.press_stiffness)
        self._configuration: dict = {}
        self._last_safety: Optional[SafetyResult] = None
        self._expert = None
        self._last = (None, None)
        self._closed = False

    # -- episode -------------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None):
        self._check_open()
        options, region, seed, rng, self._seed_rng = reset_arguments(options, seed, self._seed_rng,
                                                                     extra=("in_hand_xy",))
        self._in_hand_xy = _in_hand_xy(options.get("in_hand_xy"))
        config = options.get("configuration")
        # the sim's configuration semantics (grid cells, regions, explicit poses)
        configuration = episode_configuration(self.task, self.task_obj, self.grid, config, rng, region,
                                              options.get("cell"), seed)
        if not (config and isinstance(config, dict) and config.get("target_pose") is not None):
            configuration["target_pose"] = self.twin_target.tolist()    # the scanned fixture

        d = self.data
        self._q = self.home.copy()
        self._q_des = self.home.copy()
        self._dq = np.zeros(7)
        self._dq_prev = np.zeros(7)
        self._qvel = np.zeros(7)
        self._width = self.max_width
        self._gripper = -1.0
        self._grasped = False
        self._steps = 0
        self._force_stops = 0
        self._last_safety = None
        target = np.asarray(configuration["target_pose"], float)
        obj = np.asarray(configuration["object_pose"], float)
        self.task_obj.reset(obj, target)                # sets the fixture pose in the model
        self._T_obj = tf.pose7_to_matrix(obj)
        self._kinematics()
        self._drop_object()
        self._kinematics()
        self._target_pos = d.site_xpos[self.tcp_site].copy()
        self._target_quat = tf.matrix_to_quat(d.site_xmat[self.tcp_site].reshape(3, 3))
        self.task_obj.episode_start()
        configuration["object_pose"] = [float(x) for x in self.task_obj.object_pose7()]
        self._configuration = configuration
        if self._expert is not None:
            self._expert.reset()
        obs, info = self._observation(), self._info(False)
        self._last = (obs, info)
        return obs, info

    def step(self, action):
        self._check_open()
        result = self.safety.apply(action, self._target_pos, self._target_quat)
        self._last_safety = result
        if result.accepted:
            self._gripper = float(result.gripper)
            p, q = np.asarray(result.position, float), np.asarray(result.quaternion, float)
            if not (np.array_equal(p, self._target_pos) and np.array_equal(q, self._target_quat)):
                self._target_pos, self._target_quat = p.copy(), q.copy()
                self._q_des = self.ik.solve(self._q_des, p, q, self.data.qpos)
        self._track_joint_targets()
        self._press_contact()
        self._kinematics()
        self._update_gripper()
        self._kinematics()
        self.task_obj.update(self._grasped)
        self._steps += 1
        success = self.task_obj.success(self._grasped)
        cfg = self.task_cfg.reward
        reward = cfg.success if success else 0.0
        if cfg.shaped:
            reward += cfg.distance_weight * self.task_obj.progress()
        terminated = bool(success)
        truncated = bool(self._steps >= self.time_limit and not terminated)
        obs, info = self._observation(), self._info(success)
        self._last = (obs, info)
        return obs, float(reward), terminated, truncated, info

    # -- kinematic interaction -----------------------------------------------------------------
    def _kinematics(self) -> None:
        d = self.data
        d.qpos[self.arm_qpos] = self._q
        d.qpos[self.finger_qpos] = self._width / 2
        if self._grasped:
            self._T_obj = self._tcp_matrix_at(self._q) @ self._T_tcp_obj
            self._clamp_held_object()
        qa = self.task_obj.object_qpos
        d.qpos[qa:qa + 3] = self._T_obj[:3, 3]
        d.qpos[qa + 3:qa + 7] = tf.quat_to_wxyz(_mat_quat(self._T_obj[:3, :3]))
        mujoco.mj_kinematics(self.model, d)

    def _tcp_matrix_at(self, q) -> np.ndarray:
        p, R = self.ik.forward(q)
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = p
        return T

    def _tcp_matrix(self) -> np.ndarray:
        d = self.data
        T = np.eye(4)
        T[:3, :3] = d.site_xmat[self.tcp_site].reshape(3, 3)
        T[:3, 3] = d.site_xpos[self.tcp_site]
        return T

    def support_z(self, T_obj: np.ndarray) -> float:
        """Height of the object origin when it rests on whatever is under it."""
        task = self.task_obj
        rest = task.rest_z
        t = task.target_pose7()
        tcfg = self.task_cfg.target
        top = t[2] + tcfg.size[2]
        dxy = T_obj[:2, 3] - t[:2]
        dist = float(np.linalg.norm(dxy))
        if isinstance(task, PickAndPlace):
            return top + rest if dist < tcfg.size[0] else rest
        if isinstance(task, EraseWhiteboard):
            local = tf.quat_to_matrix(t[3:])[:2, :2].T @ dxy
            on = abs(local[0]) < tcfg.size[0] / 2 and abs(local[1]) < tcfg.size[1] / 2
            return top + rest if on else rest
        # insertion fixtures: in the hole when the axis and heading match, else on the walls
        yaw_obj = _yaw(T_obj[:3, :3])
        sym = task.place_symmetry or 2 * math.pi
        dyaw = abs(wrap_angle((yaw_obj - tf.yaw_of(t[3:]) + sym / 2) % sym - sym / 2))
        if dist <= tcfg.clearance / 2 + self.icfg.insert_xy_tolerance and dyaw <= self.icfg.insert_yaw_tolerance:
            return t[2] + rest
        return top + rest if dist < self._fixture_reach else rest

    def _press_contact(self) -> None:
        """A held object meeting its support (InteractionConfig.press_stiffness): the arm stops
        on it, and a target far enough below it trips the force stop."""
        k = self.icfg.press_stiffness
        if not self._grasped or k <= 0:
            return
        T_tcp = self._tcp_matrix_at(self._q)
        T_obj = T_tcp @ self._T_tcp_obj
        depth = self.support_z(T_obj) - T_obj[2, 3]
        if depth < -TOUCH:
            return                                   # not touching
        if depth > 0:                                # the support holds the arm up (to the IK's precision)
            q_prev = self._q - self._dq
            self._q = self.ik.solve(self._q, T_tcp[:3, 3] + np.array([0.0, 0.0, depth]), _mat_quat(T_tcp[:3, :3]),
                                    self.data.qpos)
            self._dq = self._q - q_prev
            self._qvel = end_of_step_velocity(self._dq, self._dq_prev, self.control_dt)
        T_goal = self._tcp_matrix_at(self._q_des) @ self._T_tcp_obj
        force = k * (self.support_z(T_goal) - T_goal[2, 3])
        if self.safety.force_exceeded([0.0, 0.0, force]):
            self._force_stops += 1                   # hold where the arm is, as the robot does
            p, R = self.ik.forward(self._q)
            self._target_pos, self._target_quat = p.copy(), _mat_quat(R)
            self._q_des = self._q.copy()
            self._dq = np.zeros(7)
            self._qvel = np.zeros(7)                 # held

    def _clamp_held_object(self) -> None:
        floor = self.support_z(self._T_obj)
        if self._T_obj[2, 3] < floor:
            self._T_obj[2, 3] = floor
            self._T_tcp_obj = tf.invert(self._tcp_matrix_at(self._q)) @ self._T_obj   # slips in the hand

    def _drop_object(self) -> None:
        """Released / placed object: upright at its heading, resting on the surface below it."""
        yaw = _yaw(self._T_obj[:3, :3])
        T = tf.make_transform(self._T_obj[:3, 3], tf.quat_from_euler("z", yaw))
        T[2, 3] = self.support_z(T)
        self._T_obj = T

    def _slice_between_fingers(self, width: float) -> Optional[tuple[float, float]]:
        """(y_min, y_max) in the TCP frame of the object slice between the finger pads, or None."""
        T = tf.invert(self._tcp_matrix()) @ self._T_obj
        pts = self.object_samples @ T[:3, :3].T + T[:3, 3]
        sel = (np.abs(pts[:, 0]) <= self.pad_half_x) & (pts[:, 2] >= self.pad_z[0]) & (pts[:, 2] <= self.pad_z[1])
        if not sel.any():
            return None
        y = pts[sel, 1]
        lo, hi = float(y.min()), float(y.max())
        m = self.icfg.grasp_margin
        if lo < -width / 2 - m or hi > width / 2 + m or hi - lo < self.icfg.min_grasp_width:
            return None                                    # a finger would land on the object
        return lo, hi

    def _update_gripper(self) -> None:
        cmd = (1.0 - self._gripper) / 2 * self.max_width
        step = 2 * self.icfg.finger_speed * self.control_dt
        if self._grasped:
            if cmd > self._width + 1e-4:                   # opening: release
                self._grasped = False
                self._width = min(cmd, self._width + step)
                self._drop_object()
            return
        new = float(np.clip(cmd, self._width - step, self._width + step))
        if new < self._width:
            sl = self._slice_between_fingers(self._width)
            if sl is not None and new <= sl[1] - sl[0]:
                lo, hi = sl
                T_tcp = self._tcp_matrix()
                T_rel = tf.invert(T_tcp) @ self._T_obj
                T_rel[1, 3] -= (lo + hi) / 2                # the closing fingers centre the object
                if self._in_hand_xy is not None:            # where a demonstration showed it held
                    T_rel[:2, 3] = self._in_hand_xy
                self._T_tcp_obj = T_rel
                self._grasped = True
                self._width = hi - lo
                return
        self._width = new

    def _eraser_on_board(self) -> bool:
        t = self.task_obj.target_pose7()
        bottom = self._T_obj[2, 3] - self.task_obj.rest_z
        top = t[2] + self.task_cfg.target.size[2]
        on = self.support_z(self._T_obj) > self.task_obj.rest_z + 1e-9
        return bool(on and bottom <= top + self.icfg.contact_tolerance)

    def _track_joint_targets(self) -> None:
        """One control step of the arm following its joint targets (see InteractionConfig)."""
        q_prev, self._dq_prev = self._q.copy(), self._dq
        self._dq = self._arm_damping * self._dq + self._arm_gain * (self._q_des - self._q)
        self._q = self.safety.clip_joints(self._q + self._dq)
        self._dq = self._q - q_prev
        self._qvel = end_of_step_velocity(self._dq, self._dq_prev, self.control_dt)

    # -- state ---------------------------------------------------------------------------------
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return d.site_xpos[self.tcp_site].copy(), _mat_quat(d.site_xmat[self.tcp_site])

    @property
    def target_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self._target_pos.copy(), self._target_quat.copy()

    @property
    def arm_tracking(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-joint (gain, damping) the arm follows its targets with (InteractionConfig)."""
        return self._arm_gain.copy(), self._arm_damping.copy()

    @property
    def joint_targets(self) -> np.ndarray:
        return self._q_des.copy()

    @property
    def gripper_command(self) -> float:
        return self._gripper

    @property
    def grasped(self) -> bool:
        return self._grasped

    def gripper_width(self) -> float:
        return float(self._width)

    def render_cameras(self) -> dict:
        """camera name -> (H, W, 3) uint8 image of the current state."""
        self._check_open()
        if self.renderer is None:
            raise RuntimeError("this env was made with render=False; make it with render=True for images")
        self._repaint_ink()
        d = self.data
        links = {}
        for n, bid in self.link_bodies.items():
            T = np.eye(4)
            T[:3, :3] = d.xmat[bid].reshape(3, 3)
            T[:3, 3] = d.xpos[bid]
            links[n] = T
        fixture = tf.pose7_to_matrix(self.task_obj.target_pose7())
        out = {}
        for name in CAMERA_NAMES:
            cam = getattr(self.cameras_cfg, name)
            parent = self.cam_parent[name]
            if parent == "world":
                T = self.cam_local[name]
            else:
                bid = self.model.body(parent).id
                Tp = np.eye(4)
                Tp[:3, :3] = d.xmat[bid].reshape(3, 3)
                Tp[:3, 3] = d.xpos[bid]
                T = Tp @ self.cam_local[name]
            out[name] = self.renderer.render(T, cam.fovy, (cam.width, cam.height), links, self._T_obj, fixture,
                                             static_camera=parent == "world", camera=name)
        return out

    def _ink_point_index(self) -> Optional[np.ndarray]:
        """erase_whiteboard: per fixture point, the ink cell it shows (-1: none), so erased
        cells can be repainted in the board's colour."""
        task = self.task_obj
        pts = self.assets.fixture_points.positions
        if not isinstance(task, EraseWhiteboard) or len(pts) == 0 or len(task.ink_local) == 0:
            return None
        top = self.task_cfg.target.size[2]
        d = np.abs(pts[None, :, :2] - task.ink_local[:, None, :])          # (K, N, 2)
        inside = (d[..., 0] <= task.cell[0] / 2) & (d[..., 1] <= task.cell[1] / 2) & (pts[None, :, 2] > top - 0.01)
        idx = np.where(inside.any(axis=0), inside.argmax(axis=0), -1)
        clean = (idx < 0) & (pts[:, 2] > top - 0.01)
        cols = self.assets.fixture_points.colors
        self._board_colour = np.median(cols[clean], axis=0).astype(np.uint8) if clean.any() else np.array(
            [235, 235, 235], np.uint8)
        return idx

    def _repaint_ink(self) -> None:
        if getattr(self, "_ink_points", None) is None:
            return
        erased = self.task_obj.erased.copy()
        if self._ink_drawn is not None and np.array_equal(erased, self._ink_drawn):
            return
        cols = self.assets.fixture_points.colors.copy()
        hit = (self._ink_points >= 0) & erased[np.maximum(self._ink_points, 0)]
        cols[hit] = self._board_colour
        self.renderer.set_fixture_colors(cols)
        self._ink_drawn = erased

    def _observation(self) -> dict:
        p, q = self.tcp_pose()
        jp = self._q.copy()
        jv = self._qvel.copy()
        width = self.gripper_width()
        obs: dict[str, Any] = {
            "proprio": np.concatenate([jp, jv, p, q, [width]]).astype(np.float32),
            "tcp_pose": np.concatenate([p, q]),
            "joint_positions": jp,
            "joint_velocities": jv,
            "gripper_width": width,
            # the commanded target relative to the TCP (twinrl_bringup.dataset.COMMAND_LAYOUT)
            "command": command_vector(p, q, self._target_pos, self._target_quat, self._gripper),
        }
        if self.renderer is not None:
            obs.update(self.render_cameras())
        return obs

    def _info(self, success: bool) -> dict:
        info = {
            "configuration": dict(self._configuration),
            "success": bool(success),
            "safety": self._last_safety,
            "step": self._steps,
            "force_stops": 0,
            "grasped": self._grasped,
            "object_pose": self.task_obj.object_pose7(),
            "target_pose": self.task_obj.target_pose7(),
            "tcp_target": np.concatenate(self.target_pose),
        }
        info.update(self.task_obj.info())
        return info

    # -- misc ----------------------------------------------------------------------------------
    @property
    def configuration(self) -> dict:
        return dict(self._configuration)

    def expert(self, **options):
        """The sim's scripted expert: it only needs poses, which the twin provides."""
        from .sim.expert import ScriptedExpert

        return ScriptedExpert(self, **options)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the latest observation (one expert per env, reset
        with the env); lets vectorised callers drive experts that live in worker processes."""
        if self._expert is None:
            self._expert = self.expert()
        obs, info = self._last
        if obs is None:
            raise RuntimeError("call reset() before expert_action()")
        return self._expert.act(obs, info)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this env is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _body_id(model, name: str) -> Optional[int]:
    try:
        return model.body(name).id
    except KeyError:
        return None


def make_twin_env(twin, render: bool = True, seed: int = 0, camera_overrides=None, task_overrides=(),
                  interaction: Optional[InteractionConfig] = None) -> TwinEnv:
    """A twin env from a twin directory (``twinrl twin build``) or loaded :class:`TwinAssets`."""
    if isinstance(twin, (str, Path)):
        twin = load_twin(twin)
    return TwinEnv(twin, render=render, seed=seed, camera_overrides=camera_overrides,
                   task_overrides=task_overrides, interaction=interaction)


__all__ = ["TwinEnv", "make_twin_env", "InteractionConfig", "load_interaction_config"]
