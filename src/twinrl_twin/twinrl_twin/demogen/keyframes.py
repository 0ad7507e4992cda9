"""Seed demonstration -> named keyframes -> keyframes for a new object / target configuration.

A seed demo is a dataset episode (sim expert or real teleoperation). The TCP path is the
*commanded* path: the measured start pose (``proprio[14:17]`` position, ``[17:21]`` quaternion
xyzw) with the episode's delta actions applied through the safety envelope, exactly as the
robot side turned them into targets. The measured path lags the commanded one and stops short
of it in contact (an eraser pressed on the board, a block pushed into its slot), so actions
rebuilt from measured poses would lose the pressing; the commanded path replays the demo
exactly. The gripper schedule comes from ``actions[:, 6]`` and the initial object / target
poses from ``initial_configuration``.

Keyframes (indices into the demo's T+1 poses, strictly increasing):

* pick / insertion tasks: ``start, approach, grasp, lift, pre_place, place[, release][, end]``
  (``release`` / ``end`` are left out when the episode ends there already, e.g. an insertion
  that succeeds while the object is still held has no release);
* ``erase_whiteboard`` (no release before the end): ``start, approach, grasp, lift, pre_wipe,
  wipe_start, wipe_end[, end]``.

:func:`map_keyframes` moves them to a new configuration: ``approach`` / ``grasp`` follow the
object (``T_obj0' S_k T_grasp``, with ``S_k`` the object's yaw symmetry nearest the demo's TCP
yaw), ``lift`` keeps its offset from the grasp, the keyframes after the lift follow the target
rigidly (``T_target' A S_m A^-1 T_target^-1 T_tcp``, ``A`` the demo's final object pose in the
target frame, ``S_m`` again a symmetry of the object chosen for the TCP yaw nearest the demo's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.dataset import command_targets, recorded_commands
from twinrl_bringup.safety import commanded_path

from .path import REJECT_UNREACHABLE, CandidateRejected, Keyframe

# thresholds of the keyframe detection (metres / radians)
XY_TOL = 0.01           # "above" a pose: horizontal distance below this
ROT_TOL = 0.05          # same orientation
LIFT_MIN = 0.02         # the lift has ended once the TCP is this high above the grasp and moves sideways
RETREAT_DZ = 0.005      # the retreat after a release starts when the TCP rises this much
BOARD_TOL = 0.004       # wipe poses: within this of the board level (the TCP height of the wipe)
# the board level: this percentile of the TCP heights after the lift, not their minimum, so that
# one pose pressed deeper than the rest (action noise, a teleoperator's jitter) does not set it
BOARD_PERCENTILE = 10.0

PICK_NAMES = ("start", "approach", "grasp", "lift", "pre_place", "place", "release", "end")
ERASE_NAMES = ("start", "approach", "grasp", "lift", "pre_wipe", "wipe_start", "wipe_end", "end")
# keyframes that move with the object (before the lift) / with the target (after it)
OBJECT_FRAME = ("approach", "grasp")
TARGET_FRAME = ("pre_place", "place", "release", "end", "pre_wipe", "wipe_start", "wipe_end")


@dataclass
class SeedDemo:
    """The parts of a seed episode the generators use (base frame, float64)."""

    task: str
    positions: np.ndarray           # (T+1, 3) TCP positions
    quaternions: np.ndarray         # (T+1, 4) TCP quaternions x, y, z, w
    gripper: np.ndarray             # (T,) gripper commands of the actions
    object_pose: np.ndarray         # (7,) initial object pose
    target_pose: np.ndarray         # (7,) target / fixture pose
    episode_id: str = ""
    configuration: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(len(self.gripper))

    def matrix(self, index: int) -> np.ndarray:
        return tf.pose_to_matrix(self.positions[index], self.quaternions[index])


def load_seed_demo(path_or_episode) -> SeedDemo:
    """A :class:`SeedDemo` from an episode file (``.npz`` of a dataset) or an in-memory
    :class:`twinrl_bringup.dataset.EpisodeData`. ValueError (naming the episode and the field)
    when it is not a success, has no configuration or never closes the gripper."""
    from twinrl_bringup import dataset as ds

    if isinstance(path_or_episode, ds.EpisodeData):
        ep = path_or_episode
        where = f"episode {ep.episode_id or '<in memory>'}"
        eid = ep.episode_id or "in-memory"
    elif isinstance(path_or_episode, (str, Path)):
        path = Path(path_or_episode)
        if not path.is_file():
            raise ValueError(f"{path}: no such seed episode file")
        ep = ds.load_episode(path, images=False)
        where = str(path)
        eid = ep.episode_id or path.stem
    else:
        raise ValueError(f"seed demo: expected an episode file path or EpisodeData, got "
                         f"{type(path_or_episode).__name__}")
    if not ep.is_success:
        raise ValueError(f"{where}: success: the seed episode is not a success")
    cfg = ep.initial_configuration or {}
    poses = {key: _config_pose(cfg, key, f"{where}: initial_configuration")
             for key in ("object_pose", "target_pose")}
    proprio = np.asarray(ep.observations.get("proprio") if isinstance(ep.observations, dict) else None,
                         dtype=float)
    T = len(ep.actions)
    if proprio.ndim != 2 or proprio.shape[0] != T + 1 or proprio.shape[1] < 22:
        raise ValueError(f"{where}: observations.proprio: expected ({T + 1}, 22), got {proprio.shape}")
    gripper = np.asarray(ep.actions, dtype=float)[:, 6]
    if not np.any(gripper > 0):
        raise ValueError(f"{where}: actions[:, 6]: the gripper never closes (no grasp in the seed demo)")
    quats = proprio[:, 17:21]
    norms = np.linalg.norm(quats, axis=1)
    if np.any(norms < 1e-6):
        raise ValueError(f"{where}: observations.proprio[:, 17:21]: zero TCP quaternion")
    quats = tf.sign_continuous(quats / norms[:, None])      # for clean slerps
    recorded = recorded_commands(ep.observations, T, where)
    if recorded is not None:        # the targets the robot side really had (force stops included)
        positions, quats = command_targets(proprio, recorded)
    else:
        positions, quats = commanded_path(proprio[0, 14:17], quats[0], np.asarray(ep.actions, dtype=float),
                                          where=where)
    return SeedDemo(task=ep.task, positions=positions, quaternions=quats, gripper=gripper,
                    object_pose=poses["object_pose"], target_pose=poses["target_pose"], episode_id=str(eid),
                    configuration=dict(cfg))


# ----------------------------------------------------------------------------- extraction
def _keyframe(demo: SeedDemo, name: str, index: int, attached: bool) -> Keyframe:
    g = float(demo.gripper[min(index, demo.length - 1)])
    return Keyframe(name=name, index=int(index), position=demo.positions[index].copy(),
                    quaternion=demo.quaternions[index].copy(), gripper=g, attached=attached)


def _first(cond: np.ndarray, lo: int, hi: int) -> Optional[int]:
    """First index i in [lo, hi) with cond[i]."""
    idx = np.flatnonzero(cond[lo:hi])
    return int(lo + idx[0]) if len(idx) else None


def _last(cond: np.ndarray, lo: int, hi: int) -> Optional[int]:
    idx = np.flatnonzero(cond[lo:hi])
    return int(lo + idx[-1]) if len(idx) else None


def _above_index(demo: SeedDemo, lo: int, goal: int) -> int:
    """The first pose in (lo, goal) above ``goal`` (same x/y and orientation): where the vertical
    move onto ``goal`` starts; ``goal - 1`` when there is none."""
    P, Q = demo.positions, demo.quaternions
    near = np.linalg.norm(P[:, :2] - P[goal, :2], axis=1) < XY_TOL
    same = np.array([tf.quat_angle(Q[i], Q[goal]) < ROT_TOL for i in range(len(P))])
    i = _first(near & same & (P[:, 2] > P[goal, 2] + 0.01), lo + 1, goal)
    return i if i is not None else goal - 1


def extract_keyframes(demo: SeedDemo) -> list[Keyframe]:
    """Named keyframes of a seed demo (see module doc), indices strictly increasing."""
    T = demo.length
    P = demo.positions
    closed = demo.gripper > 0
    g = int(np.argmax(closed))
    if g < 2:
        raise ValueError(f"seed demo {demo.episode_id}: the gripper closes at step {g}; no approach before the grasp")
    opened = _first(~closed, g + 1, T)
    erase = demo.task == "erase_whiteboard"
    # the end of the transport: the release (or the last pose when the object stays in the hand)
    stop = opened if (opened is not None and not erase) else T

    # lift: last pose after the grasp that is still above the grasp point and clearly raised
    zmax = float(np.max(P[g:stop + 1, 2]))
    rise = min(LIFT_MIN, 0.5 * (zmax - P[g, 2]))
    near_g = np.linalg.norm(P[:, :2] - P[g, :2], axis=1) < XY_TOL
    lift = _last(near_g & (P[:, 2] >= P[g, 2] + rise), g + 1, stop)
    if lift is None:
        lift = _first(P[:, 2] >= P[g, 2] + rise, g + 1, stop) or g + 1
    if lift >= stop - 1:
        raise ValueError(f"seed demo {demo.episode_id}: no transport after the lift (lift at {lift}, end {stop})")

    approach = _above_index(demo, 0, g)
    if approach <= 0:
        raise ValueError(f"seed demo {demo.episode_id}: no approach pose between the start and the grasp")
    idx: list[tuple[str, int]] = [("start", 0), ("approach", approach), ("grasp", g), ("lift", lift)]

    if erase:
        zlow = float(np.percentile(P[lift:T + 1, 2], BOARD_PERCENTILE))
        on_board = P[:, 2] <= zlow + BOARD_TOL
        ws = _first(on_board, lift + 1, T + 1)
        we = _last(on_board, lift + 1, T + 1)
        pre = _above_index(demo, lift, ws) if ws is not None else None
        if ws is None or we is None or we <= ws or pre is None or pre <= lift:
            raise ValueError(f"seed demo {demo.episode_id}: no wipe on the board after the lift")
        idx += [("pre_wipe", pre), ("wipe_start", ws), ("wipe_end", we)]
        if we < T:
            idx.append(("end", T))
    else:
        place = stop
        pre = _above_index(demo, lift, place)
        if pre <= lift:
            raise ValueError(f"seed demo {demo.episode_id}: no pre-place pose between the lift and the place")
        idx += [("pre_place", pre), ("place", place)]
        if opened is not None:
            rel = _first(P[:, 2] >= P[place, 2] + RETREAT_DZ, place + 1, T + 1)
            rel = (rel - 1) if rel is not None else T
            if place < rel < T:
                idx.append(("release", rel))
        if idx[-1][1] < T:
            idx.append(("end", T))
    # the object is in the hand from the grasp until the gripper opens at the place pose
    release_at = opened if (opened is not None and not erase) else T + 1
    out = []
    for name, i in idx:
        out.append(_keyframe(demo, name, i, g <= i <= release_at))
    if any(b.index <= a.index for a, b in zip(out, out[1:])):
        raise ValueError(f"seed demo {demo.episode_id}: keyframe indices not increasing: "
                         f"{[(k.name, k.index) for k in out]}")
    return out


def _by_name(keyframes, name: str) -> Keyframe:
    for k in keyframes:
        if k.name == name:
            return k
    raise ValueError(f"keyframes: no {name!r} keyframe (have {[k.name for k in keyframes]})")


def _place_keyframe(keyframes) -> Keyframe:
    for name in ("place", "wipe_start"):
        for k in keyframes:
            if k.name == name:
                return k
    raise ValueError(f"keyframes: no 'place' or 'wipe_start' keyframe (have {[k.name for k in keyframes]})")


def grasp_in_object(demo: SeedDemo, keyframes) -> np.ndarray:
    """4x4 ``T_grasp = inv(T_obj0) @ T_tcp(grasp)``: the TCP in the object's initial frame."""
    return tf.invert(tf.pose7_to_matrix(demo.object_pose)) @ _by_name(keyframes, "grasp").matrix()


