"""Affine trajectory transfer: the seed demo's TCP path bent onto the mapped keyframes.

For each segment between consecutive keyframes ``k, k+1`` (demo poses ``a``, ``b``, new poses
``a'``, ``b'``) and each demo pose ``p(t)`` of it::

    tau(t) = clip((p(t) - a) . (b - a) / |b - a|^2, 0, 1)      (time fraction when |b - a| ~ 0)
    p'(t)  = a' + tau (b' - a') + (p(t) - (a + tau (b - a)))
    q'(t)  = slerp(dR_a, dR_b, tau) * q(t),    dR = R' R^-1 at the segment ends

so the segment ends land exactly on the new keyframes, and an unchanged configuration gives
the demo back. The demo's gripper schedule is kept. :func:`retime` then splits every step
longer than 0.045 m / 0.22 rad into equal sub-steps (same gripper command), so the path is
valid at 10 Hz under the safety envelope (0.05 m / 0.25 rad).
"""
from __future__ import annotations

import math

import numpy as np

from twinrl_bringup import transforms as tf

from .path import EEPath

MAX_STEP = 0.045        # m per action (the expert's limit; the envelope allows 0.05)
MAX_ROT = 0.22          # rad per action (envelope: 0.25)
_EPS = 1e-6             # a segment shorter than this uses the time fraction


def _check(demo, keyframes, new_keyframes) -> None:
    if len(keyframes) != len(new_keyframes) or len(keyframes) < 2:
        raise ValueError(f"keyframes: {len(keyframes)} demo keyframes and {len(new_keyframes)} new ones "
                         f"(need the same number, at least 2)")
    for a, b in zip(keyframes, new_keyframes):
        if a.name != b.name or a.index != b.index:
            raise ValueError(f"keyframes: demo keyframe {a.name}@{a.index} does not match new keyframe {b.name}@{b.index}")
    idx = [k.index for k in keyframes]
    if idx[0] != 0 or any(j <= i for i, j in zip(idx, idx[1:])) or idx[-1] > demo.length:
        raise ValueError(f"keyframes: indices {idx} must start at 0, increase strictly and end by {demo.length}")


def affine_map(demo, keyframes, new_keyframes) -> tuple[np.ndarray, np.ndarray]:
    """(positions, quaternions) of the demo poses 0..last keyframe mapped segment by segment
    (one pose per demo pose, no retiming)."""
    _check(demo, keyframes, new_keyframes)
    last = keyframes[-1].index
    P = np.empty((last + 1, 3))
    Q = np.empty((last + 1, 4))
    P[0], Q[0] = new_keyframes[0].position, new_keyframes[0].quaternion
    for (ka, kb), (na, nb) in zip(zip(keyframes, keyframes[1:]), zip(new_keyframes, new_keyframes[1:])):
        i0, i1 = ka.index, kb.index
        a, b = demo.positions[i0], demo.positions[i1]
        d = b - a
        dd = float(d @ d)
        t = np.arange(i0, i1 + 1)
        p = demo.positions[t]
        if dd > _EPS ** 2:
            tau = np.clip((p - a) @ d / dd, 0.0, 1.0)
        else:
            tau = (t - i0) / float(i1 - i0)
        tau[0], tau[-1] = 0.0, 1.0
        P[t] = na.position + tau[:, None] * (nb.position - na.position) + (p - (a + tau[:, None] * d))
        # orientation offsets at the ends, interpolated
        dRa = tf.Rotation.from_quat(na.quaternion) * tf.Rotation.from_quat(ka.quaternion).inv()
        dRb = tf.Rotation.from_quat(nb.quaternion) * tf.Rotation.from_quat(kb.quaternion).inv()
        dR = tf.slerp(dRa.as_quat(), dRb.as_quat(), tau)
        q = (tf.Rotation.from_quat(dR) * tf.Rotation.from_quat(demo.quaternions[t])).as_quat()
        P[i0], P[i1] = na.position, nb.position           # exact ends
        q[0], q[-1] = na.quaternion, nb.quaternion
        Q[t] = q
    return P, tf.sign_continuous(Q)


def retime(positions, quaternions, gripper, max_step: float = MAX_STEP, max_rot: float = MAX_ROT):
    """Split steps over ``max_step`` m / ``max_rot`` rad into equal sub-steps (linear position,
    slerp orientation, the step's gripper command repeated). Returns ``(positions, quaternions,
    gripper, index)`` with ``index[i]`` the new index of input pose ``i``."""
    P = np.asarray(positions, float)
    Q = np.asarray(quaternions, float)
    G = np.asarray(gripper, float).reshape(-1)
    if len(P) != len(Q) or len(G) != len(P) - 1:
        raise ValueError(f"retime: {len(P)} positions, {len(Q)} quaternions, {len(G)} gripper commands")
    if max_step <= 0 or max_rot <= 0:
        raise ValueError(f"retime: max_step ({max_step}) and max_rot ({max_rot}) must be positive")
    out_p, out_q, out_g = [P[0]], [Q[0]], []
    index = [0]
    for k in range(len(G)):
        dist = float(np.linalg.norm(P[k + 1] - P[k]))
        ang = tf.quat_angle(Q[k], Q[k + 1])
        n = max(1, math.ceil(max(dist / max_step, ang / max_rot) - 1e-4))   # the expert moves exactly max_step
        if n > 1:
            s = np.arange(1, n) / n
            qs = tf.slerp(Q[k], Q[k + 1], s)
            for j in range(n - 1):
                out_p.append(P[k] + s[j] * (P[k + 1] - P[k]))
                out_q.append(qs[j])
                out_g.append(G[k])
        out_p.append(P[k + 1])
        out_q.append(Q[k + 1])
        out_g.append(G[k])
        index.append(len(out_p) - 1)
    return np.array(out_p), tf.sign_continuous(out_q), np.array(out_g), np.array(index)


def affine_transfer(demo, keyframes, new_keyframes, max_step: float = MAX_STEP, max_rot: float = MAX_ROT) -> EEPath:
    """The new end-effector path (see module doc). ``path.segments`` lists ``(keyframe name,
    pose index in the new path)``."""
    P, Q = affine_map(demo, keyframes, new_keyframes)
    last = keyframes[-1].index
    G = np.asarray(demo.gripper[:last], float)
    P2, Q2, G2, index = retime(P, Q, G, max_step, max_rot)
    return EEPath(P2, Q2, G2, segments=[(k.name, int(index[k.index])) for k in new_keyframes])


__all__ = ["affine_map", "affine_transfer", "retime", "MAX_STEP", "MAX_ROT"]
