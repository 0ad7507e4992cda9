"""episode_manager node: serves ``/twinrl/run_episode`` (twinrl_msgs/RunEpisode).

A thin shell over :class:`twinrl_bringup.episode_manager.EpisodeRunner`; this module only
moves data between ROS and the runner.

Goals: ``configuration`` is used as given unless ``sample_configuration`` is set; then the
guidance service ``/twinrl/sample_reset`` (SampleResetConfiguration) is asked with
``sample_strategy``, the goal configuration's ``task``, ``region``, ``cell_row``/``cell_col``
and ``seed`` (0: a fresh seed), and when no such service runs the configuration is sampled
locally from the task's grid (config/tasks/<task>.yaml). ``controller``: ``expert`` (the
manager forwards one scripted-expert action per control step to ``action_out_topic``; by
default they come from the sim backend on ``/twinrl/sim/expert_action``, since the expert
needs privileged sim state) or ``policy`` (the manager only watches the action topic).
``max_steps`` 0 means the task's time limit. ``record`` writes the episode to
``dataset_dir``.

Observations come either as a bundle (``observation_topic``, twinrl_msgs/Observation) or, by
default, assembled from fr3_bridge's topics: ``/joint_states`` (arm joints, plus finger
joints when present for the gripper width), ``/twinrl/tcp_pose`` and the camera images
(``image_topics``), and each carries fr3_bridge's commanded target (``command_topic``,
twinrl_msgs/CommandedTarget; "" for none) relative to the TCP, so recorded episodes keep the
target the actions really applied to (a force stop or hold moves it). A new image of the
first camera makes a new observation (without cameras a timer at ``control_rate_hz`` does);
a control step takes the first observation that arrives at least ``step_pacing`` of a
control period after the step began, so faster cameras do not speed the loop up past
``control_rate_hz``.

Publishes feedback every step, the Episode summary on ``/twinrl/episodes`` and, with the
expert, twinrl_msgs/Action on ``action_out_topic``. The arm is put in hold mode
(``/twinrl/fr3_bridge/set_mode``) when an episode ends or is cancelled and back in policy
mode when the next one starts.
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import Optional

import numpy as np

from twinrl_bringup import dataset as ds
from twinrl_bringup.episode_manager import (
    ActionRecord, EpisodeError, EpisodeManagerConfig, EpisodeRunner, Goal, StatusRecord, StepObservation,
)

DEFAULT_IMAGE_TOPICS = ["third_person:/twinrl/camera/third_person/image_raw",
                        "wrist:/twinrl/camera/wrist/image_raw"]
DEFAULT_EXPERT = "topic"     # the sim backend's expert stream (expert_topic)
DEFAULT_SAMPLER = "twinrl_twin.sim.backend:sample_configuration"
DEFAULT_TIME_LIMIT = "twinrl_twin.sim.backend:task_time_limit"


def image_from_msg(msg, name: str = "image") -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 rgb."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
    enc = msg.encoding.lower()
    if enc not in channels:
        raise ValueError(f"{name}: unsupported image encoding {msg.encoding!r} (want rgb8/bgr8/rgba8/bgra8/mono8)")
    c = channels[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if h <= 0 or w <= 0 or step < w * c or data.size != h * step:
        raise ValueError(f"{name}: image {w}x{h} step {step} does not match its {data.size} data bytes")
    img = data.reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc == "mono8":
        img = np.repeat(img, 3, axis=2)
    elif enc.startswith("bgr"):
        img = img[:, :, 2::-1]
    else:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def _load_callable(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class TopicExpert:
    """Expert controller whose actions come from a topic (the sim backend's scripted expert,
    which sees the privileged sim state). One fresh expert step per control step: the sim
    expert re-publishes a pending action with the same ``step`` until it was applied, and each
    ``step`` is taken once."""

    def __init__(self, node, topic: str, wait_s: float, callback_group=None):
        from twinrl_msgs.msg import Action

        self.topic = topic
        self.wait_s = wait_s
        self.cond = threading.Condition()
        self.latest: Optional[np.ndarray] = None
        self.latest_step: Optional[int] = None
        self.used_step: Optional[int] = None
        node.create_subscription(Action, topic, self._on_action, 10, callback_group=callback_group)

    def _on_action(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import action_from_msg

        with self.cond:
            self.latest = action_from_msg(msg)
            self.latest_step = int(msg.step)
            self.cond.notify_all()

    def __call__(self, task: str) -> "TopicExpert":
        return self

    def reset(self, configuration: dict) -> None:
        with self.cond:
            self.latest = None
            self.latest_step = None
            self.used_step = None

    def act(self, obs, object_pose, configuration) -> np.ndarray:
        deadline = time.monotonic() + self.wait_s
        with self.cond:
            while self.latest is None or self.latest_step == self.used_step:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.latest is None:
                raise EpisodeError(f"no expert action on {self.topic} within {self.wait_s:.1f} s "
                                   "(the expert controller needs the sim backend)")
            if self.latest_step == self.used_step:
                raise EpisodeError(f"the expert on {self.topic} has not moved past step {self.used_step} "
                                   f"for {self.wait_s:.1f} s (its last action was not applied)")
            self.used_step = self.latest_step
            return self.latest.copy()


class RosPorts:
    """EpisodePorts over ROS topics and services (see the module docstring)."""

    def __init__(self, node, p: dict, config: EpisodeManagerConfig):
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState
        from twinrl_msgs.msg import Action, CommandedTarget, Observation, TaskStatus
        from twinrl_msgs.srv import ResetEpisode, SampleResetConfiguration, SetControlMode

        self.node = node
        self.p = p
        self.config = config
        self.log = node.get_logger()
        self.cond = threading.Condition()
        self.obs: Optional[StepObservation] = None
        self.status: Optional[StatusRecord] = None
        self.status_window: Optional[StatusRecord] = None
        self.ignore_status_until = 0.0
        self.object: Optional[np.ndarray] = None
        self.actions: list[ActionRecord] = []
        self.joints = None           # (q, dq)
        self.finger_width: Optional[float] = None
        self.tcp = None              # (position, quaternion)
        self.target = None           # (position, quaternion, gripper, receipt time): the bridge's commanded target
        self.images: dict[str, np.ndarray] = {}
        self.warned: set[str] = set()
        self.goal_handle = None
        self.episode_step = 0
        sensors = MutuallyExclusiveCallbackGroup()
        self.clients = MutuallyExclusiveCallbackGroup()

        self.Action = Action
        self.pub_action = node.create_publisher(Action, p["action_out_topic"], 10)
        node.create_subscription(Action, p["action_topic"], self._on_action, 50, callback_group=sensors)
        node.create_subscription(TaskStatus, p["status_topic"], self._on_status, 100, callback_group=sensors)
        node.create_subscription(PoseStamped, p["object_pose_topic"], self._on_object, 10, callback_group=sensors)
        if p["command_topic"]:
            node.create_subscription(CommandedTarget, p["command_topic"], self._on_target, 20,
                                     callback_group=sensors)
        if p["observation_topic"]:
            node.create_subscription(Observation, p["observation_topic"], self._on_bundle, 5, callback_group=sensors)
        else:
            node.create_subscription(JointState, p["joint_states_topic"], self._on_joints, 20, callback_group=sensors)
            node.create_subscription(PoseStamped, p["tcp_pose_topic"], self._on_tcp, 20, callback_group=sensors)
            self.image_names = []
            for item in (p["image_topics"] if p["use_images"] else []):
                name, _, topic = item.partition(":")
                if not name or not topic:
                    raise ValueError(f"image_topics: expected 'name:/topic', got {item!r}")
                self.image_names.append(name)
                node.create_subscription(Image, topic, lambda m, n=name: self._on_image(n, m), 5,
                                         callback_group=sensors)
            if not self.image_names:
                node.create_timer(1.0 / config.control_rate_hz, self._assemble, callback_group=sensors)
        self.reset_client = node.create_client(ResetEpisode, p["reset_service"], callback_group=self.clients)
        self.sample_client = node.create_client(SampleResetConfiguration, p["sample_service"],
                                                callback_group=self.clients)
        self.mode_client = node.create_client(SetControlMode, p["mode_service"], callback_group=self.clients)
        self.ResetEpisode, self.SampleResetConfiguration, self.SetControlMode = (
            ResetEpisode, SampleResetConfiguration, SetControlMode)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.log.warning(text)

    # -- subscriptions ----------------------------------------------------------------------------
    def _on_action(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import action_from_msg

        rec = ActionRecord(action_from_msg(msg), int(msg.source), bool(msg.intervention), msg.policy_version,
                           int(msg.step), time.monotonic())
        with self.cond:
            self.actions.append(rec)
            del self.actions[:-200]

    def _on_status(self, msg) -> None:
        """Several publishers share the status topic (the sim detector at the control rate, the
        operator's labels as events): success/done/abort flags are latched until the step
        reads them, the reward is the latest one (or the success reward when a success came)."""
        st = StatusRecord(time.monotonic(), float(msg.reward), bool(msg.success), bool(msg.done), bool(msg.aborted))
        with self.cond:
            if st.stamp < self.ignore_status_until:   # still the previous scene's signal
                return
            w = self.status_window
            if w is None:
                self.status_window = st
            else:
                reward = max(st.reward, w.reward) if (w.success and not st.success) else st.reward
                self.status_window = StatusRecord(st.stamp, reward, w.success or st.success, w.done or st.done,
                                                  w.aborted or st.aborted)
            self.status = st

    def _on_object(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import pose7_from_msg

        with self.cond:
            self.object = np.asarray(pose7_from_msg(msg.pose), dtype=float)

    def _on_joints(self, msg) -> None:
        """Arm joints and finger joints may come in one message or in separate ones (a gripper
        driver publishing its own); the latest of each is kept."""
        names = list(msg.name)
        pos = dict(zip(names, msg.position))
        vel = dict(zip(names, msg.velocity)) if len(msg.velocity) == len(names) else {}
        fingers = [n for n in names if "finger_joint" in n]
        arm = [n for n in self.p["joint_names"] if n in pos]
        with self.cond:
            if fingers:
                self.finger_width = float(sum(pos[n] for n in fingers)) * (2.0 if len(fingers) == 1 else 1.0)
            if len(arm) == 7:
                self.joints = ([pos[n] for n in arm], [vel.get(n, 0.0) for n in arm])
            elif not fingers:
                self._warn_once("joints", f"{self.p['joint_states_topic']}: expected joints "
                                          f"{self.p['joint_names']}, got {names}")

    def _on_tcp(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import pose7_from_msg

        pose = pose7_from_msg(msg.pose)
        with self.cond:
            self.tcp = (pose[:3], pose[3:])

    def _on_target(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import pose7_from_msg

        pose = pose7_from_msg(msg.pose)
        if not (np.all(np.isfinite(pose)) and np.isfinite(msg.gripper)):
            self._warn_once("target", f"{self.p['command_topic']}: non-finite commanded target dropped")
            return
        with self.cond:
            self.target = (pose[:3], pose[3:], float(msg.gripper), time.monotonic())

    def _command(self, proprio) -> Optional[np.ndarray]:
        """The commanded target relative to the TCP of ``proprio`` (caller holds ``cond``), or
        None without a fresh one."""
        if self.target is None or time.monotonic() - self.target[3] > self.p["command_max_age_s"]:
            return None
        return ds.command_vector(proprio[14:17], proprio[17:21], self.target[0], self.target[1], self.target[2])

    def _on_image(self, name: str, msg) -> None:
        try:
            img = image_from_msg(msg, name)
        except ValueError as exc:
            self._warn_once(f"image:{name}", f"dropping images: {exc}")
            return
        with self.cond:
            self.images[name] = img
        if name == self.image_names[0]:
            self._assemble()

    def _assemble(self) -> None:
        with self.cond:
            if self.joints is None or self.tcp is None:
                return
            if any(n not in self.images for n in self.image_names):
                return
            q, dq = self.joints
            width = self.finger_width
            if width is None or not np.isfinite(width):
                self._warn_once("gripper", f"{self.p['joint_states_topic']} has no finger joints: gripper width "
                                           f"recorded as {self.p['gripper_width_default']}")
                width = self.p["gripper_width_default"]
            proprio = ds.proprio_vector(q, dq, self.tcp[0], self.tcp[1], width)
            self.obs = StepObservation(time.monotonic(), proprio, dict(self.images), self._command(proprio))
            self.cond.notify_all()

    def _on_bundle(self, msg) -> None:
        from twinrl_bringup.bridge.rosconv import pose7_from_msg

        pr = msg.proprioception
        pose = pose7_from_msg(pr.tcp_pose)
        images = {}
        for name in ("third_person", "wrist"):
            im = getattr(msg, name)
            if im.height and im.width:
                try:
                    images[name] = image_from_msg(im, f"{self.p['observation_topic']}.{name}")
                except ValueError as exc:
                    self._warn_once(f"bundle:{name}", f"dropping observation: {exc}")
                    return
        proprio = ds.proprio_vector(pr.joint_positions, pr.joint_velocities, pose[:3], pose[3:], pr.gripper_width)
        with self.cond:
            self.obs = StepObservation(time.monotonic(), proprio, images, self._command(proprio))
            self.cond.notify_all()

    # -- EpisodePorts -------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic()

    def _call(self, client, request, timeout: float, what: str):
        if not client.wait_for_service(timeout_sec=min(timeout, 5.0)):
            raise EpisodeError(f"{what}: service {client.srv_name} is not available")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            future.cancel()
            raise EpisodeError(f"{what}: no answer from {client.srv_name} within {timeout:.1f} s")
        if future.exception() is not None:
            raise EpisodeError(f"{what}: {future.exception()}")
        return future.result()

    def reset(self, configuration: dict, timeout: float) -> dict:
        from twinrl_bringup.bridge.rosconv import configuration_from_msg, configuration_to_msg

        req = self.ResetEpisode.Request()
        conf = dict(configuration)
        if isinstance(conf.get("region"), str):
            conf["region"] = 0 if conf["region"] == "id" else 1
        req.configuration = configuration_to_msg(conf)
        resp = self._call(self.reset_client, req, timeout, "reset")
        if not resp.ok:
            raise EpisodeError(f"reset refused: {resp.message}")
        with self.cond:
            self.obs = None
            self.status = None
            self.status_window = None
            self.ignore_status_until = time.monotonic() + self.config.reset_settle_s
        applied = configuration_from_msg(resp.applied)
        applied["region"] = "ood" if int(applied["region"]) == 1 else "id"
        return applied

    def sample_configuration(self, task, strategy, region, cell, seed) -> Optional[dict]:
        from twinrl_bringup.bridge.rosconv import configuration_from_msg

        if not self.sample_client.wait_for_service(timeout_sec=self.config.sample_service_timeout_s):
            return None
        req = self.SampleResetConfiguration.Request()
        req.task, req.strategy, req.region = task, int(strategy), int(region)
        req.cell_row, req.cell_col, req.seed = int(cell[0]), int(cell[1]), int(seed)
        resp = self._call(self.sample_client, req, 10.0, "sample configuration")
        if not resp.ok:
            raise EpisodeError(f"{self.p['sample_service']} could not sample a configuration: {resp.message}")
        conf = configuration_from_msg(resp.configuration)
        conf["region"] = "ood" if int(conf["region"]) == 1 else "id"
        return conf

    def wait_observation(self, newer_than: float, timeout: float) -> Optional[StepObservation]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.obs is None or self.obs.stamp <= newer_than:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.obs

    def latest_status(self, since: float) -> Optional[StatusRecord]:
        with self.cond:
            w, self.status_window = self.status_window, None
            if w is not None and w.stamp >= since:
                return w
            return self.status if self.status is not None and self.status.stamp >= since else None

    def object_pose(self) -> Optional[np.ndarray]:
        with self.cond:
            return None if self.object is None else self.object.copy()

    def publish_action(self, record: ActionRecord) -> None:
        from twinrl_bringup.bridge.rosconv import action_to_msg

        msg = action_to_msg(record.action)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.p["base_frame"]
        msg.source = int(record.source)
        msg.intervention = bool(record.intervention)
        msg.policy_version = record.policy_version
        msg.step = int(record.step)
        self.pub_action.publish(msg)

    def drain_actions(self) -> list[ActionRecord]:
        with self.cond:
            out, self.actions = self.actions, []
        return out

    def set_mode(self, mode: int) -> None:
        if not self.p["manage_mode"]:
            return
        if not self.mode_client.wait_for_service(timeout_sec=1.0):
            self._warn_once("mode", f"{self.p['mode_service']} not available: arm mode left as it is")
            return
        req = self.SetControlMode.Request()
        req.mode = int(mode)
        try:
            resp = self._call(self.mode_client, req, 5.0, "set mode")
            if not resp.ok:
                self.log.warning(f"set mode {mode}: {resp.message}")
        except EpisodeError as exc:
            self.log.warning(str(exc))

    def hold(self) -> None:
        self.set_mode(self.SetControlMode.Request.MODE_HOLD)

    def feedback(self, step: int, episode_return: float, intervention: bool) -> None:
        from twinrl_msgs.action import RunEpisode

        if self.goal_handle is None:
            return
        fb = RunEpisode.Feedback()
        fb.step, fb.episode_return, fb.intervention = int(step), float(episode_return), bool(intervention)
        self.goal_handle.publish_feedback(fb)


PARAMS = {
    "config": "episode_manager",
    # overrides of the YAML configuration ("" / negative: keep the file's value)
    "task": "", "dataset_dir": "", "max_steps": -1, "control_rate_hz": -1.0, "world_source": "",
    "step_pacing": -1.0,
    "action_topic": "/twinrl/action",
    "action_out_topic": "/twinrl/action",
    "status_topic": "/twinrl/task_status",
    "object_pose_topic": "/twinrl/sim/object_pose",
    "observation_topic": "",
    "joint_states_topic": "/joint_states",
    "tcp_pose_topic": "/twinrl/tcp_pose",
    "command_topic": "/twinrl/fr3_bridge/commanded_target",
    "command_max_age_s": 0.5,               # an older commanded target is not recorded
    "use_images": True,                     # false: no cameras, steps paced by a timer
    "image_topics": DEFAULT_IMAGE_TOPICS,
    "joint_names": [f"fr3_joint{i}" for i in range(1, 8)],
    "gripper_width_default": 0.0,
    "reset_service": "/twinrl/fr3_bridge/reset",
    "sample_service": "/twinrl/sample_reset",
    "mode_service": "/twinrl/fr3_bridge/set_mode",
    "manage_mode": True,
    "episodes_topic": "/twinrl/episodes",
    "action_name": "/twinrl/run_episode",
    "expert": DEFAULT_EXPERT,               # "topic", "module:factory" (factory(task) -> Expert) or ""
    "expert_topic": "/twinrl/sim/expert_action",
    "expert_wait_s": 2.0,
    "local_sampler": DEFAULT_SAMPLER,
    "time_limit": DEFAULT_TIME_LIMIT,
    "base_frame": "fr3_link0",
}


def load_node_config(p: dict) -> EpisodeManagerConfig:
    from twinrl_bringup.config import load_config, resolve_config_path

    overrides = []
    for key in ("task", "dataset_dir", "world_source"):
        if p[key]:
            overrides.append((key, p[key]))
    if p["max_steps"] >= 0:
        overrides.append(("max_steps", int(p["max_steps"])))
    if p["control_rate_hz"] > 0:
        overrides.append(("control_rate_hz", float(p["control_rate_hz"])))
    if p["step_pacing"] >= 0:
        overrides.append(("step_pacing", float(p["step_pacing"])))
    return load_config(resolve_config_path(p["config"]), EpisodeManagerConfig, overrides=overrides)


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.action import ActionServer, CancelResponse, GoalResponse
    from twinrl_msgs.action import RunEpisode
    from twinrl_msgs.msg import Episode

    from twinrl_bringup.bridge.rosconv import configuration_from_msg, configuration_to_msg
    from twinrl_bringup.executor import OffloadExecutor

    rclpy.init(args=argv)
    node = rclpy.create_node("episode_manager")
    log = node.get_logger()
    p = {}
    for name, default in PARAMS.items():
        p[name] = node.declare_parameter(name, default).value
    try:
        config = load_node_config(p)
        ports = RosPorts(node, p, config)
    except (ValueError, OSError) as exc:
        return fail_start(node, f"episode_manager cannot start: {exc}", 1)

    def optional(spec: str, what: str):
        if not spec:
            return None
        try:
            return _load_callable(spec)
        except (ImportError, AttributeError) as exc:
            log.warning(f"{what} {spec!r} unavailable ({exc})")
            return None

    if p["expert"] == "topic":
        expert_factory = TopicExpert(node, p["expert_topic"], float(p["expert_wait_s"]))
    else:
        expert_factory = optional(p["expert"], "expert")
    runner = EpisodeRunner(config, expert_factory=expert_factory,
                           local_sampler=optional(p["local_sampler"], "local sampler"),
                           time_limit=optional(p["time_limit"], "time limit"))
    pub_episode = node.create_publisher(Episode, p["episodes_topic"], 10)
    busy = threading.Lock()

    def on_goal(goal):
        if busy.locked():
            log.warning("goal rejected: an episode is already running")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def execute(goal_handle):
        result = RunEpisode.Result()
        if not busy.acquire(blocking=False):
            goal_handle.abort()
            result.message = "an episode is already running"
            return result
        try:
            g = goal_handle.request
            conf = configuration_from_msg(g.configuration)
            conf["region"] = "ood" if conf["region"] == 1 else "id"
            goal = Goal(configuration=conf, sample_configuration=bool(g.sample_configuration),
                        sample_strategy=int(g.sample_strategy),
                        region=int(g.configuration.region), controller=g.controller or "policy",
                        max_steps=int(g.max_steps), record=bool(g.record),
                        seed=int(g.configuration.seed) or None)
            ports.goal_handle = goal_handle
            ports.set_mode(ports.SetControlMode.Request.MODE_POLICY)
            log.info(f"episode: controller {goal.controller}, "
                     f"{'sampled configuration' if goal.sample_configuration else 'given configuration'}, "
                     f"record {goal.record}")
            out = runner.run(goal, ports, cancelled=lambda: goal_handle.is_cancel_requested)
        except EpisodeError as exc:
            log.error(f"episode failed: {exc}")
            ports.hold()
            result.message = str(exc)
            goal_handle.abort()
            return result
        except Exception as exc:  # a bad goal must not take the node down
            log.error(f"episode failed: {type(exc).__name__}: {exc}")
            ports.hold()
            result.message = f"{type(exc).__name__}: {exc}"
            goal_handle.abort()
            return result
        finally:
            ports.goal_handle = None
            busy.release()
        result.success, result.length, result.episode_return = out.success, out.length, out.episode_return
        result.episode_id, result.message = out.episode_id, out.message
        cfg = dict(out.configuration)
        cfg["region"] = 1 if cfg.get("region") in ("ood", 1) else 0
        result.configuration = configuration_to_msg(cfg)
        summary = Episode()
        summary.header.stamp = node.get_clock().now().to_msg()
        summary.episode_id, summary.task = out.episode_id, str(cfg.get("task", config.task))
        summary.source = int(out.episode_source)
        summary.initial_configuration = result.configuration
        summary.length, summary.episode_return, summary.success = out.length, out.episode_return, out.success
        summary.num_interventions = out.num_interventions
        summary.policy_version = out.policy_version
        summary.storage_uri = out.storage_uri
        pub_episode.publish(summary)
        log.info(f"episode {out.episode_id}: {out.message}, {out.length} steps at {out.step_rate_hz:.1f} Hz, "
                 f"return {out.episode_return:.2f}"
                 + (f", written to {out.storage_uri}" if out.storage_uri else ""))
        if out.cancelled:
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return result

    server = ActionServer(node, RunEpisode, p["action_name"], execute_callback=execute, goal_callback=on_goal,
                          cancel_callback=lambda _h: CancelResponse.ACCEPT)
    log.info(f"episode_manager ready on {p['action_name']} (dataset {config.dataset_dir})")
    # An episode runs on a worker thread; sensors, service responses, goal and cancel requests
    # run on the spinning thread (see twinrl_bringup.executor).
    executor = OffloadExecutor(task_owners=[server])
    executor.add_node(node)
    return spin_until_shutdown(node, executor)


if __name__ == "__main__":
    sys.exit(main())