def place_in_target(demo: SeedDemo, keyframes) -> np.ndarray:
    """4x4 ``inv(T_target) @ T_tcp(place)`` (``wipe_start`` for erase_whiteboard)."""
    return tf.invert(tf.pose7_to_matrix(demo.target_pose)) @ _place_keyframe(keyframes).matrix()


def in_hand_xy(demo: SeedDemo, keyframes, task) -> Optional[np.ndarray]:
    """Insertion tasks: the held object's origin in the TCP frame's x / y (m) that the seed demo
    implies. The demo succeeded, so at its place keyframe the object was on the fixture's axis
    (the target's origin); its offset from the TCP there is where the cell's physics left it in
    the hand, which differs from the twin's "centred where the fingers met it" by the slide of the
    object along the pads while they close and lift (2.5 mm in the sim world's hexagon demos,
    more than the slot's clearance). None for the other tasks, whose place is not that precise.
    Used as the twin's ``in_hand_xy`` reset option when candidates run."""
    task_obj = _task_obj(task)
    from ..sim.tasks import InsertHexagon

    if not isinstance(task_obj, InsertHexagon):            # insert_hexagon and insert_triple_column
        return None
    T_place = _place_keyframe(keyframes).matrix()
    d = np.array([demo.target_pose[0] - T_place[0, 3], demo.target_pose[1] - T_place[1, 3], 0.0])
    return (T_place[:3, :3].T @ d)[:2]


