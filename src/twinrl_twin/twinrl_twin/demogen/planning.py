"""The ``plan`` method: end-effector paths through mapped keyframes, planned in the twin.

A planner is a callable ``planner(env, demo, keyframes, new_keyframes) -> EEPath`` (``demo`` /
``keyframes`` are the seed demo's, ``new_keyframes`` the keyframes mapped to the candidate's
configuration). For each pair of consecutive keyframes (the env's current TCP pose first):

* short vertical approach / descent / lift / release moves (horizontal offset <= 2 cm) and
  other short moves (<= 5 cm) are straight Cartesian lines: interpolated, IK at every point
  (seeded by the previous one), every configuration checked;
* everything else is planned in joint space: :class:`OmplPlanner` with OMPL's RRTConnect on
  the FR3 joint box with :meth:`.collision.CollisionChecker.state_valid` (object attached or
  not) and ``og.PathSimplifier`` (shortcutting + B-spline smoothing); :class:`MoveItPlanner`
  with move_group's ``GetMotionPlan`` service (joint-space goal constraints).

Joint paths go to TCP poses by forward kinematics on the twin model; the TCP path is then
resampled at the control rate so that no action moves more than 0.045 m or 0.22 rad (and each
move takes at least 2 actions). The gripper command of a move is its start keyframe's; where a
keyframe changes the command (grasp, release) the arm holds still for as many actions as the
seed demo let the gripper close / open. Finally the path is tracked with the twin's own IK
(as the twin will execute it) and every tracked configuration is checked again.

Rejections (:class:`.path.CandidateRejected`): a keyframe outside the safety envelope ->
``unreachable``; IK residual above 2 mm / 0.02 rad -> ``ik_failure``; no exact OMPL solution in
``time_limit`` -> ``planner_timeout``; a keyframe or straight move in collision, a MoveIt error
code, a planned path the twin cannot track without contact -> ``planner_failure``.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import numpy as np

from twinrl_bringup import transforms as tf

from .collision import CollisionChecker
from .path import (REJECT_IK, REJECT_PLANNER, REJECT_PLANNER_TIMEOUT, REJECT_UNREACHABLE, CandidateRejected,
                   EEPath, Keyframe)
from .transfer import MAX_ROT, MAX_STEP, effort, poses_along   # the expert's per-action limits

IK_POS_TOL = 0.002          # m
IK_ROT_TOL = 0.02           # rad
LINE_LATERAL = 0.02         # m: a move with at most this horizontal offset is a straight line
LINE_SHORT = 0.05           # m: any move at most this long is a straight line
LINE_STEP = 0.01            # m between IK points of a straight line
DENSE_JOINT_STEP = 0.01     # rad between interpolated states of a joint-space path
# Steps the path waits after each planned (free-space) move and before each grasp or release
# that follows a move: the arm follows its targets with a lag of about one step at full speed
# and settles to < 2 mm within four (sim FR3, twin).
FREE_MOVE_SETTLE_STEPS = 4
MOVEIT_MISSING = ("MoveIt backend needs moveit_msgs (install ros-kilted-moveit-msgs or build it in the "
                  "workspace) and a running move_group")
ARM_JOINT_NAMES = tuple(f"fr3_joint{i}" for i in range(1, 8))


# --- helpers -------------------------------------------------------------------------------------

def _validate_keyframes(keyframes) -> list[Keyframe]:
    kfs = list(keyframes or [])
    if not kfs:
        raise ValueError("new_keyframes: need at least one keyframe")
    for i, k in enumerate(kfs):
        if not isinstance(k, Keyframe):
            raise TypeError(f"new_keyframes[{i}]: expected a Keyframe, got {type(k).__name__}")
        p, q = np.asarray(k.position, float), np.asarray(k.quaternion, float)
        if p.shape != (3,) or q.shape != (4,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            raise ValueError(f"new_keyframes[{i}] ({k.name!r}): position must be 3 and quaternion 4 finite values")
        if np.linalg.norm(q) < 1e-6:
            raise ValueError(f"new_keyframes[{i}] ({k.name!r}): zero quaternion")
        if not (math.isfinite(k.gripper) and -1.0 <= k.gripper <= 1.0):
            raise ValueError(f"new_keyframes[{i}] ({k.name!r}): gripper {k.gripper} outside [-1, 1]")
    return kfs


def _closed(g: float) -> bool:
    return g > 0.0


def gripper_dwell_steps(demo, index: int, closing: bool, default: int) -> int:
    """Actions the seed demo held still after switching the gripper at step ``index`` (while the
    fingers closed / opened); ``default`` when the demo does not tell."""
    actions = getattr(demo, "actions", None)
    if actions is None:
        return default
    a = np.asarray(actions, dtype=float)
    if a.ndim != 2 or a.shape[1] < 7 or not 0 <= index < len(a):
        return default
    n = 0
    k = index
    while k < len(a) and (a[k, 6] > 0) == closing and np.linalg.norm(a[k, :3]) < 2e-3 and np.linalg.norm(a[k, 3:6]) < 0.02:
        n += 1
        k += 1
    return int(np.clip(n, 1, 30)) if n else default


def resample_tcp_path(positions: np.ndarray, quats: np.ndarray, max_step: float = MAX_STEP,
                      max_rot: float = MAX_ROT, min_steps: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Poses at the control rate along a dense TCP path: uniform in the larger of (distance /
    max_step, angle / max_rot), so no step exceeds either limit. Returns (n+1, 3), (n+1, 4)."""
    P = np.asarray(positions, float).reshape(-1, 3)
    Q = np.asarray(quats, float).reshape(-1, 4)
    if len(P) == 1:
        P, Q = np.vstack([P, P]), np.vstack([Q, Q])
    Q = tf.sign_continuous(Q)                    # consistent quaternion hemisphere
    ds = effort(P, Q, max_step, max_rot)
    total = float(np.cumsum(ds)[-1])
    n = max(int(min_steps), int(math.ceil(total * (1.0 + 1e-9) - 1e-9)))
    out_p, out_q = poses_along(P, Q, ds, total * np.arange(1, n + 1) / n)
    out_p, out_q = [P[0]] + out_p, [Q[0]] + out_q
    out_p[-1], out_q[-1] = P[-1], Q[-1]
    return np.asarray(out_p), np.asarray([tf.normalize_quat(q) for q in out_q])


