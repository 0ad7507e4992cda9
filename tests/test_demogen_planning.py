"""demogen collision rules (twin scene) and the plan method's planners (OMPL, MoveIt request/response)."""
from __future__ import annotations

import math
import sys
import time
import types

import numpy as np
import pytest

from twinrl_bringup import transforms as tf


@pytest.fixture(scope="module")
def envs(tiny_twins):
    from twinrl_twin.twin_env import make_twin_env

    made = {}

    def get(task):
        if task not in made:
            made[task] = make_twin_env(tiny_twins(task), render=False)
        return made[task]

    yield get
    for e in made.values():
        e.close()


def _tcp_quat(yaw):
    from twinrl_twin.sim.expert import tcp_quat

    return tcp_quat(yaw)


def _task_keyframes(env):
    """Hand-made keyframes of a pick / insert from the task's object pose, grasp_dz and place_goal."""
    from twinrl_twin.demogen.path import Keyframe
    from twinrl_twin.sim.tasks import nearest_equivalent

    task = env.task_obj
    o = task.object_pose7()
    yaw = nearest_equivalent(tf.yaw_of(o[3:]) + task.grasp_yaw_offset, 0.0, task.grasp_symmetry)
    q = _tcp_quat(yaw)
    grasp = o[:3] + [0, 0, task.grasp_dz]
    goal, gyaw = task.place_goal()
    qp = _tcp_quat(yaw + nearest_equivalent(gyaw - tf.yaw_of(o[3:]), 0.0, task.place_symmetry))
    place = goal + [0, 0, task.grasp_dz + (0.004 if task.name == "pick_and_place" else -0.004)]
    return [Keyframe("approach", 10, grasp + [0, 0, 0.09], q, -1.0, False),
            Keyframe("grasp", 15, grasp, q, 1.0, False),
            Keyframe("lift", 25, grasp + [0, 0, 0.1], q, 1.0, True),
            Keyframe("pre_place", 30, place + [0, 0, 0.1], qp, 1.0, True),
            Keyframe("place", 35, place, qp, -1.0, True),
            Keyframe("retreat", 45, place + [0, 0, 0.05], qp, -1.0, False)]


def _seed_demo(close_steps=5, open_steps=4):
    """A stand-in seed demo: only its action gripper schedule matters (grasp at 15, release at 35)."""
    a = np.zeros((50, 7))
    a[:, 0] = 0.01                          # moving ...
    a[:15, 6] = -1
    a[15:35, 6] = 1
    a[35:, 6] = -1
    a[15:15 + close_steps, :6] = 0          # ... except while the gripper closes / opens
    a[35:35 + open_steps, :6] = 0
    return types.SimpleNamespace(actions=a)


# --- collision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["pick_and_place", "insert_hexagon"])
def test_expert_episodes_have_no_collision(envs, task):
    from twinrl_twin.demogen.collision import CollisionChecker

    env = envs(task)
    checker = CollisionChecker(env)
    for seed in range(2):
        env.reset(seed=seed)
        success, steps = False, 0
        for _ in range(120):
            _, _, term, trunc, info = env.step(env.expert_action())
            steps += 1
            assert checker.check() == [], f"{task} seed {seed} step {steps}: {checker.check()}"
            if term or trunc:
                success = info["success"]
                break
        assert success, f"{task} seed {seed}: the expert failed"


