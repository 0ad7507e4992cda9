"""fr3_bridge backend ``sim``: the MuJoCo sim world behind the robot and camera interfaces.

:class:`SimBackend` implements :class:`twinrl_bringup.bridge.backend.Backend` over
:class:`twinrl_twin.sim.env.SimEnv` through its direct-target API. fr3_bridge owns safety and
sends absolute Cartesian targets that already passed the envelope; this backend only tracks
them (``command``), holds, steps physics by the bridge's loop period (``tick``), renders the
cameras, resets episodes and reports the task signal the sim can detect
(``world_status``: reward, success, and in ``extra`` the object pose that fr3_bridge
publishes on ``/twinrl/sim/object_pose``).

Scripted expert on the ROS side: the expert needs privileged sim state (object pose in the
hand, commanded target, task geometry), so it runs here, next to the world. When fr3_bridge
hands its node to the backend, the backend publishes the expert's next action at the control
rate on ``/twinrl/sim/expert_action`` (twinrl_msgs/Action, ``source = SOURCE_SCRIPTED``,
``step`` = expert step since the reset). The episode manager forwards it to
``/twinrl/action`` once per control step, so expert episodes go through fr3_bridge and its
safety envelope like any policy. Nothing moves unless someone forwards these actions.

The expert steps in lockstep with the commands that reach the arm: it computes its next
action only once the previous one was applied (a ``command``), and re-publishes the same
action with the same ``step`` until then (or until ``expert_stale_s`` passes). Its phase
machine counts steps (e.g. five steps of closing before lifting), so a free-running expert
on a busy host, whose actions the episode manager skips, would lift before the gripper
closed. Consumers take each ``step`` once.

Options (fr3_bridge parameter ``backend_config``): a YAML file name/path, or an inline YAML
mapping, of :class:`SimBackendConfig`, e.g.
``{render: true, camera_overrides: {third_person.width: 64, third_person.height: 64}}``.

This module also holds the sim-world helpers the episode manager loads by name:
:func:`sample_configuration` (local sampling from a task's grid) and :func:`task_time_limit`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import yaml

from twinrl_bringup.bridge.backend import CameraFrame, CartesianTarget, RobotState, WorldStatus
from twinrl_bringup.config import ConfigError, from_dict, load_config, resolve_config_path

EXPERT_TOPIC = "/twinrl/sim/expert_action"
REGION_NAMES = {0: "id", 1: "ood", -1: "all"}
STRATEGY_CELL = 2       # SampleResetConfiguration.STRATEGY_CELL


@dataclass
class SimBackendConfig:
    render: bool = True                          # cameras on (fr3_bridge publishes the images)
    camera_overrides: dict[str, Any] = field(default_factory=dict)   # dotted keys of config/cameras.yaml
    task_overrides: list[str] = field(default_factory=list)          # dotted keys of config/tasks/<task>.yaml
    perturbation: Optional[str] = None           # None, clutter, dark, dynamic_light
    expert_topic: str = EXPERT_TOPIC             # "" disables the expert action stream
    expert_rate: float = 10.0                    # Hz
    expert_stale_s: float = 1.0                  # recompute the expert action when none was applied for this long


def load_backend_config(config: Any = None) -> SimBackendConfig:
    """``None``/"" -> defaults; a dict or an inline YAML mapping string; else a file name/path."""
    if config is None or config == "":
        return SimBackendConfig()
    if isinstance(config, SimBackendConfig):
        return config
    if isinstance(config, dict):
        return from_dict(config, SimBackendConfig, "backend_config")
    text = str(config).strip()
    if text.startswith("{"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("backend_config", "", f"invalid inline YAML: {exc}") from exc
        return from_dict(data, SimBackendConfig, "backend_config")
    return load_config(resolve_config_path(text), SimBackendConfig)


def _region_int(value) -> int:
    if isinstance(value, str):
        return 1 if value == "ood" else 0
    return int(value or 0)


def _has_pose(pose) -> bool:
    """A configuration pose is given when it has 7 finite values and a non-zero quaternion
    (an unset ResetConfiguration pose is all zeros)."""
    if pose is None:
        return False
    v = np.asarray(pose, dtype=float).reshape(-1)
    return v.shape == (7,) and bool(np.all(np.isfinite(v))) and float(np.linalg.norm(v[3:])) > 1e-9


class _GLThread:
    """One thread that owns the OpenGL context: the env (and its renderers) is built there and
    every render runs there. EGL/OSMesa contexts are bound to the thread that made them
    current, while fr3_bridge calls the backend from its executor's threads."""

    def __init__(self):
        import queue

        self.jobs: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="sim-gl", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, args, box, done = job
            try:
                box["result"] = fn(*args)
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            done.set()

    def call(self, fn, *args):
        if threading.current_thread() is self.thread:
            return fn(*args)
        box: dict = {}
        done = threading.Event()
        self.jobs.put((fn, args, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=5)


class SimBackend:
    name = "sim"

    def __init__(self, task: str = "pick_and_place", config: Any = None, seed: int = 0, node=None,
                 env=None):
        self.task = task
        self.cfg = load_backend_config(config)
        self.seed = int(seed)
        self.node = node
        self.env = env                       # injected env (tests) or built in start()
        self.gl: Optional[_GLThread] = None
        self.lock = threading.RLock()
        self.expert = None
        self.expert_step = 0
        self.commands = 0                    # targets applied since start (the expert's lockstep)
        self._expert_cache: Optional[tuple] = None   # (action, step, commands when computed, time)
        self.resets = 0
        self._pub = None
        self._timer = None
        self._status: Optional[WorldStatus] = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            if self.env is None:
                from . import make_env

                self.gl = _GLThread()
                try:
                    self.env = self.gl.call(
                        lambda: make_env(self.task, render=self.cfg.render, perturbation=self.cfg.perturbation,
                                         seed=self.seed, camera_overrides=self.cfg.camera_overrides or None,
                                         task_overrides=tuple(self.cfg.task_overrides)))
                except (ValueError, OSError) as exc:
                    self.gl.close()
                    self.gl = None
                    raise RuntimeError(f"sim world for task {self.task!r} cannot be built: {exc}") from exc
            self._gl(lambda: self.env.reset(seed=self.seed))
            self.expert = self.env.expert()
            self.expert_step = 0
            self._expert_cache = None
            self._status = None
        if self.node is not None and self.cfg.expert_topic:
            from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
            from twinrl_msgs.msg import Action

            self._pub = self.node.create_publisher(Action, self.cfg.expert_topic, 10)
            self._timer = self.node.create_timer(1.0 / self.cfg.expert_rate, self._publish_expert,
                                                 callback_group=MutuallyExclusiveCallbackGroup())

    def stop(self) -> None:
        with self.lock:
            if self._timer is not None and self.node is not None:
                try:
                    self.node.destroy_timer(self._timer)
                except Exception:  # the node may already be going down
                    pass
                self._timer = None
            if self.env is not None:
                self._gl(self.env.close)
            if self.gl is not None:
                self.gl.close()
                self.gl = None

    def _gl(self, fn, *args):
        return self.gl.call(fn, *args) if self.gl is not None else fn(*args)

    # -- robot ---------------------------------------------------------------------------------
    def read_state(self) -> RobotState:
        with self.lock:
            return self.env.robot_state()

    def command(self, target: CartesianTarget) -> None:
        with self.lock:
            self.env.set_target(target.position, target.quaternion, target.gripper)
            self.commands += 1

    def hold(self) -> None:
        with self.lock:
            self.env.hold()

    def tick(self, dt: float) -> None:
        if not dt > 0:
            return
        with self.lock:
            self.env.advance(float(dt))
            self._status = None

    def cameras(self) -> list[CameraFrame]:
        with self.lock:
            if not self.cfg.render:
                return []
            stamp = float(self.env.data.time)
            frames = []
            for name, (img, k, _pose) in self._gl(self.env.render_cameras).items():
                frame_id = getattr(self.env.cameras_cfg, name).frame_id or f"{name}_optical_frame"
                frames.append(CameraFrame(name=name, image=img, frame_id=frame_id, fx=float(k["fx"]),
                                          fy=float(k["fy"]), cx=float(k["cx"]), cy=float(k["cy"]), stamp=stamp))
            return frames

    # -- episodes ------------------------------------------------------------------------------
    def reset(self, configuration: dict) -> dict:
        """Place the objects at ``configuration``; without an object pose (all zeros) sample
        one in its region (and its cell when ``cell_row``/``cell_col`` are set with
        ``sample_cell``). Returns the applied configuration with ``region`` as
        ResetConfiguration.REGION_* (0 id, 1 ood)."""
        conf = dict(configuration or {})
        task = conf.get("task") or self.task
        if task != self.task:
            raise ValueError(f"this sim world runs task {self.task!r}, the configuration asks for {task!r}")
        seed = int(conf.get("seed") or 0) or None
        if _has_pose(conf.get("object_pose")):
            options = {"configuration": {k: v for k, v in conf.items()
                                         if k in ("task", "object_pose", "target_pose", "cell_row", "cell_col",
                                                  "region", "seed")}}
            if not _has_pose(options["configuration"].get("target_pose")):
                options["configuration"].pop("target_pose", None)
            if isinstance(options["configuration"].get("region"), (int, np.integer)):
                options["configuration"]["region"] = "ood" if int(options["configuration"]["region"]) == 1 else "id"
        else:
            options = {"region": REGION_NAMES.get(_region_int(conf.get("region")), "all")}
            if conf.get("sample_cell"):
                options["cell"] = (int(conf.get("cell_row", 0)), int(conf.get("cell_col", 0)))
        with self.lock:
            _, info = self._gl(lambda: self.env.reset(seed=seed, options=options))
            if self.expert is not None:
                self.expert.reset()
            self.expert_step = 0
            self._expert_cache = None
            self.resets += 1
            self._status = None
            applied = dict(info["configuration"])
        applied["region"] = _region_int(applied.get("region"))
        applied["object_pose"] = [float(v) for v in applied["object_pose"]]
        applied["target_pose"] = [float(v) for v in applied["target_pose"]]
        return applied

    def world_status(self) -> Optional[WorldStatus]:
        with self.lock:
            if self._status is None:
                env = self.env
                success = bool(self._task_success())
                rcfg = env.task_cfg.reward
                reward = rcfg.success if success else 0.0
                if rcfg.shaped:
                    reward += rcfg.distance_weight * env.task_obj.progress()
                self._status = WorldStatus(
                    reward=float(reward), success=success, done=success,
                    extra={"object_pose": [float(v) for v in env.task_obj.object_pose7()],
                           "target_pose": [float(v) for v in env.task_obj.target_pose7()],
                           "configuration": env.configuration})
            return self._status

    def _task_success(self) -> bool:
        env = self.env
        if hasattr(env, "task_success"):
            return env.task_success()
        return env.task_obj.success(env._fingers_touch())

    # -- expert --------------------------------------------------------------------------------
    def expert_action(self, now: Optional[float] = None) -> tuple[np.ndarray, int]:
        """The scripted expert's action (7,) and its step index since the reset.

        A new step is computed only when a command was applied since the last one (or the last
        one is older than ``expert_stale_s``); otherwise the pending action is returned again."""
        now = time.monotonic() if now is None else now
        with self.lock:
            c = self._expert_cache
            if c is not None and self.commands == c[2] and now - c[3] < self.cfg.expert_stale_s:
                return c[0].copy(), c[1]
            a = np.asarray(self.expert.act({}, {"configuration": self.env.configuration}), dtype=float)
            step = self.expert_step
            self.expert_step += 1
            self._expert_cache = (a, step, self.commands, now)
            return a.copy(), step

    def _publish_expert(self) -> None:
        from twinrl_msgs.msg import Action

        try:
            a, step = self.expert_action()
        except Exception as exc:  # the expert must never take the bridge down
            self.node.get_logger().error(f"sim expert failed: {exc}", throttle_duration_sec=5.0)
            return
        msg = Action()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "fr3_link0"
        msg.delta_position.x, msg.delta_position.y, msg.delta_position.z = (float(v) for v in a[:3])
        msg.delta_rotation.x, msg.delta_rotation.y, msg.delta_rotation.z = (float(v) for v in a[3:6])
        msg.gripper = float(a[6])
        msg.source = Action.SOURCE_SCRIPTED
        msg.policy_version = "sim_expert"
        msg.step = int(step)
        try:
            self._pub.publish(msg)
        except Exception:
            if self.node.context.ok():
                raise            # a real publishing problem; during shutdown there is nothing to do


# ----------------------------------------------------------------------------- episode-manager helpers
def sample_configuration(task: str, strategy: int, region: int, cell: tuple, seed: int) -> dict:
    """A configuration from ``task``'s grid (uniform over ``region`` -1 any / 0 id / 1 ood, or
    the given cell with STRATEGY_CELL), object resting on the table, default target."""
    from twinrl_bringup import transforms as tf

    from .config import load_task_config
    from .grid import WorkspaceGrid
    from .tasks import make_task

    cfg = load_task_config(task)
    grid = WorkspaceGrid(cfg.grid)
    t = make_task(cfg)
    rng = np.random.default_rng(int(seed))
    s = grid.sample(rng, REGION_NAMES.get(int(region), "all"),
                    (int(cell[0]), int(cell[1])) if int(strategy) == STRATEGY_CELL else None)
    obj = [s["x"], s["y"], t.rest_z + 1e-4, *tf.quat_from_euler("z", s["yaw"])]
    return {"task": task, "object_pose": [float(v) for v in obj],
            "target_pose": [float(v) for v in t.default_target_pose7()],
            "cell_row": s["row"], "cell_col": s["col"], "region": s["region"], "seed": int(seed)}


def task_time_limit(task: str) -> int:
    from .config import load_task_config

    return int(load_task_config(task).time_limit)


__all__ = ["SimBackend", "SimBackendConfig", "load_backend_config", "sample_configuration", "task_time_limit",
           "EXPERT_TOPIC"]