# --- the shared keyframe planner -----------------------------------------------------------------


def densify_checked(q_start, states, checker, width, attached, T_tcp_obj, problem: str) -> list:
    """Joint path through ``states`` interpolated every DENSE_JOINT_STEP rad, starting at
    ``q_start``; every configuration is checked (CandidateRejected planner_failure: ``problem``)."""
    out = [np.asarray(q_start, float)]
    for a, b in zip(states[:-1], states[1:]):
        n = max(1, int(math.ceil(np.max(np.abs(b - a)) / DENSE_JOINT_STEP)))
        for j in range(1, n + 1):
            q = a + (b - a) * (j / n)
            if not checker.state_valid(q, width, attached, T_tcp_obj):
                raise CandidateRejected(REJECT_PLANNER, f"{problem} "
                                                        f"({_pairs(checker.contacts_at(q, width, attached, T_tcp_obj))})")
            out.append(q)
    return out

class _KeyframePlanner:
    """Keyframe IK, straight lines, time parameterisation and tracking; subclasses plan the
    free-space moves (``_plan_free``)."""

    name = "base"

    def __init__(self, env=None, checker: Optional[CollisionChecker] = None, max_step: float = MAX_STEP,
                 max_rot: float = MAX_ROT, ik_pos_tol: float = IK_POS_TOL, ik_rot_tol: float = IK_ROT_TOL,
                 verify: bool = True):
        if not (0 < max_step <= 0.05 and 0 < max_rot <= 0.25):
            raise ValueError(f"max_step must be in (0, 0.05] m and max_rot in (0, 0.25] rad "
                             f"(the safety envelope), got {max_step}, {max_rot}")
        self.env = env
        self.checker = checker
        self.max_step, self.max_rot = float(max_step), float(max_rot)
        self.ik_pos_tol, self.ik_rot_tol = float(ik_pos_tol), float(ik_rot_tol)
        self.verify = bool(verify)
        self.last_info: dict = {}

    # -- per call --------------------------------------------------------------------------
    def _checker_for(self, env) -> CollisionChecker:
        if self.checker is None or self.checker.model is not env.model:
            self.checker = CollisionChecker(env)
        self.checker.env = env
        self.checker.sync(env)
        return self.checker

    def _ik(self, env, q_seed, p, quat, what: str) -> np.ndarray:
        """IK from ``q_seed`` (then from home, then along a line from the seed's pose)."""
        seeds = [np.asarray(q_seed, float), np.asarray(env.home, float)]
        best = None
        for s in seeds:
            q = env.ik.solve(s, p, quat)
            err = self._residual(env, q, p, quat)
            if err[0] <= self.ik_pos_tol and err[1] <= self.ik_rot_tol:
                return q
            if best is None or err[0] + 0.1 * err[1] < best[1][0] + 0.1 * best[1][1]:
                best = (q, err)
        # walk there in small Cartesian steps (large moves exceed the solver's iteration budget)
        p0, R0 = env.ik.forward(seeds[0])
        q0 = tf.matrix_to_quat(R0)
        q = seeds[0]
        n = max(2, int(math.ceil(np.linalg.norm(np.asarray(p) - p0) / 0.03)),
                int(math.ceil(tf.quat_angle(q0, quat) / 0.2)))
        for j in range(1, n + 1):
            w = j / n
            q = env.ik.solve(q, p0 + w * (np.asarray(p) - p0), tf.slerp(q0, quat, w))
        err = self._residual(env, q, p, quat)
        if err[0] <= self.ik_pos_tol and err[1] <= self.ik_rot_tol:
            return q
        if err[0] + 0.1 * err[1] < best[1][0] + 0.1 * best[1][1]:
            best = (q, err)
        raise CandidateRejected(REJECT_IK, f"{what}: IK residual {best[1][0] * 1000:.1f} mm / {best[1][1]:.3f} rad "
                                           f"(limits {self.ik_pos_tol * 1000:.1f} mm / {self.ik_rot_tol} rad)")

    @staticmethod
    def _residual(env, q, p, quat) -> tuple[float, float]:
        pp, R = env.ik.forward(q)
        return float(np.linalg.norm(pp - np.asarray(p))), float(tf.quat_angle(tf.matrix_to_quat(R), quat))

    def _reachable(self, env, k: Keyframe) -> None:
        if not env.safety.contains(k.position, tol=1e-6):
            raise CandidateRejected(REJECT_UNREACHABLE, f"keyframe {k.name!r} at {np.round(k.position, 3).tolist()} "
                                                        f"is outside the workspace box")
        tilt = math.acos(max(-1.0, min(1.0, -tf.quat_to_matrix(k.quaternion)[2, 2])))
        if tilt > env.safety.cfg.max_tilt + 1e-6:
            raise CandidateRejected(REJECT_UNREACHABLE, f"keyframe {k.name!r} tilt {tilt:.2f} rad > "
                                                        f"{env.safety.cfg.max_tilt} rad")

    @staticmethod
    def _is_line(pa, qa, pb, qb) -> bool:
        d = np.asarray(pb) - np.asarray(pa)
        return bool(np.linalg.norm(d[:2]) <= LINE_LATERAL or
                    (np.linalg.norm(d) <= LINE_SHORT and tf.quat_angle(qa, qb) <= 0.3))

    def _held_width(self, env, T_tcp_obj) -> float:
        """Finger opening on the held object (the object's slice between the pads)."""
        pts = getattr(env, "object_samples", None)
        if pts is None:
            return float(env.max_width)
        P = pts @ T_tcp_obj[:3, :3].T + T_tcp_obj[:3, 3]
        lo, hi = env.pad_z
        sel = (np.abs(P[:, 0]) <= env.pad_half_x) & (P[:, 2] >= lo) & (P[:, 2] <= hi)
        if not sel.any():
            return float(env.max_width)
        return float(min(env.max_width, 2 * np.max(np.abs(P[sel, 1]))))

    def _line(self, env, checker, q_a, pa, qa, pb, qb, width, attached, T_tcp_obj, what) -> list:
        n = max(2, int(math.ceil(np.linalg.norm(np.asarray(pb) - pa) / LINE_STEP)),
                int(math.ceil(tf.quat_angle(qa, qb) / 0.05)))
        qs = [q_a]
        q = q_a
        for j in range(1, n + 1):
            w = j / n
            p, quat = np.asarray(pa) + w * (np.asarray(pb) - pa), tf.slerp(qa, qb, w)
            q = self._ik(env, q, p, quat, f"{what} (straight move, point {j}/{n})")
            if not checker.state_valid(q, width, attached, T_tcp_obj):
                pairs = checker.contacts_at(q, width, attached, T_tcp_obj)
                raise CandidateRejected(REJECT_PLANNER, f"{what}: straight move leaves the valid space at "
                                                        f"{np.round(p, 3).tolist()} ({_pairs(pairs)})")
            qs.append(q)
        return qs

    def _plan_free(self, env, checker, q_a, q_b, width, attached, T_tcp_obj, what) -> list:
        raise NotImplementedError

    # -- the callable ----------------------------------------------------------------------
    def __call__(self, env, demo, keyframes, new_keyframes) -> EEPath:
        t0 = time.perf_counter()
        kfs = _validate_keyframes(new_keyframes)
        checker = self._checker_for(env)
        for k in kfs:
            self._reachable(env, k)
        dwell_default = int(math.ceil(env.max_width / (2 * env.icfg.finger_speed * env.control_dt))) + 1 \
            if hasattr(env, "icfg") else 5

        q = np.asarray(env.joint_targets, float)
        p_cur, quat_cur = env.tcp_pose()
        attached = bool(env.grasped)
        T_tcp_obj = np.asarray(env._T_tcp_obj, float).copy() if attached else None
        width = env.gripper_width() if attached else float(env.max_width)
        T_obj = checker.object_pose
        g_cmd = float(env.gripper_command)

        positions = [np.asarray(p_cur, float)]
        quats = [tf.normalize_quat(quat_cur)]
        gripper: list = []
        segments: list = []
        prev_name = "start"
        seed_kfs = {k.name: k for k in (keyframes or []) if isinstance(k, Keyframe)}
        n_free = 0
        moving = False                  # the arm's target moved since it last waited for the arm

        def hold(name: str, n: int, g: float) -> None:
            """A segment of ``n`` steps at the current pose with gripper command ``g``."""
            segments.append((name, len(positions) - 1))
            positions.extend([positions[-1]] * n)
            quats.extend([quats[-1]] * n)
            gripper.extend([g] * n)
        for i, k in enumerate(kfs):
            # the move prev -> k (command of the previous keyframe / the env)
            pb, qb = np.asarray(k.position, float), tf.normalize_quat(k.quaternion)
            what = f"{prev_name}->{k.name}"
            if np.linalg.norm(pb - positions[-1]) > 1e-4 or tf.quat_angle(quats[-1], qb) > 1e-3:
                min_steps = 2
                settle = 0
                a, b = seed_kfs.get(prev_name), seed_kfs.get(k.name)
                if (prev_name, k.name) == ("wipe_start", "wipe_end") and a is not None and b is not None \
                        and hasattr(demo, "positions"):
                    # the wipe is the task itself: the demo's strokes, moved with the board
                    M = tf.pose_to_matrix(positions[-1], quats[-1]) @ tf.invert(a.matrix())
                    qs = [q]
                    pa_, qa_ = positions[-1], quats[-1]
                    for j in range(a.index + 1, b.index + 1):
                        pj, qj = tf.matrix_to_pose(M @ demo.matrix(j))
                        if j == b.index:
                            pj, qj = pb, qb
                        qs.extend(self._line(env, checker, qs[-1], pa_, qa_, pj, qj, width, attached, T_tcp_obj,
                                             what)[1:])
                        pa_, qa_ = pj, qj
                    min_steps = b.index - a.index
                elif self._is_line(positions[-1], quats[-1], pb, qb):
                    qs = self._line(env, checker, q, positions[-1], quats[-1], pb, qb, width, attached, T_tcp_obj, what)
                    # straight moves are the contact moves (descent onto the grasp, insertion): they
                    # keep the seed demo's pace, as fast moves there jam a physical cell
                    if a is not None and b is not None and b.index > a.index:
                        min_steps = max(2, b.index - a.index)
                else:
                    q_goal = self._ik(env, q, pb, qb, f"keyframe {k.name!r}")
                    if not checker.state_valid(q_goal, width, attached, T_tcp_obj):
                        raise CandidateRejected(REJECT_PLANNER, f"keyframe {k.name!r}: configuration in collision "
                                                                f"or outside the envelope "
                                                                f"({_pairs(checker.contacts_at(q_goal, width, attached, T_tcp_obj))})")
                    qs = self._plan_free(env, checker, q, q_goal, width, attached, T_tcp_obj, what)
                    n_free += 1
                    settle = FREE_MOVE_SETTLE_STEPS
                dense = [checker.tcp_pose_at(x) for x in qs]
                dense[-1] = (pb, qb)                        # end exactly on the keyframe
                P, Q = resample_tcp_path([d[0] for d in dense], [d[1] for d in dense], self.max_step, self.max_rot,
                                         min_steps=min_steps)
                segments.append((what, len(positions) - 1))
                positions.extend(P[1:])
                quats.extend(Q[1:])
                gripper.extend([g_cmd] * (len(P) - 1))
                moving = True
                if settle:
                    # a planned move ends at full speed; the arm arrives a few steps after its
                    # target: wait before the next (contact) move instead of cutting the corner
                    hold(f"{k.name}:settle", settle, g_cmd)
                    moving = False

                q = qs[-1]
            # the gripper at k
            new_cmd = float(k.gripper)
            if _closed(new_cmd) != _closed(g_cmd):
                closing = _closed(new_cmd)
                if moving:
                    # grasp or release where the arm is, not where its target is: wait for it
                    hold(f"{k.name}:arrive", FREE_MOVE_SETTLE_STEPS, g_cmd)
                    moving = False
                src = seed_kfs.get(k.name)
                n = gripper_dwell_steps(demo, src.index if src is not None else k.index, closing, dwell_default)
                hold(f"{k.name}:{'close' if closing else 'open'}", n, new_cmd)
                if closing:
                    T_tcp = tf.pose_to_matrix(*checker.tcp_pose_at(q))
                    T_tcp_obj = tf.invert(T_tcp) @ T_obj
                    width = self._held_width(env, T_tcp_obj)
                    attached = True
                else:
                    if attached and T_tcp_obj is not None:
                        T_obj = tf.pose_to_matrix(*checker.tcp_pose_at(q)) @ T_tcp_obj
                        checker.set_object_pose(T_obj)
                    attached, T_tcp_obj, width = False, None, float(env.max_width)
            g_cmd = new_cmd
            prev_name = k.name
        if len(positions) < 2:
            raise ValueError("new_keyframes: every keyframe is at the start pose with the start gripper "
                             "command: nothing to do")
        path = EEPath(np.asarray(positions), np.asarray(quats), np.asarray(gripper), segments)
        if self.verify:
            self._track(env, checker, path)
        checker.sync(env)
        self.last_info = {"seconds": time.perf_counter() - t0, "free_moves": n_free, "steps": len(path)}
        return path

    def _track(self, env, checker, path: EEPath) -> None:
        """Follow the path with the twin's IK (as execution will) and check every configuration."""
        q = np.asarray(env.joint_targets, float)
        attached = bool(env.grasped)
        T_tcp_obj = np.asarray(env._T_tcp_obj, float).copy() if attached else None
        width = env.gripper_width() if attached else float(env.max_width)
        checker.sync(env)
        T_obj = checker.object_pose
        for k in range(len(path)):
            q = env.ik.solve(q, path.positions[k + 1], path.quaternions[k + 1])
            g = path.gripper[k]
            if _closed(g) and not attached and (k == 0 or not _closed(path.gripper[k - 1])):
                T_tcp_obj = tf.invert(tf.pose_to_matrix(*checker.tcp_pose_at(q))) @ T_obj
                width = self._held_width(env, T_tcp_obj)
                attached = True
            elif not _closed(g) and attached:
                T_obj = tf.pose_to_matrix(*checker.tcp_pose_at(q)) @ T_tcp_obj
                checker.set_object_pose(T_obj)
                attached, T_tcp_obj, width = False, None, float(env.max_width)
            err = self._residual(env, q, path.positions[k + 1], path.quaternions[k + 1])
            if err[0] > 2 * self.ik_pos_tol or err[1] > 2 * self.ik_rot_tol:
                raise CandidateRejected(REJECT_IK, f"step {k}: the twin's IK does not track the path "
                                                   f"({err[0] * 1000:.1f} mm, {err[1]:.3f} rad)")
            if not checker.state_valid(q, width, attached, T_tcp_obj):
                raise CandidateRejected(REJECT_PLANNER, f"step {k}: the tracked path collides or leaves the envelope "
                                                        f"({_pairs(checker.contacts_at(q, width, attached, T_tcp_obj))})")