def test_hand_into_table_collides_and_state_valid(envs):
    from twinrl_twin.demogen.collision import CollisionChecker

    env = envs("pick_and_place")
    env.reset(seed=0, options={"configuration": {"object_pose": [0.6, 0.3, 0.0, 0, 0, 0, 1]}})
    checker = CollisionChecker(env)
    assert checker.check() == []
    assert checker.state_valid(env.home, env.max_width, False)
    hits = []
    for _ in range(12):                                   # straight down to the workspace floor
        env.step(np.array([0, 0, -0.045, 0, 0, 0, -1.0]))
    for _ in range(4):                                    # then tilt the hand into the table
        env.step(np.array([0, 0, -0.045, 0.2, 0, 0, -1.0]))
        hits = checker.check()
    assert hits, "hand tilted into the table: no collision reported"
    assert any("table" in pair for pair in hits), hits
    assert any(a.startswith("fr3_hand") for a, _ in hits), hits
    q_bad = env.joint_targets
    assert not checker.state_valid(q_bad, env.max_width, False)
    assert checker.contacts_at(q_bad, env.max_width, False)
    # the env's own data was not changed by the checks
    before = env.data.qpos.copy()
    checker.state_valid(env.home, env.max_width, False)
    checker.check()
    np.testing.assert_array_equal(env.data.qpos, before)
    # joint limits and bad input
    q_out = env.home.copy()
    q_out[3] = 0.5                                        # joint 4 upper limit is -0.15
    assert not checker.state_valid(q_out, env.max_width, False)
    assert not checker.state_valid([np.nan] * 7, env.max_width, False)
    with pytest.raises(ValueError, match="T_tcp_obj"):
        checker.state_valid(env.home, env.max_width, True)   # attached, but nothing held and no transform


# --- OMPL planner ------------------------------------------------------------------------------

def _execute(env, path, checker, targets=None):
    """Run the path's actions in the twin; (collisions, TCP positions after each action, success).
    ``targets``: a list that receives the commanded TCP target after each action."""
    coll, tcp, success = [], [], False
    for a in path.actions():
        _, _, _, _, info = env.step(a)
        c = checker.check()
        if c:
            coll.append(c)
        tcp.append(env.tcp_pose()[0])
        if targets is not None:
            targets.append(env.target_pose[0])
        success = success or info["success"]
    return coll, np.asarray(tcp), success


def test_ompl_path_between_free_poses(envs):
    from twinrl_twin.demogen.collision import CollisionChecker
    from twinrl_twin.demogen.path import Keyframe
    from twinrl_twin.demogen.planning import FREE_MOVE_SETTLE_STEPS, OmplPlanner

    env = envs("pick_and_place")
    cfg = {"configuration": {"object_pose": [0.6, 0.3, 0.0, 0, 0, 0, 1]}}
    env.reset(seed=0, options=cfg)
    kfs = [Keyframe("a", 0, np.array([0.45, 0.3, 0.2]), _tcp_quat(0.8), -1.0),
           Keyframe("b", 1, np.array([0.5, -0.3, 0.12]), _tcp_quat(-0.9), -1.0)]
    planner = OmplPlanner(env, time_limit=1.0, seed=3)
    path = planner(env, None, kfs, kfs)
    ms, mr = path.max_step()
    assert ms <= 0.045 + 1e-9 and mr <= 0.22 + 1e-9
    assert np.allclose(path.positions[0], env.tcp_pose()[0])
    names = [s[0] for s in path.segments]
    # each planned move is followed by a wait while the arm, which lags its targets, arrives
    assert names == ["start->a", "a:settle", "a->b", "b:settle"]
    assert np.all(path.gripper == -1.0)
    starts = [s[1] for s in path.segments] + [len(path)]
    settle = [b - a for a, b in zip(starts[1::2], starts[2::2])]
    assert settle == [FREE_MOVE_SETTLE_STEPS] * 2
    assert np.allclose(np.diff(path.positions[starts[1]:starts[2] + 1], axis=0), 0)
    # every move has at least 2 steps; the keyframes are pose ends of their moves
    assert all(b - a >= 2 for a, b in zip(starts[0::2], starts[1::2]))
    ends = [starts[1], starts[3]]
    # deterministic for a seed
    path2 = OmplPlanner(env, time_limit=1.0, seed=3)(env, None, kfs, kfs)
    np.testing.assert_allclose(path2.positions, path.positions)
    checker = CollisionChecker(env)
    targets = []
    coll, tcp, _ = _execute(env, path, checker, targets)
    assert coll == []
    for k, e in zip(kfs, ends):     # the commanded path passes through the keyframes
        assert np.linalg.norm(targets[e - 1] - k.position) < 0.002, (k.name, targets[e - 1], k.position)
    for _ in range(8):              # the arm follows its targets with a lag, then settles
        env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert np.linalg.norm(env.tcp_pose()[0] - kfs[-1].position) < 0.002


