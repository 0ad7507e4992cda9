"""Affine trajectory transfer: the seed demo's TCP path bent onto the mapped keyframes.

For each segment between consecutive keyframes ``k, k+1`` (demo poses ``a``, ``b``, new poses
``a'``, ``b'``) and each demo pose ``p(t)`` of it::

    tau(t) = clip((p(t) - a) . (b - a) / |b - a|^2, 0, 1)      (time fraction when |b - a| ~ 0)
    p'(t)  = a' + tau (b' - a') + (p(t) - (a + tau (b - a)))
    q'(t)  = slerp(dR_a, dR_b, tau) * q(t),    dR = R' R^-1 at the segment ends

so the segment ends land exactly on the new keyframes, and an unchanged configuration gives
the demo back. The demo's gripper schedule is kept.

The mapped path is then timed one of two ways (``pace``):

* ``split`` (the default): every mapped step longer than 0.045 m / 0.22 rad is split into
  equal sub-steps (:func:`retime`). A run the seed demo made at the expert's full pace goes at
  half that pace as soon as the map lengthens its steps by a millimetre, so twin demos of
  placements farther than the seed's crawl where nearer ones go at full speed, and the gripper
  closes at nearly the same step whatever the distance.
* ``seed``: every run of the demo's moving steps (one gripper command, within one keyframe
  segment) is walked again along the mapped poses in the demo's own steps: the steps before
  its first full-pace one, as many full-pace steps as the new distance needs, the steps after
  its last full-pace one, scaled down to fit (:func:`run_steps`, :func:`retime_runs`). A
  placement farther away takes more steps at the demo's speed, a nearer one fewer, as the
  expert's closed loop does. Single steps and steps outside the runs (the demo standing still
  while its gripper moves) keep their count, split as above where needed.

``split`` stays the default because it trained better in the sim world (docs/policy.md, "The
seed's pace kept"). Either way an unchanged configuration gives the demo back, and the path is
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


MOVE_EPS = 1e-4         # m: a demo step shorter than this (and turning less than MOVE_EPS_ROT) stands still
MOVE_EPS_ROT = 1e-3     # rad


def _step_sizes(P, Q) -> tuple[np.ndarray, np.ndarray]:
    """Per step of a pose sequence: its distance (m) and its turn (rad)."""
    dp = np.linalg.norm(np.diff(P, axis=0), axis=1)
    dr = np.array([tf.quat_angle(Q[k], Q[k + 1]) for k in range(len(P) - 1)])
    return dp, dr


def effort(P, Q, max_step: float = MAX_STEP, max_rot: float = MAX_ROT) -> np.ndarray:
    """Per step of a pose sequence: the larger of (distance / max_step, angle / max_rot)."""
    dp, dr = _step_sizes(np.asarray(P, float), np.asarray(Q, float))
    return np.maximum(dp / max_step, dr / max_rot)


def poses_along(P, Q, step_effort, marks) -> tuple[list, list]:
    """Poses on the path ``P`` / ``Q`` (whose steps take ``step_effort``, :func:`effort`) at the
    cumulative efforts ``marks``: linear in position, slerp in orientation within a step."""
    s = np.concatenate([[0.0], np.cumsum(step_effort)])
    out_p, out_q = [], []
    for sj in marks:
        i = int(np.clip(np.searchsorted(s, sj, side="right") - 1, 0, len(step_effort) - 1))
        w = 0.0 if step_effort[i] <= 0 else float(np.clip((sj - s[i]) / step_effort[i], 0.0, 1.0))
        out_p.append(P[i] + w * (P[i + 1] - P[i]))
        out_q.append(tf.slerp(Q[i], Q[i + 1], w) if w > 0 else Q[i])
    return out_p, out_q


def moving_runs(positions, quaternions, gripper, breaks=(), max_step: float = MAX_STEP,
                max_rot: float = MAX_ROT) -> list[tuple[int, int, np.ndarray]]:
    """The runs of moving steps of a pose sequence: ``(i0, i1, pace)`` for the maximal stretches
    of steps ``i0 .. i1-1`` that each move (more than :data:`MOVE_EPS` m or
    :data:`MOVE_EPS_ROT` rad), share one gripper command and have no pose of ``breaks``
    strictly inside. ``pace[j]``: step ``i0 + j``'s larger of (distance / ``max_step``, angle /
    ``max_rot``), capped at 1."""
    P = np.asarray(positions, float)
    Q = np.asarray(quaternions, float)
    G = np.asarray(gripper, float).reshape(-1)
    if len(P) != len(Q) or len(G) != len(P) - 1:
        raise ValueError(f"moving_runs: {len(P)} positions, {len(Q)} quaternions, {len(G)} gripper commands")
    dp, dr = _step_sizes(P, Q)
    moving = (dp > MOVE_EPS) | (dr > MOVE_EPS_ROT)
    pace = np.minimum(np.maximum(dp / max_step, dr / max_rot), 1.0)
    cut = set(int(b) for b in breaks)
    runs, k = [], 0
    while k < len(G):
        if not moving[k]:
            k += 1
            continue
        i0 = k
        k += 1
        while k < len(G) and moving[k] and G[k] == G[i0] and k not in cut:
            k += 1
        runs.append((i0, k, pace[i0:k].copy()))
    return runs


def run_steps(pace, total: float) -> np.ndarray:
    """Step lengths (in the units of ``pace``) that cover ``total`` as the demo covered its run:
    the steps before its first full-pace step, as many full-pace steps as the distance needs
    (the demo's own steps from its first to its last full-pace one when their count is
    right), the steps after its last full-pace one, all scaled so that they add up to
    ``total`` (no step longer than the demo's longest). ``pace`` itself when ``total`` is its
    sum."""
    pace = np.asarray(pace, float)
    if len(pace) == 0 or not np.all(pace > 0) or not (np.isfinite(total) and total > 0):
        raise ValueError(f"run_steps: pace {pace!r} must be positive and non-empty, total {total!r} positive")
    top = float(pace.max())
    full = np.flatnonzero(pace >= top * (1 - 1e-3))
    head, middle, tail = pace[:full[0]], pace[full[0]:full[-1] + 1], pace[full[-1] + 1:]
    rest = total - head.sum() - tail.sum()
    m = max(0, int(math.ceil(rest / top - 1e-6)))
    steps = np.concatenate([head, middle if m == len(middle) else np.full(m, top), tail])
    return steps * (total / steps.sum())


def retime_runs(positions, quaternions, gripper, runs, max_step: float = MAX_STEP, max_rot: float = MAX_ROT):
    """Walk each run ``(i0, i1, pace)`` of :func:`moving_runs` (the demo's) again along the new
    poses ``positions[i0..i1]`` in the demo's steps (:func:`run_steps`); steps outside the
    runs go through :func:`retime`. Returns ``(positions, quaternions, gripper, index)`` as
    :func:`retime`: the runs' end poses are kept exactly, a pose inside a run maps to the new
    pose nearest to it."""
    P = np.asarray(positions, float)
    Q = tf.sign_continuous(np.asarray(quaternions, float))
    G = np.asarray(gripper, float).reshape(-1)
    if len(P) != len(Q) or len(G) != len(P) - 1:
        raise ValueError(f"retime_runs: {len(P)} positions, {len(Q)} quaternions, {len(G)} gripper commands")
    starts, last = {}, 0
    for i0, i1, pace in sorted(runs, key=lambda r: r[0]):
        if not (last <= i0 < i1 <= len(G)) or len(pace) != i1 - i0:
            raise ValueError(f"retime_runs: run ({i0}, {i1}) with {len(pace)} paces overlaps another or lies "
                             f"outside the path of {len(G)} steps")
        starts[i0] = (i1, pace)
        last = i1
    out_p, out_q, out_g = [P[0]], [Q[0]], []
    index = np.zeros(len(P), dtype=int)
    k = 0
    while k < len(G):
        run = starts.get(k)
        if run is None or (run[0] == k + 1 and effort(P[k:k + 2], Q[k:k + 2], max_step, max_rot)[0] <= 1.0):
            p, q, g, _ = retime(P[k:k + 2], Q[k:k + 2], G[k:k + 1], max_step, max_rot)
            out_p.extend(p[1:])
            out_q.extend(q[1:])
            out_g.extend(g)
            k += 1
            index[k] = len(out_p) - 1
            continue
        i1, pace = run
        c = effort(P[k:i1 + 1], Q[k:i1 + 1], max_step, max_rot)
        s = np.concatenate([[0.0], np.cumsum(c)])
        steps = run_steps(pace, float(s[-1])) if s[-1] > 0 else np.zeros(0)    # zero: the map stood the run still
        base = len(out_p) - 1
        p, q = poses_along(P[k:i1 + 1], Q[k:i1 + 1], c, np.cumsum(steps)[:-1])
        out_p.extend(p + [P[i1]])
        out_q.extend(q + [Q[i1]])
        out_g.extend([G[k]] * max(1, len(steps)))
        marks = np.concatenate([[0.0], np.cumsum(steps)]) if len(steps) else np.zeros(2)
        for j in range(k + 1, i1):                       # inner poses: the nearest new pose
            index[j] = base + int(np.argmin(np.abs(marks - s[j - k])))
        index[i1] = len(out_p) - 1
        k = i1
    return np.array(out_p), tf.sign_continuous(out_q), np.array(out_g), index


PACES = ("split", "seed")


def check_pace(pace: str) -> str:
    if pace not in PACES:
        raise ValueError(f"pace must be one of {PACES}, got {pace!r}")
    return pace


def time_path(positions, quaternions, gripper, pace: str, source, breaks=(), max_step: float = MAX_STEP,
              max_rot: float = MAX_ROT):
    """Time a path whose poses were moved from ``source`` (``(positions, quaternions)``, the
    same number of poses, the same ``gripper`` commands): ``split`` splits each step over the
    limits into equal sub-steps (:func:`retime`); ``seed`` walks the moving runs of ``source``
    (cut at ``breaks``, :func:`moving_runs`) again at its pace (:func:`retime_runs`). Returns
    ``(positions, quaternions, gripper, index)`` as :func:`retime`."""
    if check_pace(pace) == "split":
        return retime(positions, quaternions, gripper, max_step, max_rot)
    runs = moving_runs(source[0], source[1], gripper, breaks=breaks, max_step=max_step, max_rot=max_rot)
    return retime_runs(positions, quaternions, gripper, runs, max_step, max_rot)


def affine_transfer(demo, keyframes, new_keyframes, max_step: float = MAX_STEP, max_rot: float = MAX_ROT,
                    pace: str = "split") -> EEPath:
    """The new end-effector path (see module doc), timed with ``pace`` (:func:`time_path`, the
    seed demo's runs cut at its keyframes). ``path.segments`` lists ``(keyframe name, pose
    index in the new path)``."""
    P, Q = affine_map(demo, keyframes, new_keyframes)
    last = keyframes[-1].index
    P2, Q2, G2, index = time_path(P, Q, np.asarray(demo.gripper[:last], float), pace,
                                  (demo.positions[:last + 1], demo.quaternions[:last + 1]),
                                  breaks=[k.index for k in keyframes], max_step=max_step, max_rot=max_rot)
    return EEPath(P2, Q2, G2, segments=[(k.name, int(index[k.index])) for k in new_keyframes])


__all__ = ["PACES", "affine_map", "affine_transfer", "check_pace", "effort", "moving_runs", "poses_along", "retime", "retime_runs",
           "run_steps", "time_path", "MAX_STEP", "MAX_ROT"]