def _pairs(pairs) -> str:
    return ", ".join(f"{a} vs {b}" for a, b in pairs) if pairs else "envelope / joint limits"


# --- OMPL ----------------------------------------------------------------------------------------

class OmplPlanner(_KeyframePlanner):
    """Free-space moves with OMPL RRTConnect in the FR3 joint box (see module doc)."""

    name = "ompl"

    def __init__(self, env=None, checker: Optional[CollisionChecker] = None, time_limit: float = 1.0,
                 simplify: bool = True, seed: int = 0, resolution: float = 0.02, **kw):
        super().__init__(env, checker, **kw)
        if not (time_limit > 0 and math.isfinite(time_limit)):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        if not resolution > 0:
            raise ValueError(f"resolution must be positive (rad), got {resolution}")
        from ompl import base as ob, geometric as og, util as ou   # noqa: F401 (fail early when missing)

        self.time_limit = float(time_limit)
        self.simplify = bool(simplify)
        self.seed = int(seed)
        self.resolution = float(resolution)

    def _plan_free(self, env, checker, q_a, q_b, width, attached, T_tcp_obj, what) -> list:
        from ompl import base as ob, geometric as og, util as ou

        lo, hi = np.asarray(env.safety.joint_lower, float), np.asarray(env.safety.joint_upper, float)
        level = ou.getLogLevel()
        ou.setLogLevel(ou.LOG_NONE)
        try:
            ou.RNG.setSeed(max(1, self.seed + 1))       # every plan replays the same random sequence
            space = ob.RealVectorStateSpace(7)
            bounds = ob.RealVectorBounds(7)
            for j in range(7):
                bounds.setLow(j, float(lo[j]))
                bounds.setHigh(j, float(hi[j]))
            space.setBounds(bounds)
            ss = og.SimpleSetup(space)

            def valid(s) -> bool:
                return checker.state_valid(np.array(s[0:7]), width, attached, T_tcp_obj)

            ss.setStateValidityChecker(valid)
            si = ss.getSpaceInformation()
            si.setStateValidityCheckingResolution(self.resolution / space.getMaximumExtent())
            start, goal = space.allocState(), space.allocState()
            for j in range(7):
                start[j] = float(np.clip(q_a[j], lo[j], hi[j]))
                goal[j] = float(np.clip(q_b[j], lo[j], hi[j]))
            ss.setStartAndGoalStates(start, goal)
            ss.setPlanner(og.RRTConnect(si))
            status = ss.solve(self.time_limit)
            if not ss.haveExactSolutionPath():
                raise CandidateRejected(REJECT_PLANNER_TIMEOUT, f"{what}: RRTConnect found no path in "
                                                                f"{self.time_limit:g} s ({status})")
            path = ss.getSolutionPath()
            if self.simplify:
                ps = og.PathSimplifier(si)
                ps.reduceVertices(path)
                ps.ropeShortcutPath(path)
                ps.smoothBSpline(path)
            states = [np.array(path.getState(i)[0:7]) for i in range(path.getStateCount())]
        finally:
            ou.setLogLevel(level)
        out = densify_checked(q_a, states, checker, width, attached, T_tcp_obj, f"{what}: simplified path is not valid")
        out[-1] = np.asarray(q_b, float)
        return out