@pytest.mark.parametrize("task", ["pick_and_place", "insert_hexagon"])
def test_ompl_pick_and_place_plan_succeeds_in_twin(envs, task):
    from twinrl_twin.demogen.collision import CollisionChecker
    from twinrl_twin.demogen.planning import OmplPlanner

    env = envs(task)
    env.reset(seed=1, options={"region": "ood"})
    kfs = _task_keyframes(env)
    planner = OmplPlanner(env, time_limit=1.0)
    path = planner(env, _seed_demo(close_steps=5, open_steps=4), kfs, kfs)
    seg = dict(path.segments)
    starts = sorted(seg.values()) + [len(path)]
    length = {n: starts[starts.index(i) + 1] - i for n, i in seg.items()}
    assert length["grasp:close"] == 5 and length["place:open"] == 4     # the seed demo's dwell
    assert np.all(path.gripper[seg["grasp:close"]:seg["place:open"]] == 1.0)
    assert path.gripper[0] == -1.0 and path.gripper[-1] == -1.0
    coll, _, success = _execute(env, path, CollisionChecker(env))
    assert coll == [] and success


def test_ompl_rejections(envs):
    from twinrl_twin.demogen.path import (REJECT_IK, REJECT_PLANNER, REJECT_PLANNER_TIMEOUT, REJECT_UNREACHABLE,
                                          CandidateRejected, Keyframe)
    from twinrl_twin.demogen.planning import OmplPlanner

    env = envs("pick_and_place")
    env.reset(seed=0)
    planner = OmplPlanner(env, time_limit=0.2)
    far = [Keyframe("far", 0, np.array([1.5, 0.0, 0.2]), _tcp_quat(0.0), -1.0)]
    with pytest.raises(CandidateRejected) as e:
        planner(env, None, far, far)
    assert e.value.rejection.reason == REJECT_UNREACHABLE and "far" in str(e.value)
    # the hand inside the table (TCP at the workspace floor, tilted): no valid goal
    q_tilt = tf.quat_multiply(tf.quat_from_euler("x", 0.8), _tcp_quat(0.0))
    sunk = [Keyframe("sunk", 0, np.array([0.5, 0.1, 0.011]), q_tilt, -1.0)]
    t0 = time.perf_counter()
    with pytest.raises(CandidateRejected) as e:
        planner(env, None, sunk, sunk)
    assert e.value.rejection.reason in (REJECT_IK, REJECT_PLANNER, REJECT_PLANNER_TIMEOUT)
    assert time.perf_counter() - t0 < 10.0
    with pytest.raises(ValueError, match="at least one keyframe"):
        planner(env, None, [], [])
    with pytest.raises(ValueError, match="gripper"):
        planner(env, None, [], [Keyframe("g", 0, np.array([0.5, 0, 0.2]), _tcp_quat(0), 3.0)])


def test_resample_respects_limits():
    from twinrl_twin.demogen.planning import resample_tcp_path

    P = np.stack([np.linspace(0, 0.3, 200), np.zeros(200), np.full(200, 0.2)], axis=1)
    Q = np.stack([tf.quat_from_euler("z", a) for a in np.linspace(0, 1.0, 200)])
    p, q = resample_tcp_path(P, Q, 0.045, 0.22)
    dp = np.linalg.norm(np.diff(p, axis=0), axis=1)
    dr = [tf.quat_angle(q[i], q[i + 1]) for i in range(len(q) - 1)]
    assert max(dp) <= 0.045 + 1e-9 and max(dr) <= 0.22 + 1e-9
    assert len(p) - 1 == math.ceil(max(0.3 / 0.045, 1.0 / 0.22))
    np.testing.assert_allclose(p[-1], P[-1])
    p2, _ = resample_tcp_path(P[:2], Q[:2])
    assert len(p2) == 3                                   # at least 2 steps


# --- MoveIt ------------------------------------------------------------------------------------

def _moveit_standins():
    def cls(name, **consts):
        return type(name, (types.SimpleNamespace,), consts)

    msg = types.SimpleNamespace(MotionPlanRequest=cls("MotionPlanRequest"), RobotState=cls("RobotState"),
                                Constraints=cls("Constraints"), JointConstraint=cls("JointConstraint"),
                                MoveItErrorCodes=cls("MoveItErrorCodes", SUCCESS=1, FAILURE=99999, PLANNING_FAILED=-1,
                                                     TIMED_OUT=-6))
    return msg, cls("Request"), cls("JointState")


