"""Data model shared by the demonstration generators: keyframes, end-effector paths, rejections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf

CONTROL_RATE_HZ = 10.0

# Why a candidate was not kept (the keys of a run's rejection counts).
REJECT_UNREACHABLE = "unreachable"          # a keyframe pose outside the workspace / safety envelope
REJECT_IK = "ik_failure"                    # no joint solution at a keyframe
REJECT_PLANNER_TIMEOUT = "planner_timeout"  # the planner found no path in its time budget
REJECT_PLANNER = "planner_failure"          # the planner failed for another reason (MoveIt error code, ...)
REJECT_COLLISION = "collision"              # the arm touched the scene while executing in the twin
REJECT_TASK_FAILED = "task_failed"          # executed without collision but the twin reported no success
REJECT_ERROR = "error"                      # an unexpected exception (message kept)
REASONS = (REJECT_UNREACHABLE, REJECT_IK, REJECT_PLANNER_TIMEOUT, REJECT_PLANNER, REJECT_COLLISION,
           REJECT_TASK_FAILED, REJECT_ERROR)


@dataclass
class Keyframe:
    """A named end-effector pose of a demonstration (base frame) and the gripper command there.

    ``index`` is the step of the seed demo it came from (the demo's pose before action
    ``index``); ``attached`` is True while the object is in the hand (planning checks the
    object's collisions too)."""

    name: str
    index: int
    position: np.ndarray        # (3,)
    quaternion: np.ndarray      # (4,) x, y, z, w
    gripper: float              # -1 open .. 1 closed (the action convention)
    attached: bool = False

    def matrix(self) -> np.ndarray:
        return tf.pose_to_matrix(self.position, self.quaternion)


@dataclass
class EEPath:
    """End-effector path at the control rate: pose k is where the TCP should be after k actions
    (pose 0 is the start); ``gripper[k]`` is the command of action k (N-1 entries)."""

    positions: np.ndarray       # (N, 3)
    quaternions: np.ndarray     # (N, 4) x, y, z, w
    gripper: np.ndarray         # (N-1,)
    segments: list = field(default_factory=list)   # (name, first pose index) for reports

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=float).reshape(-1, 3)
        self.quaternions = np.asarray(self.quaternions, dtype=float).reshape(-1, 4)
        self.gripper = np.asarray(self.gripper, dtype=float).reshape(-1)
        n = len(self.positions)
        if len(self.quaternions) != n or len(self.gripper) != n - 1 or n < 2:
            raise ValueError(f"EEPath: {n} positions, {len(self.quaternions)} quaternions and "
                             f"{len(self.gripper)} gripper commands (need N, N and N-1, N >= 2)")
        if not (np.all(np.isfinite(self.positions)) and np.all(np.isfinite(self.quaternions))
                and np.all(np.isfinite(self.gripper))):
            raise ValueError("EEPath: non-finite pose or gripper value")

    def __len__(self) -> int:
        return len(self.gripper)

    def actions(self) -> np.ndarray:
        """(N-1, 7) delta actions ``[dp (base frame), rotation vector (base frame), gripper]``
        that move the commanded target along the path (the sim/twin action convention)."""
        dp = np.diff(self.positions, axis=0)
        rv = np.stack([tf.rotation_between(self.quaternions[k], self.quaternions[k + 1])
                       for k in range(len(self.gripper))])
        return np.concatenate([dp, rv, self.gripper[:, None]], axis=1)

    def max_step(self) -> tuple[float, float]:
        """Largest translation (m) and rotation (rad) of one action."""
        a = self.actions()
        return float(np.max(np.linalg.norm(a[:, :3], axis=1))), float(np.max(np.linalg.norm(a[:, 3:6], axis=1)))


@dataclass
class Rejection:
    """A candidate that was not kept: ``reason`` is one of :data:`REASONS`."""

    reason: str
    detail: str = ""
    configuration: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r} (known: {', '.join(REASONS)})")


class CandidateRejected(Exception):
    """Raised inside a generator to reject the current candidate."""

    def __init__(self, reason: str, detail: str = ""):
        self.rejection = Rejection(reason, detail)
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Candidate:
    """A kept demonstration: the episode (dataset format, source twin) and how it was made."""

    episode: object             # twinrl_bringup.dataset.EpisodeData
    path: EEPath
    method: str
    configuration: dict
    seconds: float = 0.0
    info: Optional[dict] = None