# --- MoveIt 2 ------------------------------------------------------------------------------------

def build_motion_plan_request(msg, request_cls, joint_state_cls, q_start, q_goal,
                              joint_names: Sequence[str] = ARM_JOINT_NAMES, group: str = "fr3_arm",
                              planner_id: str = "RRTConnectkConfigDefault", time_limit: float = 1.0,
                              tolerance: float = 1e-3, pipeline_id: str = "ompl"):
    """A ``GetMotionPlan`` request: start state ``q_start``, one goal of joint constraints at
    ``q_goal``. ``msg`` provides ``MotionPlanRequest``, ``RobotState``, ``Constraints`` and
    ``JointConstraint`` (``moveit_msgs.msg``); ``request_cls`` is ``GetMotionPlan.Request``;
    ``joint_state_cls`` is ``sensor_msgs.msg.JointState``."""
    qs = np.asarray(q_start, float).reshape(-1)
    qg = np.asarray(q_goal, float).reshape(-1)
    names = list(joint_names)
    if len(qs) != len(names) or len(qg) != len(names):
        raise ValueError(f"build_motion_plan_request: {len(names)} joint names but start has {len(qs)} "
                         f"and goal {len(qg)} values")
    if not (np.all(np.isfinite(qs)) and np.all(np.isfinite(qg))):
        raise ValueError("build_motion_plan_request: non-finite start or goal joint positions")
    if not time_limit > 0:
        raise ValueError(f"build_motion_plan_request: time_limit must be positive, got {time_limit}")
    mpr = msg.MotionPlanRequest()
    mpr.group_name = group
    mpr.planner_id = planner_id
    mpr.pipeline_id = pipeline_id
    mpr.allowed_planning_time = float(time_limit)
    mpr.num_planning_attempts = 1
    mpr.max_velocity_scaling_factor = 1.0
    mpr.max_acceleration_scaling_factor = 1.0
    js = joint_state_cls()
    js.name = names
    js.position = [float(x) for x in qs]
    state = msg.RobotState()
    state.joint_state = js
    state.is_diff = False
    mpr.start_state = state
    cons = msg.Constraints()
    cons.name = "keyframe"
    jcs = []
    for n, x in zip(names, qg):
        jc = msg.JointConstraint()
        jc.joint_name = n
        jc.position = float(x)
        jc.tolerance_above = float(tolerance)
        jc.tolerance_below = float(tolerance)
        jc.weight = 1.0
        jcs.append(jc)
    cons.joint_constraints = jcs
    mpr.goal_constraints = [cons]
    req = request_cls()
    req.motion_plan_request = mpr
    return req


