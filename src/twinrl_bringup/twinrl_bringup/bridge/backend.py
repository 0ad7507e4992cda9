"""The contract between fr3_bridge and the thing that moves the arm.

fr3_bridge owns safety (envelope, watchdog, e-stop, arbitration); a backend only executes
targets that already passed it, and reports state. Backends: ``sim`` (MuJoCo world,
twinrl_twin.sim), ``real`` (franka_ros2 / ros2_control), ``franky`` (franky-control).
All poses are in the robot base frame ``fr3_link0``; quaternions are (x, y, z, w) as in
geometry_msgs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import numpy as np


@dataclass
class RobotState:
    stamp: float                               # seconds (backend clock)
    joint_positions: np.ndarray                # (7,) rad
    joint_velocities: np.ndarray               # (7,) rad/s
    tcp_position: np.ndarray                   # (3,) m
    tcp_quaternion: np.ndarray                 # (4,) x, y, z, w
    gripper_width: float                       # m
    external_force: Optional[np.ndarray] = None  # (3,) N at the TCP, if the backend knows it
    joint_names: tuple = tuple(f"fr3_joint{i}" for i in range(1, 8))


@dataclass
class CartesianTarget:
    position: np.ndarray                       # (3,) m, inside the safety envelope
    quaternion: np.ndarray                     # (4,) x, y, z, w
    gripper: float                             # -1 open ... +1 closed
    stamp: float = 0.0


@dataclass
class CameraFrame:
    name: str                                  # "third_person" or "wrist"
    image: np.ndarray                          # (H, W, 3) uint8 rgb
    frame_id: str                              # optical frame
    fx: float
    fy: float
    cx: float
    cy: float
    stamp: float = 0.0


@dataclass
class WorldStatus:
    """Task signal a backend can detect by itself (sim only; real relies on labels)."""
    reward: float = 0.0
    success: bool = False
    done: bool = False
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str

    def start(self) -> None:
        """Connect / build the world. Raise RuntimeError with a clear message on failure."""

    def read_state(self) -> RobotState: ...

    def command(self, target: CartesianTarget) -> None:
        """Track ``target`` (already inside the envelope) until the next command."""

    def hold(self) -> None:
        """Keep the current pose (watchdog, hold mode, e-stop)."""

    def tick(self, dt: float) -> None:
        """Advance one control period. Real backends return at once (hardware runs on its
        own clock); the sim backend steps physics by ``dt``."""

    def cameras(self) -> list[CameraFrame]:
        """Images this backend produces itself (sim); [] where a camera driver publishes."""

    def reset(self, configuration: dict) -> dict:
        """Set up an episode from a ResetConfiguration-like dict (task, object_pose,
        target_pose as [x,y,z,qx,qy,qz,qw], cell_row, cell_col, region, seed); return the
        configuration actually applied."""

    def world_status(self) -> Optional[WorldStatus]:
        """Reward/success when the backend can detect it (sim), else None."""

    def stop(self) -> None: ...