def test_moveit_request_and_response_with_standins():
    from twinrl_twin.demogen.path import REJECT_PLANNER, CandidateRejected
    from twinrl_twin.demogen.planning import ARM_JOINT_NAMES, build_motion_plan_request, parse_motion_plan_response

    msg, Request, JointState = _moveit_standins()
    qs, qg = np.linspace(-0.3, 0.3, 7), np.linspace(0.1, 0.7, 7)
    qs[3], qg[3] = -2.0, -1.5
    req = build_motion_plan_request(msg, Request, JointState, qs, qg, group="fr3_arm",
                                    planner_id="RRTConnectkConfigDefault", time_limit=2.0)
    mpr = req.motion_plan_request
    assert mpr.group_name == "fr3_arm" and mpr.planner_id == "RRTConnectkConfigDefault"
    assert mpr.allowed_planning_time == 2.0
    assert list(mpr.start_state.joint_state.name) == list(ARM_JOINT_NAMES)
    np.testing.assert_allclose(mpr.start_state.joint_state.position, qs)
    (goal,) = mpr.goal_constraints
    assert [c.joint_name for c in goal.joint_constraints] == list(ARM_JOINT_NAMES)
    np.testing.assert_allclose([c.position for c in goal.joint_constraints], qg)
    assert all(c.tolerance_above > 0 and c.weight == 1.0 for c in goal.joint_constraints)
    with pytest.raises(ValueError, match="joint names"):
        build_motion_plan_request(msg, Request, JointState, qs[:6], qg)

    # response: joints in another order plus a finger joint
    names = ["fr3_finger_joint1"] + list(reversed(ARM_JOINT_NAMES))
    traj = np.linspace(qs, qg, 5)
    pts = [types.SimpleNamespace(positions=[0.04] + list(reversed(q))) for q in traj]
    ok = types.SimpleNamespace(motion_plan_response=types.SimpleNamespace(
        error_code=types.SimpleNamespace(val=1),
        trajectory=types.SimpleNamespace(joint_trajectory=types.SimpleNamespace(joint_names=names, points=pts))))
    np.testing.assert_allclose(parse_motion_plan_response(ok, msg.MoveItErrorCodes), traj)
    ok.motion_plan_response.error_code.val = -1
    with pytest.raises(CandidateRejected, match="PLANNING_FAILED") as e:
        parse_motion_plan_response(ok, msg.MoveItErrorCodes)
    assert e.value.rejection.reason == REJECT_PLANNER
    ok.motion_plan_response.error_code.val = 1
    ok.motion_plan_response.trajectory.joint_trajectory.joint_names = names[:-1]
    with pytest.raises(CandidateRejected, match="lacks joints"):
        parse_motion_plan_response(ok, msg.MoveItErrorCodes)


def test_moveit_missing_msgs_and_make_planner(envs, monkeypatch):
    from twinrl_twin.demogen.planning import MOVEIT_MISSING, MoveItPlanner, OmplPlanner, make_planner

    monkeypatch.setitem(sys.modules, "moveit_msgs", None)      # import fails even where it is installed
    with pytest.raises(RuntimeError) as e:
        MoveItPlanner()
    assert str(e.value) == MOVEIT_MISSING
    assert "moveit_msgs" in str(e.value) and "move_group" in str(e.value)
    env = envs("pick_and_place")
    assert make_planner("affine", env, None) is None
    p = make_planner("plan", env, {"backend": "ompl", "time_limit": 0.5, "simplify": True,
                                   "moveit": {"service": "/x", "group": "g", "ee_link": "e", "planner_id": "p"}})
    assert isinstance(p, OmplPlanner) and p.time_limit == 0.5
    with pytest.raises(RuntimeError, match="moveit_msgs"):
        make_planner("plan", env, {"backend": "moveit", "moveit": {"service": "/x"}})
    with pytest.raises(ValueError, match="backend"):
        make_planner("plan", env, {"backend": "chomp"})
    with pytest.raises(ValueError, match="method"):
        make_planner("warp", env, None)
    with pytest.raises(ValueError, match="unknown keys"):
        make_planner("plan", env, {"time_limt": 1.0})