def error_code_name(codes_cls, value: int) -> str:
    """Name of a ``moveit_msgs.msg.MoveItErrorCodes`` value (``str(value)`` when unknown)."""
    for name in dir(codes_cls):
        if name.isupper() and not name.startswith("_") and getattr(codes_cls, name) == value:
            return name
    return str(value)


def parse_motion_plan_response(response, codes_cls, joint_names: Sequence[str] = ARM_JOINT_NAMES) -> np.ndarray:
    """(K, n) joint positions of the planned trajectory in ``joint_names`` order; a MoveIt error
    code (anything but ``codes_cls.SUCCESS``) or an unusable trajectory raises
    :class:`CandidateRejected` (planner failure)."""
    res = response.motion_plan_response
    val = int(res.error_code.val)
    if val != int(codes_cls.SUCCESS):
        raise CandidateRejected(REJECT_PLANNER, f"MoveIt error {error_code_name(codes_cls, val)} ({val})")
    jt = res.trajectory.joint_trajectory
    names = list(jt.joint_names)
    missing = [n for n in joint_names if n not in names]
    if missing:
        raise CandidateRejected(REJECT_PLANNER, f"MoveIt trajectory lacks joints {missing} (has {names})")
    idx = [names.index(n) for n in joint_names]
    pts = [np.asarray(p.positions, float) for p in jt.points]
    if not pts:
        raise CandidateRejected(REJECT_PLANNER, "MoveIt returned SUCCESS with an empty trajectory")
    out = np.stack([p[idx] if len(p) == len(names) else np.full(len(idx), np.nan) for p in pts])
    if not np.all(np.isfinite(out)):
        raise CandidateRejected(REJECT_PLANNER, "MoveIt trajectory has malformed or non-finite points")
    return out


