"""The safety envelope shared by the real robot (fr3_bridge) and the sim world.

One object, :class:`SafetyEnvelope`, turns a 7-D delta action into the next Cartesian target
of the TCP and guarantees, for every input, that

* a non-finite (NaN/inf) or malformed action is rejected (``accepted=False``; the caller
  keeps its previous target) and the reason is named;
* the translation of one step is at most ``max_translation_step`` (and, when the caller
  passes the elapsed time, at most ``max_cartesian_velocity * dt``);
* the rotation of one step is at most ``max_rotation_step`` (``max_angular_velocity * dt``);
* the returned position lies inside the workspace box, always;
* the TCP does not tilt further than ``max_tilt`` from pointing straight down (a rotation that
  would increase the tilt beyond it is not applied);
* the gripper command lies in [-1, 1].

Joint limits (FR3) and the contact-force threshold live here too, so every world uses the
same numbers from ``config/safety.yaml``.

Actions: ``[dx, dy, dz, rx, ry, rz, gripper]``, metres and rotation vector (radians), base
frame ``fr3_link0``; quaternions (x, y, z, w).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from twinrl_bringup.config import load_config, resolve_config_path
from twinrl_bringup.transforms import normalize_quat, quat_multiply, rotvec_to_quat

__all__ = [
    "WorkspaceBox",
    "JointLimits",
    "SafetyConfig",
    "SafetyResult",
    "SafetyEnvelope",
    "load_safety_config",
    "tilt_angle",
]


@dataclass
class WorkspaceBox:
    """Axis-aligned box for the TCP position in the base frame (metres)."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]

    def validate(self) -> None:
        for i, (lo, hi) in enumerate(zip(self.min, self.max)):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"workspace bound {i} is not finite")
            if lo >= hi:
                raise ValueError(f"workspace min[{i}]={lo} must be below max[{i}]={hi}")


@dataclass
class JointLimits:
    """Position limits of the 7 arm joints (radians)."""

    lower: tuple[float, float, float, float, float, float, float]
    upper: tuple[float, float, float, float, float, float, float]

    def validate(self) -> None:
        for i, (lo, hi) in enumerate(zip(self.lower, self.upper)):
            if lo >= hi:
                raise ValueError(f"joint {i + 1}: lower {lo} must be below upper {hi}")


