"""``real`` backend: the FR3 through franka_ros2 (ros2_control).

* state: ``/joint_states`` (sensor_msgs/JointState, joint_state_broadcaster) and the robot
  state of franka_robot_state_broadcaster (franka_msgs/msg/FrankaRobotState: TCP pose
  ``o_t_ee``, external force ``o_f_ext_hat_k``). Where franka_msgs is not installed the TCP
  pose comes from a geometry_msgs/PoseStamped topic instead and the force from an optional
  geometry_msgs/WrenchStamped topic (``robot_state_type`` / ``wrench_topic``);
* targets: a Cartesian impedance controller's target topic, by default
  geometry_msgs/PoseStamped on ``/target_pose`` (crisp_controllers; cartesian_controllers use
  ``/target_frame``), type configurable (PoseStamped or Pose);
* gripper: franka_gripper actions (homing, move, grasp) under ``gripper_namespace``;
* error recovery: franka_msgs/action/ErrorRecovery.

Upstream interfaces (franka_msgs) are imported lazily; what is missing is logged once at
start-up. The backend runs inside the fr3_bridge node: it creates its subscriptions and
publishers on the node it is given, and its callbacks run on that node's executor.
"""
from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from twinrl_bringup.bridge.backend import CameraFrame, CartesianTarget, RobotState, WorldStatus
from twinrl_bringup.config import load_config, resolve_config_path

FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))


@dataclass
class RealBackendConfig:
    joint_states_topic: str = "/joint_states"
    robot_state_topic: str = "/franka_robot_state_broadcaster/robot_state"
    robot_state_type: str = "franka_msgs/msg/FrankaRobotState"
    fallback_pose_topic: str = "/franka_robot_state_broadcaster/current_pose"
    wrench_topic: str = ""                       # optional WrenchStamped of the external force
    target_topic: str = "/target_pose"
    target_type: str = "geometry_msgs/msg/PoseStamped"
    target_queue_depth: int = 10                 # publisher history of the target topic
    base_frame: str = "fr3_link0"
    joint_names: list[str] = field(default_factory=lambda: list(FR3_JOINTS))
    finger_joint_names: list[str] = field(default_factory=lambda: ["fr3_finger_joint1", "fr3_finger_joint2"])
    gripper_namespace: str = "/fr3_gripper"
    gripper_joint_states_topic: str = "/fr3_gripper/joint_states"
    gripper_max_width: float = 0.08
    gripper_speed: float = 0.1
    grasp_force: float = 20.0
    grasp_epsilon: float = 0.08
    gripper_close_above: float = 0.5             # action > this: grasp
    gripper_open_below: float = -0.5             # action < this: open
    error_recovery_action: str = "/action_server/error_recovery"
    state_timeout: float = 0.5                   # s: older state counts as lost
    home_position: tuple[float, float, float] = (0.45, 0.0, 0.35)
    home_quaternion: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    reset_speed: float = 0.08                    # m/s while moving home
    reset_rate: float = 20.0                     # Hz of home-motion targets
    reset_timeout: float = 20.0

    def validate(self) -> None:
        if len(self.joint_names) != 7:
            raise ValueError(f"joint_names: expected 7 names, got {len(self.joint_names)}")
        if self.target_queue_depth < 1:
            raise ValueError(f"target_queue_depth: expected >= 1, got {self.target_queue_depth}")
        if self.target_type not in ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/Pose"):
            raise ValueError(f"target_type {self.target_type!r}: expected geometry_msgs/msg/PoseStamped or Pose")
        if not self.gripper_open_below < self.gripper_close_above:
            raise ValueError("gripper_open_below must be below gripper_close_above")


def load_real_config(path=None, overrides=()) -> RealBackendConfig:
    return load_config(resolve_config_path(path if path is not None else "fr3_real"), RealBackendConfig,
                       overrides=overrides)