def _import_moveit():
    try:
        from moveit_msgs import msg as moveit_msg, srv as moveit_srv
        from sensor_msgs.msg import JointState
    except ImportError as exc:
        raise RuntimeError(MOVEIT_MISSING) from exc
    return moveit_msg, moveit_srv, JointState


class MoveItPlanner(_KeyframePlanner):
    """Free-space moves from move_group's ``GetMotionPlan`` service (see module doc). The
    move_group planning scene must hold the cell (table, fixture); every returned trajectory is
    checked against the twin as well."""

    name = "moveit"

    def __init__(self, node=None, group: str = "fr3_arm", ee_link: str = "fr3_hand_tcp",
                 service: str = "/plan_kinematic_path", planner_id: str = "RRTConnectkConfigDefault",
                 time_limit: float = 1.0, wait_s: float = 5.0, env=None, checker=None, **kw):
        super().__init__(env, checker, **kw)
        if not (time_limit > 0 and math.isfinite(time_limit)):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        self.msg, self.srv, self.JointState = _import_moveit()
        self.group, self.ee_link, self.service = group, ee_link, service
        self.planner_id, self.time_limit, self.wait_s = planner_id, float(time_limit), float(wait_s)
        self.node = node
        self._own = None
        self._client = None

    def _ensure_client(self):
        if self._client is not None:
            return self._client
        import rclpy

        if self.node is None:
            from rclpy.context import Context

            ctx = Context()
            rclpy.init(context=ctx)
            self.node = rclpy.create_node("twinrl_demogen_moveit", context=ctx)
            self._own = ctx
        self._client = self.node.create_client(self.srv.GetMotionPlan, self.service)
        if not self._client.wait_for_service(timeout_sec=self.wait_s):
            raise RuntimeError(f"MoveIt service {self.service!r} not available after {self.wait_s:g} s: "
                               f"is move_group running (same ROS_DOMAIN_ID)?")
        return self._client

    def _plan_free(self, env, checker, q_a, q_b, width, attached, T_tcp_obj, what) -> list:
        import rclpy
        import rclpy.executors

        client = self._ensure_client()
        req = build_motion_plan_request(self.msg, self.srv.GetMotionPlan.Request, self.JointState, q_a, q_b,
                                        group=self.group, planner_id=self.planner_id, time_limit=self.time_limit)
        fut = client.call_async(req)
        executor = rclpy.executors.SingleThreadedExecutor(context=self.node.context)
        executor.add_node(self.node)
        try:
            executor.spin_until_future_complete(fut, timeout_sec=self.time_limit + self.wait_s)
        finally:
            executor.remove_node(self.node)
        if not fut.done():
            raise CandidateRejected(REJECT_PLANNER_TIMEOUT, f"{what}: no MoveIt answer within "
                                                            f"{self.time_limit + self.wait_s:g} s")
        traj = parse_motion_plan_response(fut.result(), self.msg.MoveItErrorCodes)
        out = densify_checked(q_a, traj, checker, width, attached, T_tcp_obj, f"{what}: MoveIt path collides in the twin")
        if np.max(np.abs(out[-1] - q_b)) > 0.01:
            raise CandidateRejected(REJECT_PLANNER, f"{what}: MoveIt path ends {np.max(np.abs(out[-1] - q_b)):.3f} rad "
                                                    f"from the keyframe configuration")
        out[-1] = np.asarray(q_b, float)
        return out

    def close(self) -> None:
        if self._own is not None:
            import rclpy

            self.node.destroy_node()
            rclpy.shutdown(context=self._own)
            self._own = None


