"""How the twin's arm follows its joint targets, fitted to recorded demos of the robot.

The twin moves each arm joint per control step by a second-order rule (``InteractionConfig``):
``dq_t = damping_j * dq_(t-1) + gain_j * (q_des_t - q_(t-1))``. The robot's servos differ per
joint (stiffness, damping, inertia), and with one gain for all joints the TCP drifts off the
robot's path where joints lag by different amounts: on erase_whiteboard, descending 4 cm a step
with 1 cm of x, the twin's TCP was 7-8 mm behind the sim's along x while their heights agreed.

:func:`fit_arm_tracking` replays the demos' commanded targets in the twin (no rendering) to get
the joint targets ``q_des`` of each step, then fits ``(gain_j, damping_j)`` per joint to the
joint positions the demos recorded, by least squares (scipy, a soft-L1 loss: contact and
force stops are outliers of this model). :func:`write_arm_tracking` stores the fit in the
twin's ``twin.json`` (``arm_tracking``), and every TwinEnv of that twin then follows it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import dataset as ds

__all__ = ["simulate_tracking", "tracking_data", "fit_arm_tracking", "write_arm_tracking", "ArmTrackingError"]

GAIN_BOUNDS = (0.02, 1.0)
DAMPING_BOUNDS = (0.0, 0.95)


class ArmTrackingError(ValueError):
    """Demos that cannot be fitted (none, another task, no commanded targets, non-finite)."""


def simulate_tracking(q0: np.ndarray, q_des: np.ndarray, gain, damping) -> np.ndarray:
    """Joint positions (T + 1, J) from ``q0`` following ``q_des`` (T, J) by the twin's rule."""
    q = np.empty((len(q_des) + 1, q_des.shape[1]))
    q[0] = q0
    dq = np.zeros(q_des.shape[1])
    for t in range(len(q_des)):
        dq = damping * dq + gain * (q_des[t] - q[t])
        q[t + 1] = q[t] + dq
    return q


def tracking_data(env, paths, max_steps: Optional[int] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per demo, ``(q_des (T, 7), q_robot (T + 1, 7))``: the twin's joint targets when it is
    steered to the demo's commanded targets, and the joint positions the demo recorded."""
    from .demogen.replay import action_towards

    out = []
    for p in paths:
        ep = ds.load_episode(p, images=False)
        if ep.task != env.task:
            raise ArmTrackingError(f"{p}: a {ep.task!r} episode, the twin is for {env.task!r}")
        commands = ds.recorded_commands(ep.observations, ep.length, str(p))
        if commands is None:
            raise ArmTrackingError(f"{p}: no commanded targets (obs.command): the fit needs them")
        P, Q = ds.command_targets(ep.observations["proprio"], commands)
        q_robot = np.asarray(ep.observations["proprio"][:, :7], float)
        if not (np.all(np.isfinite(q_robot)) and np.all(np.isfinite(P)) and np.all(np.isfinite(Q))):
            raise ArmTrackingError(f"{p}: non-finite joint positions or targets")
        T = len(ep.actions) if max_steps is None else min(len(ep.actions), int(max_steps))
        obs, _ = env.reset(options={"configuration": ep.initial_configuration})
        gap = float(np.abs(np.asarray(obs["proprio"][:7], float) - q_robot[0]).max())
        if gap > 0.02:
            raise ArmTrackingError(f"{p}: starts {gap:.3f} rad away from the twin's reset joints")
        q_des = np.empty((T, 7))
        for k in range(T):
            p_t, q_t = env.target_pose
            env.step(action_towards(p_t, q_t, P[k + 1], Q[k + 1], ep.actions[k, 6]))
            q_des[k] = env.joint_targets
        out.append((q_des, q_robot[:T + 1]))
    return out


def _tcp_rms(env, data, gain, damping) -> float:
    """RMS distance (m) between the TCP at the simulated and at the recorded joint positions."""
    err = []
    for q_des, q_rob in data:
        q = simulate_tracking(q_rob[0], q_des, gain, damping)
        for a, b in zip(q[1:], q_rob[1:]):
            err.append(np.linalg.norm(env.ik.forward(a)[0] - env.ik.forward(b)[0]))
    return float(np.sqrt(np.mean(np.square(err))))


def fit_arm_tracking(twin, demos, max_episodes: int = 12, max_steps: Optional[int] = 80) -> dict:
    """Fit the twin's per-joint tracking to recorded demos (files or dataset directories).
    Returns ``{"gain": [7], "damping": [7], "episodes", "steps", "tcp_rms_mm_before",
    "tcp_rms_mm_after", "joint_rms_deg_before", "joint_rms_deg_after"}``; "before" is the
    twin's tracking as it was (its config or an earlier fit)."""
    from scipy.optimize import least_squares

    from .demogen.replay import episode_paths
    from .twin_env import make_twin_env

    paths = episode_paths(demos)[:max_episodes]
    if not paths:
        raise ArmTrackingError(f"no episodes in {demos}")
    env = make_twin_env(twin, render=False)
    try:
        data = tracking_data(env, paths, max_steps)
        g0, d0 = env.arm_tracking
        gain, damping = g0.copy(), d0.copy()
        for j in range(7):
            def residuals(x, j=j):
                return np.concatenate([simulate_tracking(qr[0, j:j + 1], qd[:, j:j + 1], x[0], x[1])[1:, 0]
                                       - qr[1:, j] for qd, qr in data])
            scale = max(float(np.std(np.concatenate([qr[:, j] for _, qr in data]))), 1e-3)
            res = least_squares(residuals, [g0[j], d0[j]], bounds=([GAIN_BOUNDS[0], DAMPING_BOUNDS[0]],
                                                                   [GAIN_BOUNDS[1], DAMPING_BOUNDS[1]]),
                                loss="soft_l1", f_scale=0.02 * scale)
            gain[j], damping[j] = res.x
        q_err = {}
        for name, (g, d) in (("before", (g0, d0)), ("after", (gain, damping))):
            e = np.concatenate([simulate_tracking(qr[0], qd, g, d)[1:] - qr[1:] for qd, qr in data])
            q_err[name] = float(np.degrees(np.sqrt(np.mean(np.square(e)))))
        out = {"gain": [round(float(v), 5) for v in gain], "damping": [round(float(v), 5) for v in damping],
               "episodes": len(data), "steps": int(sum(len(qd) for qd, _ in data)),
               "tcp_rms_mm_before": round(1000 * _tcp_rms(env, data, g0, d0), 2),
               "tcp_rms_mm_after": round(1000 * _tcp_rms(env, data, gain, damping), 2),
               "joint_rms_deg_before": round(q_err["before"], 4), "joint_rms_deg_after": round(q_err["after"], 4),
               "demos": [str(p) for p in paths]}
    finally:
        env.close()
    return out


def write_arm_tracking(twin_dir, fit: dict) -> Path:
    """Store ``fit`` (from :func:`fit_arm_tracking`) as the twin's ``arm_tracking`` in its
    twin.json (written atomically)."""
    from .twin_assets import TWIN_FILE
    from .twin_env import arm_gains

    arm_gains(fit["gain"], "arm_tracking gain")
    arm_gains(fit["damping"], "arm_tracking damping")
    path = Path(twin_dir) / TWIN_FILE
    meta = json.loads(path.read_text())
    meta["arm_tracking"] = fit
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return path