def import_type(name: str):
    """``pkg/msg/Type`` -> the Python class; ImportError names the missing package."""
    parts = name.split("/")
    if len(parts) != 3:
        raise ImportError(f"bad interface type name {name!r} (expected pkg/msg/Type)")
    pkg, kind, typ = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError as exc:
        raise ImportError(f"{pkg} is not installed (needed for {name})") from exc
    try:
        return getattr(module, typ)
    except AttributeError as exc:
        raise ImportError(f"{pkg}.{kind} has no {typ}") from exc


def pose_from_msg(pose) -> tuple[np.ndarray, np.ndarray]:
    p, o = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z], dtype=float), np.array([o.x, o.y, o.z, o.w], dtype=float)


def parse_franka_robot_state(msg) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(tcp position, quaternion, external force or None) of a FrankaRobotState message."""
    pos, quat = pose_from_msg(msg.o_t_ee.pose)
    force = None
    wrench = getattr(msg, "o_f_ext_hat_k", None)
    if wrench is not None:
        f = wrench.wrench.force
        force = np.array([f.x, f.y, f.z], dtype=float)
    return pos, quat, force


class GripperLogic:
    """Turns the continuous gripper action into discrete open/grasp commands (hysteresis)."""

    def __init__(self, close_above: float = 0.5, open_below: float = -0.5):
        self.close_above = close_above
        self.open_below = open_below
        self.state: Optional[str] = None   # "open" / "closed" / None (unknown)

    def update(self, g: float) -> Optional[str]:
        """"grasp", "open" or None (no change)."""
        if g > self.close_above and self.state != "closed":
            self.state = "closed"
            return "grasp"
        if g < self.open_below and self.state != "open":
            self.state = "open"
            return "open"
        return None


class RealBackend:
    name = "real"
    reset_runs_unlocked = True

    def __init__(self, node=None, config: Optional[str] = None, overrides=(), envelope=None):
        if node is None:
            raise RuntimeError("the real backend runs inside the fr3_bridge node (node=None given)")
        self.node = node
        self.cfg = load_real_config(config or None, overrides)
        self.envelope = envelope
        self._lock = threading.Lock()
        self._joints: Optional[tuple[float, np.ndarray, np.ndarray]] = None
        self._pose: Optional[tuple[float, np.ndarray, np.ndarray]] = None
        self._force: Optional[np.ndarray] = None
        self._finger_width = float("nan")
        self._gripper = GripperLogic(self.cfg.gripper_close_above, self.cfg.gripper_open_below)
        self._gripper_clients: dict[str, Any] = {}
        self._gripper_types: dict[str, Any] = {}
        self._recovery_client = None
        self.missing: list[str] = []
        self.targets_sent = 0
        self.last_target: Optional[CartesianTarget] = None
        self.gripper_commands: list[str] = []
        self._started = False

    # -- set-up --------------------------------------------------------------------------------
    def start(self) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState

        node, cfg = self.node, self.cfg
        node.create_subscription(JointState, cfg.joint_states_topic, self._on_joints, qos_profile_sensor_data)
        if cfg.gripper_joint_states_topic and cfg.gripper_joint_states_topic != cfg.joint_states_topic:
            node.create_subscription(JointState, cfg.gripper_joint_states_topic, self._on_joints,
                                     qos_profile_sensor_data)
        try:
            state_type = import_type(cfg.robot_state_type)
            node.create_subscription(state_type, cfg.robot_state_topic, self._on_robot_state, 10)
            log_source = f"{cfg.robot_state_topic} ({cfg.robot_state_type})"
        except ImportError as exc:
            from geometry_msgs.msg import PoseStamped

            self.missing.append(str(exc))
            node.create_subscription(PoseStamped, cfg.fallback_pose_topic, self._on_pose, 10)
            log_source = f"{cfg.fallback_pose_topic} (geometry_msgs/PoseStamped fallback: {exc})"
        if cfg.wrench_topic:
            from geometry_msgs.msg import WrenchStamped

            node.create_subscription(WrenchStamped, cfg.wrench_topic, self._on_wrench, 10)
        self._target_type = import_type(cfg.target_type)
        self._target_pub = node.create_publisher(self._target_type, cfg.target_topic, cfg.target_queue_depth)
        self._setup_gripper()
        self._setup_recovery()
        node.get_logger().info(
            f"real backend: joint states {cfg.joint_states_topic}, TCP pose from {log_source}, "
            f"targets -> {cfg.target_topic} ({cfg.target_type})")
        if self.missing:
            node.get_logger().warning(
                "real backend: upstream interfaces missing, reduced function: " + "; ".join(self.missing))
        self._started = True

    def _setup_gripper(self) -> None:
        try:
            from rclpy.action import ActionClient

            ns = self.cfg.gripper_namespace.rstrip("/")
            for key, typ in (("homing", "Homing"), ("move", "Move"), ("grasp", "Grasp")):
                t = import_type(f"franka_msgs/action/{typ}")
                self._gripper_types[key] = t
                self._gripper_clients[key] = ActionClient(self.node, t, f"{ns}/{key}")
        except ImportError as exc:
            self.missing.append(f"gripper actions unavailable ({exc})")

    def _setup_recovery(self) -> None:
        try:
            from rclpy.action import ActionClient

            t = import_type("franka_msgs/action/ErrorRecovery")
            self._recovery_type = t
            self._recovery_client = ActionClient(self.node, t, self.cfg.error_recovery_action)
        except ImportError as exc:
            self.missing.append(f"error recovery unavailable ({exc})")

    # -- callbacks -----------------------------------------------------------------------------
    def _on_joints(self, msg) -> None:
        names = list(msg.name)
        finger = [names.index(n) for n in self.cfg.finger_joint_names if n in names]
        if finger and len(msg.position) == len(names):
            with self._lock:
                self._finger_width = float(sum(msg.position[i] for i in finger))
        if not all(n in names for n in self.cfg.joint_names) or len(msg.position) != len(names):
            return
        idx = [names.index(n) for n in self.cfg.joint_names]
        q = np.array([msg.position[i] for i in idx], dtype=float)
        dq = (np.array([msg.velocity[i] for i in idx], dtype=float)
              if len(msg.velocity) == len(names) else np.zeros(7))
        with self._lock:
            self._joints = (time.monotonic(), q, dq)

    def _on_robot_state(self, msg) -> None:
        pos, quat, force = parse_franka_robot_state(msg)
        with self._lock:
            self._pose = (time.monotonic(), pos, quat)
            if force is not None and not self.cfg.wrench_topic:
                self._force = force

    def _on_pose(self, msg) -> None:
        pos, quat = pose_from_msg(msg.pose)
        with self._lock:
            self._pose = (time.monotonic(), pos, quat)

    def _on_wrench(self, msg) -> None:
        f = msg.wrench.force
        with self._lock:
            self._force = np.array([f.x, f.y, f.z], dtype=float)

    # -- Backend protocol ----------------------------------------------------------------------
    def read_state(self) -> Optional[RobotState]:
        now = time.monotonic()
        with self._lock:
            pose, joints, force, width = self._pose, self._joints, self._force, self._finger_width
        if pose is None or now - pose[0] > self.cfg.state_timeout:
            return None
        if joints is None or now - joints[0] > self.cfg.state_timeout:
            return None
        _, pos, quat = pose
        _, q, dq = joints
        n = float(np.linalg.norm(quat))
        if not (np.all(np.isfinite(pos)) and np.isfinite(n) and n > 1e-6):
            return None
        return RobotState(pose[0], q.copy(), dq.copy(), pos.copy(), quat / n, float(width),
                          None if force is None else force.copy(), tuple(self.cfg.joint_names))

    def _publish(self, position, quaternion) -> None:
        from geometry_msgs.msg import Pose

        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
        (pose.orientation.x, pose.orientation.y, pose.orientation.z,
         pose.orientation.w) = (float(v) for v in quaternion)
        if self.cfg.target_type.endswith("PoseStamped"):
            msg = self._target_type()
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = self.cfg.base_frame
            msg.pose = pose
        else:
            msg = pose
        self._target_pub.publish(msg)
        self.targets_sent += 1

    def command(self, target: CartesianTarget) -> None:
        self._publish(target.position, target.quaternion)
        self.last_target = target
        action = self._gripper.update(float(target.gripper))
        if action is not None:
            self._send_gripper(action)

    def hold(self) -> None:
        state = self.read_state()
        if state is not None:
            self._publish(state.tcp_position, state.tcp_quaternion)

    def tick(self, dt: float) -> None:
        return None

    def cameras(self) -> list[CameraFrame]:
        return []   # realsense2_camera publishes the images

    def world_status(self) -> Optional[WorldStatus]:
        return None  # success comes from the operator's labels

    def stop(self) -> None:
        self.hold()

    # -- gripper and recovery ------------------------------------------------------------------
    def _send_gripper(self, action: str) -> bool:
        self.gripper_commands.append(action)
        key = "grasp" if action == "grasp" else "move"
        client = self._gripper_clients.get(key)
        if client is None:
            return False
        if not client.server_is_ready():
            self.node.get_logger().warning(f"gripper action server {key} not ready; {action} skipped")
            return False
        goal = self._gripper_types[key].Goal()
        goal.speed = float(self.cfg.gripper_speed)
        if action == "grasp":
            goal.width = 0.0
            goal.force = float(self.cfg.grasp_force)
            goal.epsilon.inner = float(self.cfg.grasp_epsilon)
            goal.epsilon.outer = float(self.cfg.grasp_epsilon)
        else:
            goal.width = float(self.cfg.gripper_max_width)
        client.send_goal_async(goal)
        return True

    def home_gripper(self) -> bool:
        client = self._gripper_clients.get("homing")
        if client is None or not client.wait_for_server(timeout_sec=1.0):
            return False
        client.send_goal_async(self._gripper_types["homing"].Goal())
        return True

    def recover(self, timeout: float = 5.0) -> bool:
        """Ask franka_ros2 to recover from a reflex/error; False when unavailable."""
        if self._recovery_client is None or not self._recovery_client.wait_for_server(timeout_sec=1.0):
            return False
        fut = self._recovery_client.send_goal_async(self._recovery_type.Goal())
        t0 = time.monotonic()
        while not fut.done() and time.monotonic() - t0 < timeout:
            time.sleep(0.02)
        return fut.done()

    def reset(self, configuration: dict) -> dict:
        """Recover from errors, open the gripper and move home at ``reset_speed``.

        The object is placed by the operator (the configuration is returned as requested).
        Runs in a service callback while the node's other callbacks keep the state fresh.
        """
        self.recover(timeout=2.0)
        self._gripper.state = None
        if self._gripper.update(-1.0):
            self._send_gripper("open")
        deadline = time.monotonic() + self.cfg.reset_timeout
        state = self.read_state()
        while state is None and time.monotonic() < deadline:
            time.sleep(0.02)
            state = self.read_state()
        if state is None:
            raise RuntimeError("no robot state: cannot move home")
        from twinrl_bringup.transforms import slerp

        start_p, start_q = state.tcp_position, state.tcp_quaternion
        home_p = np.asarray(self.cfg.home_position, dtype=float)
        home_q = np.asarray(self.cfg.home_quaternion, dtype=float)
        if self.envelope is not None:
            if not self.envelope.contains(home_p):
                raise RuntimeError(f"home_position {home_p.tolist()} is outside the safety workspace box")
            start_p = self.envelope.clip_position(start_p)
        dist = float(np.linalg.norm(home_p - start_p))
        n = max(1, int(np.ceil(dist / self.cfg.reset_speed * self.cfg.reset_rate)))
        for i in range(1, n + 1):
            t = i / n
            self._publish(start_p + t * (home_p - start_p), slerp(start_q, home_q, t))
            time.sleep(1.0 / self.cfg.reset_rate)
            if time.monotonic() > deadline:
                raise RuntimeError("moving home timed out")
        self.node.get_logger().info(
            f"reset: arm home; operator, place the object for cell "
            f"({configuration.get('cell_row')}, {configuration.get('cell_col')}) at "
            f"{configuration.get('object_pose')}")
        return dict(configuration)