# --- factory -------------------------------------------------------------------------------------

_CONFIG_KEYS = {"backend", "time_limit", "simplify", "seed", "moveit"}
_MOVEIT_KEYS = {"service", "group", "ee_link", "planner_id"}


def make_planner(method: str, env, config: Optional[dict] = None) -> Optional[Callable]:
    """``affine`` -> None (no planner); ``plan`` -> :class:`OmplPlanner`, or :class:`MoveItPlanner`
    with ``config={"backend": "moveit", "moveit": {service, group, ee_link, planner_id}}``."""
    if method == "affine":
        return None
    if method != "plan":
        raise ValueError(f"unknown demo generation method {method!r} (known: affine, plan)")
    cfg = dict(config or {})
    unknown = set(cfg) - _CONFIG_KEYS - _MOVEIT_KEYS
    if unknown:
        raise ValueError(f"planner config: unknown keys {sorted(unknown)} (known: {sorted(_CONFIG_KEYS | _MOVEIT_KEYS)})")
    backend = cfg.get("backend", "ompl")
    time_limit = float(cfg.get("time_limit", 1.0))
    if backend == "ompl":
        return OmplPlanner(env, time_limit=time_limit, simplify=bool(cfg.get("simplify", True)),
                           seed=int(cfg.get("seed", 0)))
    if backend == "moveit":
        mv = dict(cfg.get("moveit") or {})
        mv.update({k: cfg[k] for k in _MOVEIT_KEYS if k in cfg})
        bad = set(mv) - _MOVEIT_KEYS
        if bad:
            raise ValueError(f"planner config moveit: unknown keys {sorted(bad)} (known: {sorted(_MOVEIT_KEYS)})")
        return MoveItPlanner(env=env, time_limit=time_limit, **mv)
    raise ValueError(f"planner config backend: expected 'ompl' or 'moveit', got {backend!r}")


__all__ = ["OmplPlanner", "MoveItPlanner", "make_planner", "build_motion_plan_request", "parse_motion_plan_response",
           "error_code_name", "resample_tcp_path", "gripper_dwell_steps", "MOVEIT_MISSING"]
