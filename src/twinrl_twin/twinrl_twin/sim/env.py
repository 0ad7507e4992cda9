"""The sim world as a Gym-style environment: FR3 + one task in MuJoCo.

Control: a 7-D action ``[dx, dy, dz, rx, ry, rz, gripper]`` at 10 Hz passes the safety
envelope (:class:`twinrl_bringup.safety.SafetyEnvelope`), becomes a Cartesian TCP target,
damped-least-squares IK turns it into joint targets, and MuJoCo position servos track them
over the substeps of the 0.1 s period. A contact force at the hand above the envelope's
threshold stops the arm (the target snaps to the measured pose).

The ROS backend drives the same world without the delta API: :meth:`SimEnv.set_target`
+ :meth:`SimEnv.advance` + :meth:`SimEnv.robot_state` / :meth:`SimEnv.render_cameras`.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .gl import select_gl_backend

select_gl_backend()

import mujoco  # noqa: E402

from twinrl_bringup import transforms as tf  # noqa: E402
from twinrl_bringup.bridge.backend import RobotState  # noqa: E402
from twinrl_bringup.config import apply_overrides, from_dict, load_yaml, resolve_config_path, to_dict  # noqa: E402
from twinrl_bringup.dataset import command_vector  # noqa: E402
from twinrl_bringup.safety import SafetyEnvelope, SafetyResult, load_safety_config  # noqa: E402

from . import fr3_model  # noqa: E402
from .cameras import CAMERA_NAMES, CameraRig  # noqa: E402
from .config import TASKS, CamerasConfig, load_cameras_config, load_task_config  # noqa: E402
from .control import DLSIK  # noqa: E402
from .grid import REGIONS, WorkspaceGrid  # noqa: E402
from .scene import PERTURBATIONS, build_scene_xml  # noqa: E402
from .tasks import make_task  # noqa: E402

CONTROL_DT = 0.1
DOWN = np.array([1.0, 0.0, 0.0, 0.0])       # TCP pointing down, x along base x (xyzw)


def _pose7(value, what: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected [x, y, z, qx, qy, qz, qw], got {value!r}") from exc
    if v.shape != (7,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{what}: expected 7 finite numbers [x, y, z, qx, qy, qz, qw], got {value!r}")
    if np.linalg.norm(v[3:]) < 1e-6:
        raise ValueError(f"{what}: zero quaternion")
    v[3:] = tf.normalize_quat(v[3:])
    return v


def camera_config(overrides) -> CamerasConfig:
    if not overrides:
        return load_cameras_config()
    if isinstance(overrides, CamerasConfig):
        return overrides
    path = resolve_config_path("cameras")
    data = load_yaml(path)
    items = list(overrides.items()) if isinstance(overrides, dict) else list(overrides)
    return from_dict(apply_overrides(data, items), CamerasConfig, f"{path} (with camera_overrides)")


def reset_arguments(options: Optional[dict], seed: Optional[int], seed_rng, extra: tuple = ()):
    """Check ``reset(seed, options)`` arguments (shared by the sim world and the twin).

    Returns ``(options, region, seed, rng, seed_rng)``: a copy of the options, the region
    ("all" by default), the episode seed (drawn from ``seed_rng`` when None), the episode's
    generator and the env's seed generator (re-seeded when a seed is given, so that a seeded
    reset makes every later unseeded reset reproducible too). ``extra``: option names an env
    accepts beyond configuration, region and cell.
    """
    options = dict(options or {})
    known = ("configuration", "region", "cell", *extra)
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)} (known: {', '.join(known)})")
    region = options.get("region") or "all"
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if seed is None:
        seed = int(seed_rng.integers(0, 2**31 - 1))
    else:
        seed = int(seed)
        seed_rng = np.random.default_rng(seed + 1)
    return options, region, seed, np.random.default_rng(seed), seed_rng


def episode_configuration(task: str, task_obj, grid, config: Optional[dict], rng, region: str, cell,
                          seed: int) -> dict:
    """The initial configuration of an episode: ``config`` as given (checked) or sampled from
    ``grid`` in ``region`` / ``cell``. Shared by the sim world and the kinematic twin."""
    target = task_obj.default_target_pose7()
    if config:
        if not isinstance(config, dict):
            raise ValueError(f"options['configuration'] must be a dict, got {type(config).__name__}")
        if "object_pose" not in config:
            raise ValueError("options['configuration'] needs 'object_pose' [x, y, z, qx, qy, qz, qw]")
        if config.get("task") not in (None, "", task):
            raise ValueError(f"configuration is for task {config.get('task')!r}, this env runs {task!r}")
        obj = _pose7(config["object_pose"], "configuration.object_pose")
        if config.get("target_pose") is not None:
            target = _pose7(config["target_pose"], "configuration.target_pose")
        cell_rc = grid.cell_of(obj[0], obj[1])
        row = int(config.get("cell_row", cell_rc[0] if cell_rc else -1))
        col = int(config.get("cell_col", cell_rc[1] if cell_rc else -1))
        reg = config.get("region")
        if reg is None:
            reg = grid.region_of(row, col) if cell_rc else "ood"
        if reg in (0, 1):
            reg = ("id", "ood")[reg]
        return {"task": task, "object_pose": obj.tolist(), "target_pose": target.tolist(),
                "cell_row": row, "cell_col": col, "region": str(reg), "seed": int(config.get("seed", seed))}
    if cell is not None:
        try:
            cell = (int(cell[0]), int(cell[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"cell must be (row, col), got {cell!r}") from exc
    s = grid.sample(rng, region, cell)
    quat = tf.quat_from_euler("z", s["yaw"])
    obj = [s["x"], s["y"], task_obj.rest_z + 1e-4, *quat]
    return {"task": task, "object_pose": obj, "target_pose": target.tolist(),
            "cell_row": s["row"], "cell_col": s["col"], "region": s["region"], "seed": seed}


class SimEnv:
    """See module doc. Create with :func:`make_env`."""

    metadata = {"render_fps": 10}

    def __init__(self, task: str, render: bool = True, perturbation: Optional[str] = None, seed: int = 0,
                 camera_overrides=None, task_overrides=()):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        self.task = task
        self.task_cfg = load_task_config(task, task_overrides)
        self.task_obj = make_task(self.task_cfg)
        self.grid = WorkspaceGrid(self.task_cfg.grid)
        self.cameras_cfg = camera_config(camera_overrides)
        self.fr3 = fr3_model.load_fr3_config()
        self.render_enabled = bool(render)
        self.perturbation = perturbation
        self.control_dt = CONTROL_DT
        self.time_limit = self.task_cfg.time_limit
        self.safety = SafetyEnvelope(load_safety_config())

        xml = build_scene_xml(self.task_obj, self.cameras_cfg, perturbation, fr3_model.describe(self.fr3))
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.n_substeps = int(round(CONTROL_DT / m.opt.timestep))
        self.arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in fr3_model.ARM_JOINTS])
        self.arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in fr3_model.ARM_JOINTS])
        self.finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in fr3_model.FINGER_JOINTS])
        self.arm_act = np.array([m.actuator(j).id for j in fr3_model.ARM_JOINTS])
        self.grip_act = m.actuator("fr3_gripper").id
        self.tcp_site = m.site("fr3_hand_tcp").id
        hand_bodies = {m.body(n).id for n in ("fr3_hand", "fr3_leftfinger", "fr3_rightfinger")}
        self.hand_geoms = set(np.flatnonzero(np.isin(m.geom_bodyid, list(hand_bodies))).tolist())
        finger_bodies = {m.body(n).id for n in ("fr3_leftfinger", "fr3_rightfinger")}
        self.finger_geoms = set(np.flatnonzero(np.isin(m.geom_bodyid, list(finger_bodies))).tolist())
        robot_root = m.body("fr3_link0").id
        self.robot_geoms = set(np.flatnonzero(m.body_rootid[m.geom_bodyid] == robot_root).tolist())
        self.home = np.asarray(self.fr3.home, dtype=float)
        self.ik = DLSIK(m, "fr3_hand_tcp", self.arm_qpos, self.arm_dof, self.safety.clip_joints, self.home)
        self.task_obj.bind(m, self.data)
        self.rig = CameraRig(m, self.cameras_cfg, perturbation) if self.render_enabled else None

        self._seed_rng = np.random.default_rng(seed)
        self._target_pos = np.zeros(3)
        self._target_quat = DOWN.copy()
        self._gripper = -1.0
        self._q_des = self.home.copy()
        self._steps = 0
        self._configuration: dict = {}
        self._force_stops = 0
        self._force_filtered = np.zeros(3)
        self._last_safety: Optional[SafetyResult] = None
        self._closed = False

    # -- episode -------------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None):
        self._check_open()
        options, region, seed, rng, self._seed_rng = reset_arguments(options, seed, self._seed_rng)
        config = options.get("configuration")
        configuration = self._configuration_from(config, rng, region, options.get("cell"), seed)

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self.arm_qpos] = self.home
        d.qpos[self.finger_qpos] = self.fr3.gripper.finger_travel
        d.ctrl[self.arm_act] = self.home
        d.ctrl[self.grip_act] = self.fr3.gripper.finger_travel
        self.task_obj.reset(np.asarray(configuration["object_pose"]), np.asarray(configuration["target_pose"]))
        mujoco.mj_forward(m, d)
        self._q_des = self.home.copy()
        self._target_pos = d.site_xpos[self.tcp_site].copy()
        self._target_quat = tf.matrix_to_quat(d.site_xmat[self.tcp_site].reshape(3, 3))
        self._gripper = -1.0
        self._steps = 0
        self._force_stops = 0
        self._force_filtered = np.zeros(3)
        self._last_safety = None
        if self.rig is not None:
            self.rig.randomize(rng)
        self.advance(0.1)            # let the object settle on the table
        d.time = 0.0
        self.task_obj.episode_start()
        configuration["object_pose"] = [float(x) for x in self.task_obj.object_pose7()]
        self._configuration = configuration
        return self._observation(), self._info(success=False)

    def _configuration_from(self, config: Optional[dict], rng, region: str, cell, seed: int) -> dict:
        return episode_configuration(self.task, self.task_obj, self.grid, config, rng, region, cell, seed)

    def step(self, action):
        self._check_open()
        result = self.safety.apply(action, self._target_pos, self._target_quat)
        self._last_safety = result
        if result.accepted:
            self._set_target(result.position, result.quaternion, result.gripper)
        self.advance(self.control_dt)
        self._steps += 1
        success = self.task_obj.success(self._fingers_touch())
        cfg = self.task_cfg.reward
        reward = cfg.success if success else 0.0
        if cfg.shaped:
            reward += cfg.distance_weight * self.task_obj.progress()
        terminated = bool(success)
        truncated = bool(self._steps >= self.time_limit and not terminated)
        return self._observation(), float(reward), terminated, truncated, self._info(success)

    # -- direct target API (ROS backend) ------------------------------------------------------
    def set_target(self, position, quaternion_xyzw, gripper: float) -> None:
        """Track a Cartesian TCP target (base frame). The position is clipped into the safety
        box; a non-finite target raises ValueError and leaves the current one in place."""
        self._check_open()
        p = np.asarray(position, dtype=float).reshape(-1)
        q = np.asarray(quaternion_xyzw, dtype=float).reshape(-1)
        g = float(gripper)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"target position must be 3 finite numbers, got {position!r}")
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-6:
            raise ValueError(f"target quaternion must be 4 finite numbers (x, y, z, w), got {quaternion_xyzw!r}")
        if not math.isfinite(g):
            raise ValueError(f"gripper command must be finite, got {gripper!r}")
        self._set_target(self.safety.clip_position(p), tf.normalize_quat(q), float(np.clip(g, -1.0, 1.0)))

    def _set_target(self, position, quaternion, gripper) -> None:
        position = np.asarray(position, dtype=float).copy()
        quaternion = np.asarray(quaternion, dtype=float).copy()
        self._gripper = float(gripper)
        if np.array_equal(position, self._target_pos) and np.array_equal(quaternion, self._target_quat):
            return                      # same target: the joint targets stand
        self._target_pos, self._target_quat = position, quaternion
        self._q_des = self.ik.solve(self._q_des, self._target_pos, self._target_quat, self.data.qpos)

    def hold(self) -> None:
        """Keep the current measured pose."""
        p, q = self.tcp_pose()
        self._set_target(self.safety.clip_position(p), q, self._gripper)

    def advance(self, dt: float) -> None:
        """Step physics by ``dt`` seconds tracking the current target (joint targets ramp over
        the first 80 % of the period); a contact force above the threshold stops the arm."""
        self._check_open()
        m, d = self.model, self.data
        n = max(1, int(round(dt / m.opt.timestep)))
        q_start = d.ctrl[self.arm_act].copy()
        ramp = max(1, int(0.8 * n))
        width = 0.5 * (1.0 - self._gripper) * self.fr3.gripper.finger_travel
        d.ctrl[self.grip_act] = width
        for i in range(n):
            if i % 5 == 0 and i > 0:
                # contact forces of a 2 ms solver are spiky: low-pass them (~10 ms) like a
                # robot's external-force estimate before comparing with the threshold
                self._force_filtered = 0.5 * self._force_filtered + 0.5 * self.external_force()
                if self.safety.force_exceeded(self._force_filtered):
                    self._force_stops += 1
                    self.hold()
                    q_start = d.qpos[self.arm_qpos].copy()
                    ramp = 1
                if i % 10 == 0:
                    self.task_obj.update(self._fingers_touch())
            a = min(1.0, (i + 1) / ramp)
            d.ctrl[self.arm_act] = q_start + a * (self._q_des - q_start)
            mujoco.mj_step(m, d)
        mujoco.mj_forward(m, d)
        self.task_obj.update(self._fingers_touch())

    # -- state ---------------------------------------------------------------------------------
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return d.site_xpos[self.tcp_site].copy(), tf.matrix_to_quat(d.site_xmat[self.tcp_site].reshape(3, 3))

    @property
    def target_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The commanded TCP target (position, quaternion xyzw)."""
        return self._target_pos.copy(), self._target_quat.copy()

    @property
    def joint_targets(self) -> np.ndarray:
        """Joint position targets of the arm servos (from IK, inside the joint limits)."""
        return self._q_des.copy()

    @property
    def gripper_command(self) -> float:
        return self._gripper

    def gripper_width(self) -> float:
        return float(self.data.qpos[self.finger_qpos].sum())

    def external_force(self) -> np.ndarray:
        """Net contact force (N, base frame) that the world exerts on the hand and fingers."""
        m, d = self.model, self.data
        total = np.zeros(3)
        f6 = np.zeros(6)
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            in1, in2 = g1 in self.hand_geoms, g2 in self.hand_geoms
            if in1 == in2 or (g1 in self.robot_geoms and g2 in self.robot_geoms):
                continue
            mujoco.mj_contactForce(m, d, i, f6)
            frame = c.frame.reshape(3, 3)
            f = frame.T @ f6[:3]       # force on geom2 from geom1, world frame
            total += f if in2 else -f
        return total

    def _fingers_touch(self) -> bool:
        d = self.data
        obj = self.task_obj.object_geoms
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if (g1 in self.finger_geoms and g2 in obj) or (g2 in self.finger_geoms and g1 in obj):
                return True
        return False

    def robot_state(self) -> RobotState:
        p, q = self.tcp_pose()
        d = self.data
        return RobotState(stamp=float(d.time), joint_positions=d.qpos[self.arm_qpos].copy(),
                          joint_velocities=d.qvel[self.arm_dof].copy(), tcp_position=p, tcp_quaternion=q,
                          gripper_width=self.gripper_width(), external_force=self.external_force())

    def render_cameras(self, segmentation: bool = False) -> dict:
        """name -> (image, intrinsics {fx, fy, cx, cy, width, height}, 4x4 optical pose in the
        base frame). Needs ``render=True``."""
        self._check_open()
        if self.rig is None:
            raise RuntimeError("this env was made with render=False; make it with render=True for images")
        return self.rig.render(self.data, CAMERA_NAMES, segmentation=segmentation)

    def _observation(self) -> dict:
        d = self.data
        p, q = self.tcp_pose()
        jp = d.qpos[self.arm_qpos].copy()
        jv = d.qvel[self.arm_dof].copy()
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
        if self.rig is not None:
            for name, (img, _, _) in self.rig.render(d).items():
                obs[name] = img
        return obs

    def _info(self, success: bool) -> dict:
        info = {
            "configuration": dict(self._configuration),
            "success": bool(success),
            "safety": self._last_safety,
            "step": self._steps,
            "force_stops": self._force_stops,
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
        from .expert import ScriptedExpert

        return ScriptedExpert(self, **options)

    def close(self) -> None:
        if self.rig is not None:
            self.rig.close()
            self.rig = None
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this env is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(task: str, render: bool = True, perturbation: Optional[str] = None, seed: int = 0,
             camera_overrides=None, task_overrides=()) -> SimEnv:
    """A sim env for ``task`` (one of :data:`TASKS`). ``camera_overrides``: dotted keys of
    config/cameras.yaml, e.g. ``{"wrist.width": 64, "wrist.height": 64}``."""
    return SimEnv(task, render=render, perturbation=perturbation, seed=seed,
                  camera_overrides=camera_overrides, task_overrides=task_overrides)


__all__ = ["SimEnv", "make_env", "TASKS", "CONTROL_DT", "to_dict"]