@dataclass
class SafetyConfig:
    workspace: WorkspaceBox
    joint_limits: JointLimits
    max_translation_step: float = 0.05      # m per control step
    max_rotation_step: float = 0.25         # rad per control step
    max_cartesian_velocity: float = 0.5     # m/s (applied when the caller passes dt)
    max_angular_velocity: float = 2.5       # rad/s (applied when the caller passes dt)
    max_tilt: float = 1.2                   # rad between the TCP z axis and straight down
    force_threshold: float = 30.0           # N, norm of the external TCP force -> stop
    watchdog_timeout: float = 0.2           # s without a fresh action -> hold
    control_period: float = 0.1             # s, nominal (10 Hz)

    def validate(self) -> None:
        positive = (
            "max_translation_step", "max_rotation_step", "max_cartesian_velocity",
            "max_angular_velocity", "max_tilt", "force_threshold", "watchdog_timeout",
            "control_period",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if self.max_tilt > math.pi:
            raise ValueError(f"max_tilt must be at most pi, got {self.max_tilt}")


@dataclass
class SafetyResult:
    position: np.ndarray          # (3,) inside the workspace box
    quaternion: np.ndarray        # (4,) x, y, z, w, unit norm
    gripper: float                # in [-1, 1]
    accepted: bool                # False: hold the previous target
    clipped: bool                 # accepted but changed to fit the envelope
    reason: str = ""              # why rejected / what was clipped ("" if nothing)
    clipped_terms: tuple = field(default_factory=tuple)


def load_safety_config(path=None, overrides: Sequence = ()) -> SafetyConfig:
    """Load ``config/safety.yaml`` (or ``path``) into a :class:`SafetyConfig`."""
    resolved = resolve_config_path(path if path is not None else "safety")
    return load_config(resolved, SafetyConfig, overrides=overrides)


def _norm(v: np.ndarray) -> float:
    """Euclidean norm without overflow for huge finite components."""
    m = float(np.max(np.abs(v))) if v.size else 0.0
    if m == 0.0:
        return 0.0
    return m * float(np.linalg.norm(v / m))


def tilt_angle(quaternion: np.ndarray) -> float:
    """Angle (rad) between the TCP z axis of ``quaternion`` (x, y, z, w) and -z of the base."""
    x, y, z, w = quaternion
    # third column of the rotation matrix = TCP z axis in the base frame; its z component:
    zz = 1.0 - 2.0 * (x * x + y * y)
    return math.acos(max(-1.0, min(1.0, -zz)))


class SafetyEnvelope:
    """Applies the envelope of :class:`SafetyConfig` to delta actions (see module doc)."""

    def __init__(self, cfg: Optional[SafetyConfig] = None):
        self.cfg = cfg if cfg is not None else load_safety_config()
        self.box_min = np.asarray(self.cfg.workspace.min, dtype=float)
        self.box_max = np.asarray(self.cfg.workspace.max, dtype=float)
        self.joint_lower = np.asarray(self.cfg.joint_limits.lower, dtype=float)
        self.joint_upper = np.asarray(self.cfg.joint_limits.upper, dtype=float)

    # -- positions ---------------------------------------------------------------------------
    def contains(self, position, tol: float = 1e-9) -> bool:
        p = np.asarray(position, dtype=float)
        return bool(p.shape == (3,) and np.all(np.isfinite(p))
                    and np.all(p >= self.box_min - tol) and np.all(p <= self.box_max + tol))

    def clip_position(self, position) -> np.ndarray:
        """Nearest point of the box; a non-finite position maps to the box centre."""
        p = np.asarray(position, dtype=float).reshape(3)
        if not np.all(np.isfinite(p)):
            return 0.5 * (self.box_min + self.box_max)
        return np.minimum(np.maximum(p, self.box_min), self.box_max)

    # -- the step ----------------------------------------------------------------------------
    def apply(self, action, target_position, target_quaternion, dt: Optional[float] = None) -> SafetyResult:
        """Next target from ``action`` applied to the current target (position, quaternion).

        ``dt`` (seconds since the previous accepted command) additionally limits the step to
        the configured Cartesian velocities; without it only the per-step limits apply.
        """
        cfg = self.cfg
        prev_p = np.asarray(target_position, dtype=float).reshape(-1)
        prev_q = np.asarray(target_quaternion, dtype=float).reshape(-1)
        hold_p, hold_q, problem = self._sanitise_target(prev_p, prev_q)

        def reject(reason: str) -> SafetyResult:
            return SafetyResult(hold_p.copy(), hold_q.copy(), 0.0, False, False, reason)

        if problem:
            return reject(problem)
        try:
            a = np.asarray(action, dtype=float).reshape(-1)
        except (TypeError, ValueError) as exc:
            return reject(f"malformed action: {exc}")
        if a.shape != (7,):
            return reject(f"malformed action: expected 7 values, got {a.size}")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            names = ("dx", "dy", "dz", "rx", "ry", "rz", "gripper")
            what = ", ".join(f"{names[i]}={a[i]}" for i in bad)
            return reject(f"non-finite action: {what}")

        clipped_terms = []
        # translation: step and velocity limits
        max_step = cfg.max_translation_step
        max_rot = cfg.max_rotation_step
        if dt is not None and math.isfinite(dt) and dt > 0:
            max_step = min(max_step, cfg.max_cartesian_velocity * dt)
            max_rot = min(max_rot, cfg.max_angular_velocity * dt)
        dp = a[:3]
        n = _norm(dp)
        if n > max_step:
            dp = dp * (max_step / n)
            clipped_terms.append(f"translation {n:.4g} m > {max_step:.4g} m")
        new_p = hold_p + dp
        inside = np.minimum(np.maximum(new_p, self.box_min), self.box_max)
        if not np.array_equal(inside, new_p):
            axes = "".join("xyz"[i] for i in range(3) if inside[i] != new_p[i])
            clipped_terms.append(f"workspace box ({axes})")
        new_p = inside

        # rotation: step limit, then tilt limit
        rv = a[3:6]
        angle = _norm(rv)
        if angle > max_rot:
            rv = rv * (max_rot / angle)
            clipped_terms.append(f"rotation {angle:.4g} rad > {max_rot:.4g} rad")
        new_q = quat_multiply(rotvec_to_quat(rv), hold_q)
        tilt_new = tilt_angle(new_q)
        if tilt_new > cfg.max_tilt and tilt_new > tilt_angle(hold_q) + 1e-12:
            new_q = hold_q.copy()
            clipped_terms.append(f"tilt {tilt_new:.3g} rad > {cfg.max_tilt:.3g} rad")

        g = float(a[6])
        if g > 1.0 or g < -1.0:
            clipped_terms.append(f"gripper {g:.4g} outside [-1, 1]")
            g = min(1.0, max(-1.0, g))

        return SafetyResult(new_p, new_q, g, True, bool(clipped_terms),
                            "; ".join(clipped_terms), tuple(clipped_terms))

    def _sanitise_target(self, p: np.ndarray, q: np.ndarray):
        """(position inside the box, unit quaternion, problem text or "")."""
        problem = ""
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            problem = "current target position is malformed or non-finite"
            p = 0.5 * (self.box_min + self.box_max)
        else:
            p = np.minimum(np.maximum(p, self.box_min), self.box_max)
        norm = float(np.linalg.norm(q)) if q.shape == (4,) and np.all(np.isfinite(q)) else 0.0
        if norm < 1e-6:
            problem = problem or "current target quaternion is malformed or zero"
            q = np.array([1.0, 0.0, 0.0, 0.0])   # TCP pointing down
        else:
            q = q / norm
        return p, q, problem

    # -- joints and force ----------------------------------------------------------------------
    def clip_joints(self, q) -> np.ndarray:
        """Joint positions clipped to the FR3 limits; non-finite input raises ValueError."""
        q = np.asarray(q, dtype=float).reshape(-1)
        if q.shape != (7,):
            raise ValueError(f"expected 7 joint positions, got {q.size}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"non-finite joint positions: {q.tolist()}")
        return np.minimum(np.maximum(q, self.joint_lower), self.joint_upper)

    def joints_within_limits(self, q, tol: float = 1e-9) -> bool:
        q = np.asarray(q, dtype=float).reshape(-1)
        return bool(q.shape == (7,) and np.all(np.isfinite(q))
                    and np.all(q >= self.joint_lower - tol) and np.all(q <= self.joint_upper + tol))

    def force_exceeded(self, force) -> bool:
        """True when the external TCP force norm exceeds the threshold (or is not finite)."""
        if force is None:
            return False
        f = np.asarray(force, dtype=float).reshape(-1)
        if f.size == 0:
            return False
        if not np.all(np.isfinite(f)):
            return True
        return bool(np.linalg.norm(f[:3]) > self.cfg.force_threshold)


def action_towards(position, quaternion, goal_position, goal_quaternion, gripper: float) -> np.ndarray:
    """The (7,) delta action that moves the commanded target (position, quaternion) to the goal
    pose: what :meth:`SafetyEnvelope.apply` turns back into the goal within its step limits."""
    from twinrl_bringup.transforms import rotation_between

    dp = np.asarray(goal_position, dtype=float) - np.asarray(position, dtype=float)
    return np.concatenate([dp, rotation_between(quaternion, goal_quaternion), [float(gripper)]])


def commanded_path(p0, q0, actions, envelope: Optional[SafetyEnvelope] = None,
                   where: str = "actions") -> tuple[np.ndarray, np.ndarray]:
    """The targets the robot side made of delta ``actions`` (T, 7) from the start pose (p0, q0):
    each action through the safety envelope (an action it rejects leaves the target where it
    was). Returns positions (T+1, 3) and quaternions (T+1, 4), sign-continuous. Actions are
    relative to the previous target, so this is the arm's commanded path, which the measured
    path follows with a lag."""
    envelope = envelope or SafetyEnvelope(load_safety_config())
    actions = np.asarray(actions, dtype=float)
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{where}: non-finite values")
    P = [np.asarray(p0, dtype=float).reshape(3)]
    Q = [normalize_quat(np.asarray(q0, dtype=float).reshape(4))]
    for a in actions:
        res = envelope.apply(a, P[-1], Q[-1])
        if res.accepted:
            q = normalize_quat(res.quaternion)
            P.append(np.asarray(res.position, dtype=float))
            Q.append(-q if np.dot(q, Q[-1]) < 0 else q)
        else:
            P.append(P[-1].copy())
            Q.append(Q[-1].copy())
    return np.stack(P), np.stack(Q)
