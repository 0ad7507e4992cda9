"""``franky`` backend: the FR3 through franky-control (libfranka), for labs without ros2_control.

Targets become asynchronous absolute Cartesian motions (each new target replaces the running
motion); hold re-targets the current pose; the gripper uses franky's Gripper (move / grasp);
reset recovers from errors, opens the gripper and moves home. The external force is
``O_F_ext_hat_K`` of the robot state. franky is imported lazily with a clear error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from twinrl_bringup.bridge.backend import CameraFrame, CartesianTarget, RobotState, WorldStatus
from twinrl_bringup.bridge.real_backend import GripperLogic
from twinrl_bringup.config import load_config, resolve_config_path


@dataclass
class FrankyConfig:
    robot_ip: str
    relative_dynamics_factor: float = 0.05
    quaternion_order: Literal["xyzw", "wxyz"] = "xyzw"
    gripper: bool = True
    gripper_speed: float = 0.1
    grasp_force: float = 20.0
    gripper_max_width: float = 0.08
    gripper_close_above: float = 0.5
    gripper_open_below: float = -0.5
    home_position: tuple[float, float, float] = (0.45, 0.0, 0.35)
    home_quaternion: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)

    def validate(self) -> None:
        if not 0.0 < self.relative_dynamics_factor <= 1.0:
            raise ValueError(f"relative_dynamics_factor must be in (0, 1], got {self.relative_dynamics_factor}")


def load_franky_config(path=None, overrides=()) -> FrankyConfig:
    return load_config(resolve_config_path(path if path is not None else "fr3_franky"), FrankyConfig,
                       overrides=overrides)


class FrankyBackend:
    name = "franky"
    reset_runs_unlocked = False

    def __init__(self, config: Optional[str] = None, overrides=(), envelope=None, node=None):
        self.cfg = load_franky_config(config or None, overrides)
        self.envelope = envelope
        self.node = node
        self.robot = None
        self.gripper = None
        self._fr = None
        self._grip = GripperLogic(self.cfg.gripper_close_above, self.cfg.gripper_open_below)
        self.gripper_commands: list[str] = []

    def _quat_out(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float)
        return q if self.cfg.quaternion_order == "xyzw" else np.array([q[1], q[2], q[3], q[0]])

    def _quat_in(self, q) -> list[float]:
        q = [float(v) for v in q]
        return q if self.cfg.quaternion_order == "xyzw" else [q[3], q[0], q[1], q[2]]

    def start(self) -> None:
        try:
            import franky
        except ImportError as exc:
            raise RuntimeError("the franky backend needs franky-control (pip install franky-control) "
                               f"built for the lab's libfranka/robot version: {exc}") from exc
        self._fr = franky
        try:
            self.robot = franky.Robot(self.cfg.robot_ip)
            self.robot.relative_dynamics_factor = self.cfg.relative_dynamics_factor
            self.robot.recover_from_errors()
            if self.cfg.gripper:
                self.gripper = franky.Gripper(self.cfg.robot_ip)
        except Exception as exc:  # franky raises its own exception types
            raise RuntimeError(f"cannot connect to the FR3 at {self.cfg.robot_ip}: {exc}") from exc

    def read_state(self) -> Optional[RobotState]:
        try:
            cart = self.robot.current_cartesian_state
            joints = self.robot.current_joint_state
            ee = cart.pose.end_effector_pose
            pos = np.asarray(ee.translation, dtype=float).reshape(3)
            quat = self._quat_out(ee.quaternion)
            force = np.asarray(self.robot.state.O_F_ext_hat_K, dtype=float).reshape(-1)[:3]
            width = float(self.gripper.width) if self.gripper is not None else float("nan")
        except Exception:  # a lost connection reads as "no state": the bridge holds
            return None
        return RobotState(time.monotonic(), np.asarray(joints.position, dtype=float).reshape(7),
                          np.asarray(joints.velocity, dtype=float).reshape(7), pos,
                          quat / np.linalg.norm(quat), width, force)

    def _move(self, position, quaternion, asynchronous=True) -> None:
        fr = self._fr
        motion = fr.CartesianMotion(fr.Affine([float(v) for v in position], self._quat_in(quaternion)),
                                    fr.ReferenceType.Absolute)
        self.robot.move(motion, asynchronous=asynchronous)

    def command(self, target: CartesianTarget) -> None:
        self._move(target.position, target.quaternion)
        action = self._grip.update(float(target.gripper))
        if action is not None:
            self._send_gripper(action)

    def _send_gripper(self, action: str) -> None:
        self.gripper_commands.append(action)
        if self.gripper is None:
            return
        if action == "grasp":
            self.gripper.grasp_async(0.0, self.cfg.gripper_speed, self.cfg.grasp_force,
                                     epsilon_outer=self.cfg.gripper_max_width)
        else:
            self.gripper.move_async(self.cfg.gripper_max_width, self.cfg.gripper_speed)

    def hold(self) -> None:
        s = self.read_state()
        if s is not None:
            self._move(s.tcp_position, s.tcp_quaternion)

    def tick(self, dt: float) -> None:
        return None

    def cameras(self) -> list[CameraFrame]:
        return []

    def world_status(self) -> Optional[WorldStatus]:
        return None

    def reset(self, configuration: dict) -> dict:
        self.robot.recover_from_errors()
        self._grip.state = None
        if self._grip.update(-1.0):
            self._send_gripper("open")
        home = np.asarray(self.cfg.home_position, dtype=float)
        if self.envelope is not None and not self.envelope.contains(home):
            raise RuntimeError(f"home_position {home.tolist()} is outside the safety workspace box")
        self._move(home, self.cfg.home_quaternion, asynchronous=False)
        return dict(configuration)

    def stop(self) -> None:
        if self.robot is not None:
            try:
                self.hold()
            except Exception:
                pass