def _in_hand(T_grasp: np.ndarray, xy: Optional[np.ndarray]) -> np.ndarray:
    """The object in the TCP frame: the grasp's, with the in-hand x / y replaced when known."""
    T = tf.invert(T_grasp)
    if xy is not None:
        T[:2, 3] = xy
    return T


# ----------------------------------------------------------------------------- mapping
def _rot_z(angle: float) -> np.ndarray:
    return tf.make_transform((0.0, 0.0, 0.0), tf.quat_from_euler("z", angle))


def _yaw_diff(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def _symmetries(period: Optional[float]) -> list[float]:
    if not period:
        return [0.0]
    n = max(1, int(round(2 * math.pi / period)))
    return [k * period for k in range(-n, n + 1)]


def _nearest_symmetric(make, period, yaw_ref: float) -> tuple[np.ndarray, float]:
    """(pose, angle) among ``make(angle)`` for the object's symmetric yaws whose TCP yaw is
    nearest ``yaw_ref`` (ties: the smaller symmetry rotation)."""
    best = None
    for ang in _symmetries(period):
        T = make(ang)
        key = (round(_yaw_diff(tf.yaw_of(tf.matrix_to_quat(T[:3, :3])), yaw_ref), 9), abs(ang))
        if best is None or key < best[0]:
            best = (key, T, ang)
    return best[1], best[2]


def _workspace():
    from twinrl_bringup.safety import SafetyEnvelope, load_safety_config

    return SafetyEnvelope(load_safety_config())


def _task_obj(task):
    if isinstance(task, str):
        from ..sim.config import load_task_config
        from ..sim.tasks import make_task

        return make_task(load_task_config(task))
    if not hasattr(task, "grasp_symmetry"):
        raise ValueError(f"task: expected a task name or a task object with grasp_symmetry, got {type(task).__name__}")
    return task


def _config_pose(configuration: dict, key: str, what: str = "configuration") -> np.ndarray:
    """``configuration[key]`` as a checked 7-vector with a unit quaternion; errors name
    ``what.key``."""
    if not isinstance(configuration, dict):
        raise ValueError(f"{what}: expected a dict with object_pose / target_pose, got {type(configuration).__name__}")
    v = configuration.get(key)
    try:
        arr = np.asarray(v, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if v is None or arr.shape != (7,) or not np.all(np.isfinite(arr)) or np.linalg.norm(arr[3:]) < 1e-9:
        raise ValueError(f"{what}.{key}: expected [x, y, z, qx, qy, qz, qw], got {v!r}")
    arr[3:] = tf.normalize_quat(arr[3:])
    return arr


def map_keyframes(demo: SeedDemo, keyframes, configuration: dict, task, workspace=None) -> list[Keyframe]:
    """The demo's keyframes for a new configuration (``object_pose`` and, optionally,
    ``target_pose``: 7-lists x y z qx qy qz qw; a missing target keeps the demo's). ``task``: the
    task object (``env.task_obj``) or its name. Raises
    ``CandidateRejected(REJECT_UNREACHABLE)`` when a mapped pose leaves the workspace box."""
    task_obj = _task_obj(task)
    obj_new = _config_pose(configuration, "object_pose")
    tgt_new = (_config_pose(configuration, "target_pose") if configuration.get("target_pose") is not None
               else demo.target_pose.copy())
    period = getattr(task_obj, "grasp_symmetry", None)
    T_obj0, T_obj0n = tf.pose7_to_matrix(demo.object_pose), tf.pose7_to_matrix(obj_new)
    T_tgt, T_tgtn = tf.pose7_to_matrix(demo.target_pose), tf.pose7_to_matrix(tgt_new)

    kg = _by_name(keyframes, "grasp")
    T_g = kg.matrix()
    T_grasp = tf.invert(T_obj0) @ T_g
    T_g_new, _ = _nearest_symmetric(lambda a: T_obj0n @ _rot_z(a) @ T_grasp, period, tf.yaw_of(kg.quaternion))

    # the demo's final object pose in the target frame (the object rigid in the hand, where the
    # demo implies it was held)
    kp = _place_keyframe(keyframes)
    A = tf.invert(T_tgt) @ kp.matrix() @ _in_hand(T_grasp, in_hand_xy(demo, keyframes, task_obj))
    T_place_new, ang = _nearest_symmetric(lambda a: T_tgtn @ A @ _rot_z(a) @ tf.invert(A) @ tf.invert(T_tgt)
                                          @ kp.matrix(), period, tf.yaw_of(kp.quaternion))
    M = T_tgtn @ A @ _rot_z(ang) @ tf.invert(A) @ tf.invert(T_tgt)        # transport map (rigid)

    env = workspace or _workspace()
    out = []
    for k in keyframes:
        T = k.matrix()
        if k.name == "start":
            Tn = T
        elif k.name in OBJECT_FRAME:
            Tn = T_g_new @ tf.invert(T_g) @ T
        elif k.name == "lift":
            Tn = np.eye(4)
            Tn[:3, 3] = T_g_new[:3, 3] + (T[:3, 3] - T_g[:3, 3])
            Tn[:3, :3] = (T_g_new[:3, :3] @ T_g[:3, :3].T) @ T[:3, :3]
        elif k.name in TARGET_FRAME:
            Tn = M @ T
        else:
            raise ValueError(f"keyframes: unknown keyframe name {k.name!r}")
        p, q = tf.matrix_to_pose(Tn)
        if np.dot(q, k.quaternion) < 0:
            q = -q
        if not env.contains(p, tol=1e-6):
            raise CandidateRejected(REJECT_UNREACHABLE, f"keyframe {k.name} at {np.round(p, 3).tolist()} is outside "
                                    f"the workspace box {env.box_min.tolist()}..{env.box_max.tolist()}")
        out.append(Keyframe(name=k.name, index=k.index, position=p, quaternion=q, gripper=k.gripper,
                            attached=k.attached))
    return out


__all__ = ["SeedDemo", "load_seed_demo", "extract_keyframes", "grasp_in_object", "place_in_target",
           "in_hand_xy", "map_keyframes", "PICK_NAMES", "ERASE_NAMES"]
