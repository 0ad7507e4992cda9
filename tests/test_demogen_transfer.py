"""Demo generation, part A: seed demo -> keyframes -> affine transfer -> execution in the twin."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twinrl_bringup import dataset as ds
from twinrl_bringup import transforms as tf
from twinrl_twin.demogen.execute import execute_path, generate_candidate
from twinrl_twin.demogen.keyframes import (extract_keyframes, grasp_in_object, in_hand_xy, load_seed_demo,
                                           map_keyframes, place_in_target)
from twinrl_twin.demogen.path import (REJECT_COLLISION, REJECT_ERROR, REJECT_UNREACHABLE, Candidate,
                                      CandidateRejected, Rejection)
from twinrl_twin.demogen.transfer import MAX_ROT, MAX_STEP, affine_map, affine_transfer, run_steps

_SEEDS: dict = {}


def seed_episode(task: str) -> ds.EpisodeData:
    """A sim-expert demonstration (physics, no images), recorded once per task."""
    if task not in _SEEDS:
        from twinrl_twin.sim.env import make_env
        from twinrl_twin.sim.record import record_episode

        env = make_env(task, render=False)
        try:
            ep = record_episode(env, 0, "id", images=False)
        finally:
            env.close()
        assert ep.is_success, f"the sim expert failed the {task} seed episode"
        ep.episode_id = f"seed-{task}"
        _SEEDS[task] = ep
    return _SEEDS[task]


def seed(task: str):
    demo = load_seed_demo(seed_episode(task))
    return demo, extract_keyframes(demo)


def _yaw_diff(a, b):
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def _moved_configuration(demo, dx=0.0, dy=0.0, dyaw=0.0, target_dx=0.0, target_dy=0.0):
    o = demo.object_pose.copy()
    o[:2] += (dx, dy)
    o[3:] = tf.quat_multiply(tf.quat_from_euler("z", dyaw), o[3:])
    t = demo.target_pose.copy()
    t[:2] += (target_dx, target_dy)
    return {"object_pose": o.tolist(), "target_pose": t.tolist()}


# ----------------------------------------------------------------------------- keyframes
def test_keyframes_pick_and_place():
    demo, kf = seed("pick_and_place")
    assert [k.name for k in kf] == ["start", "approach", "grasp", "lift", "pre_place", "place", "end"]
    assert [k.attached for k in kf] == [False, False, True, True, True, True, False]
    idx = {k.name: k.index for k in kf}
    assert all(b.index > a.index for a, b in zip(kf, kf[1:]))
    g = idx["grasp"]
    assert demo.gripper[g] > 0 and np.all(demo.gripper[:g] < 0)                  # first close command
    assert demo.gripper[idx["place"]] < 0 and np.all(demo.gripper[g:idx["place"]] > 0)   # first open again
    assert idx["end"] == demo.length
    P = demo.positions
    # approach hovers above the grasp, the lift rises above it, pre_place is above the place
    assert np.linalg.norm(P[idx["approach"], :2] - P[g, :2]) < 0.01 and P[idx["approach"], 2] > P[g, 2] + 0.05
    assert P[idx["lift"], 2] > P[g, 2] + 0.015
    assert np.linalg.norm(P[idx["pre_place"], :2] - P[idx["place"], :2]) < 0.01
    assert P[idx["pre_place"], 2] > P[idx["place"], 2] + 0.03
    # grasp / place relations: T_grasp maps the object's initial pose to the grasp TCP pose
    Tg = grasp_in_object(demo, kf)
    assert np.allclose(tf.pose7_to_matrix(demo.object_pose) @ Tg, kf[2].matrix(), atol=1e-12)
    assert abs(Tg[2, 3]) < 0.02 and np.linalg.norm(Tg[:2, 3]) < 0.02            # TCP at the block
    Tp = place_in_target(demo, kf)
    assert np.linalg.norm(Tp[:2, 3]) < 0.05                                     # over the plate


def test_keyframes_erase_whiteboard():
    demo, kf = seed("erase_whiteboard")
    assert [k.name for k in kf] == ["start", "approach", "grasp", "lift", "pre_wipe", "wipe_start", "wipe_end"]
    assert [k.attached for k in kf] == [False, False, True, True, True, True, True]
    idx = {k.name: k.index for k in kf}
    assert np.all(demo.gripper[idx["grasp"]:] > 0)          # never released
    P = demo.positions
    assert P[idx["pre_wipe"], 2] > P[idx["wipe_start"], 2] + 0.03
    wipe = P[idx["wipe_start"]:idx["wipe_end"] + 1]
    assert np.ptp(wipe[:, 2]) < 0.01 and np.ptp(wipe[:, 1]) > 0.05          # a flat stroke across the board


def test_keyframes_erase_whiteboard_survive_one_deeper_pose():
    """One wipe pose pressed deeper than the rest (action noise, a teleoperator's jitter) does not
    set the board level: the keyframes stay those of the clean demo (the minimum height would
    leave that single pose on the board and no wipe)."""
    import dataclasses

    demo, kf = seed("erase_whiteboard")
    idx = {k.name: k.index for k in kf}
    mid = (idx["wipe_start"] + idx["wipe_end"]) // 2
    P = demo.positions.copy()
    P[mid, 2] -= 0.006
    jittered = dataclasses.replace(demo, positions=P)
    assert {k.name: k.index for k in extract_keyframes(jittered)} == idx


def test_keyframes_insertion_has_no_release():
    demo, kf = seed("insert_hexagon")
    assert [k.name for k in kf] == ["start", "approach", "grasp", "lift", "pre_place", "place"]
    assert kf[-1].index == demo.length and kf[-1].attached


def test_in_hand_xy_is_where_the_sim_held_the_block():
    """The object's in-hand x / y implied by an insertion demo's place keyframe agrees with where
    the sim world's physics held it (read from the sim state at the end of the demo), better
    than the twin's default (the grasp pose, centred along the closing axis)."""
    from twinrl_twin.sim.env import make_env
    from twinrl_twin.sim.record import record_episode

    env = make_env("insert_hexagon", render=False)
    try:
        ep = record_episode(env, 0, "id", images=False)
        assert ep.is_success
        p_tcp, q_tcp = env.tcp_pose()
        T_rel = tf.invert(tf.pose_to_matrix(p_tcp, q_tcp)) @ tf.pose7_to_matrix(env.task_obj.object_pose7())
    finally:
        env.close()
    physical = T_rel[:2, 3]                    # still held: an insertion demo ends before the release
    demo = load_seed_demo(ep)
    kf = extract_keyframes(demo)
    implied = in_hand_xy(demo, kf, "insert_hexagon")
    default = tf.invert(grasp_in_object(demo, kf))[:2, 3]
    default[1] = 0.0                           # the closing fingers centre it
    assert np.linalg.norm(implied - physical) < 0.001, (implied, physical)
    assert np.linalg.norm(implied - physical) < np.linalg.norm(default - physical), (implied, default, physical)
    assert in_hand_xy(*seed("pick_and_place"), "pick_and_place") is None     # a plate is no fixture axis


def test_load_seed_demo_from_file_and_errors(tmp_path):
    ep = seed_episode("pick_and_place")
    path = ds.DatasetWriter(tmp_path / "d").write_episode(ep)
    demo = load_seed_demo(path)
    assert demo.task == "pick_and_place" and demo.length == ep.length
    # the commanded path: the measured start plus the actions (no clipping in an expert demo),
    # close to the measured path but not equal to it (the arm lags its target)
    measured = ep.observations["proprio"][:, 14:17]
    assert np.allclose(demo.positions[0], measured[0])
    assert np.allclose(demo.positions, measured[0] + np.vstack([np.zeros(3), np.cumsum(ep.actions[:, :3], axis=0)]),
                       atol=1e-6)
    lag = np.linalg.norm(demo.positions - measured, axis=1)
    assert 1e-4 < lag.max() < 0.05, lag.max()
    assert np.allclose(demo.object_pose, ep.initial_configuration["object_pose"], atol=1e-9)

    def variant(**kw):
        e = ds.EpisodeData(**{**ep.__dict__, **kw})
        return e

    with pytest.raises(ValueError, match="success"):
        load_seed_demo(variant(success=np.zeros(ep.length, bool)))
    cfg = dict(ep.initial_configuration)
    cfg.pop("target_pose")
    with pytest.raises(ValueError, match="target_pose"):
        load_seed_demo(variant(initial_configuration=cfg))
    acts = ep.actions.copy()
    acts[:, 6] = -1.0
    with pytest.raises(ValueError, match="never closes"):
        load_seed_demo(variant(actions=acts))
    with pytest.raises(ValueError, match="no such"):
        load_seed_demo(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- transfer
def test_unchanged_configuration_reproduces_the_demo():
    demo, kf = seed("pick_and_place")
    new = map_keyframes(demo, kf, demo.configuration, "pick_and_place")
    for a, b in zip(kf, new):
        assert np.linalg.norm(a.position - b.position) < 1e-9 and tf.quat_angle(a.quaternion, b.quaternion) < 1e-6
    P, Q = affine_map(demo, kf, new)
    assert np.max(np.abs(P - demo.positions)) < 1e-6
    assert max(tf.quat_angle(a, b) for a, b in zip(Q, demo.quaternions)) < 1e-6
    path = affine_transfer(demo, kf, new)
    # retiming only inserts poses: every demo pose is still on the path
    d = np.linalg.norm(path.positions[:, None, :] - demo.positions[None], axis=2).min(axis=0)
    assert d.max() < 1e-6
    assert np.array_equal(np.unique(path.gripper), np.unique(demo.gripper))


def test_run_steps_keep_the_demos_pace():
    pace = np.array([0.2, 1.0, 1.0, 1.0, 0.4])               # speed up, cruise, slow down
    assert np.allclose(run_steps(pace, pace.sum()), pace)   # the demo's own distance: its own steps
    far = run_steps(pace, 5.6)                               # 2 more full steps' worth
    assert len(far) == 7 and np.isclose(far.sum(), 5.6) and far.max() <= 1.0 + 1e-9
    assert np.allclose(far[1:-1], far[1]) and far[1] > 0.95  # the cruise runs at the demo's pace
    near = run_steps(pace, 1.5)
    assert len(near) == 3 and np.isclose(near.sum(), 1.5)
    tiny = run_steps(pace, 0.3)                              # shorter than speeding up and slowing down
    assert len(tiny) == 2 and np.allclose(tiny / tiny.sum(), [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="pace"):
        run_steps([0.5, 0.0], 1.0)
    with pytest.raises(ValueError, match="total"):
        run_steps(pace, float("nan"))


def test_a_farther_placement_takes_more_steps_at_the_demos_pace():
    """``pace="seed"``: the approach is walked at the expert's pace whatever the distance: a placement 12 cm
    farther takes more steps at nearly the full 45 mm / 0.22 rad (splitting each mapped step
    would have halved them), one under the start fewer; the gripper closes later or earlier."""
    demo, kf = seed("pick_and_place")
    approach = dict((k.name, k.index) for k in kf)["approach"]
    far = map_keyframes(demo, kf, _moved_configuration(demo, dx=0.12, dy=0.05), "pick_and_place")
    split = affine_transfer(demo, kf, far)                               # the default: each longer step halved
    steps = np.linalg.norm(np.diff(split.positions[:dict(split.segments)["approach"] + 1], axis=0), axis=1)
    assert np.median(steps) < 0.8 * MAX_STEP, steps
    with pytest.raises(ValueError, match="pace"):
        affine_transfer(demo, kf, far, pace="expert")
    out = {}
    for name, (dx, dy) in (("far", (0.12, 0.05)), ("near", (-0.14, 0.1))):       # near: below the start
        path = affine_transfer(demo, kf, map_keyframes(demo, kf, _moved_configuration(demo, dx=dx, dy=dy),
                                                       "pick_and_place"), pace="seed")
        a = dict(path.segments)["approach"]
        # a step's effort: the larger of its distance and its turn as fractions of the limits
        effort = np.array([max(np.linalg.norm(path.positions[i + 1] - path.positions[i]) / MAX_STEP,
                               tf.quat_angle(path.quaternions[i], path.quaternions[i + 1]) / MAX_ROT)
                           for i in range(a)])
        assert a == int(np.ceil(effort.sum() - 1e-6)), (name, a, effort)
        assert np.all(effort[:-1] > 0.8) and effort.max() <= 1 + 1e-6, (name, effort)
        out[name] = (a, int(np.argmax(path.gripper > 0)))
    assert out["far"][0] > approach > out["near"][0], (out, approach)
    assert out["far"][1] > out["near"][1]


@pytest.mark.parametrize("task", ["pick_and_place", "insert_hexagon"])
def test_transfer_passes_through_mapped_keyframes(task):
    demo, kf = seed(task)
    cfg = _moved_configuration(demo, dx=-0.12, dy=0.1, dyaw=0.5, target_dx=0.04, target_dy=-0.05)
    new = map_keyframes(demo, kf, cfg, task)
    path = affine_transfer(demo, kf, new)
    at = dict(path.segments)
    assert list(at) == [k.name for k in kf]
    for k in new:
        i = at[k.name]
        assert np.linalg.norm(path.positions[i] - k.position) < 1e-6, k.name
        assert tf.quat_angle(path.quaternions[i], k.quaternion) < 1e-6, k.name
    # the grasp moved with the object, the place with the target
    T_obj = tf.pose7_to_matrix(cfg["object_pose"])
    grasp = tf.invert(T_obj) @ new[2].matrix()
    assert np.linalg.norm(grasp[:3, 3] - grasp_in_object(demo, kf)[:3, 3]) < 0.03    # up to a symmetry
    shift = new[-1].position - kf[-1].position
    assert np.allclose(shift[:2], [0.04, -0.05], atol=1e-9)
    # valid at 10 Hz: the per-step limits hold, the gripper schedule is the demo's
    step, rot = path.max_step()
    assert step <= MAX_STEP * (1 + 1e-4) and rot <= MAX_ROT * (1 + 1e-4)
    g = at["grasp"]
    assert np.all(path.gripper[:g] < 0) and path.gripper[g] > 0
    acts = path.actions()
    assert np.allclose(np.cumsum(acts[:, :3], axis=0)[-1], path.positions[-1] - path.positions[0])


@pytest.mark.parametrize("task,dyaw", [("pick_and_place", 2.6), ("pick_and_place", -2.9),
                                       ("insert_hexagon", 2.0), ("insert_hexagon", -1.3)])
def test_symmetry_keeps_the_tcp_yaw_near_the_demo(task, dyaw):
    demo, kf = seed(task)
    cfg = _moved_configuration(demo, dx=-0.05, dyaw=dyaw)
    new = map_keyframes(demo, kf, cfg, task)
    kg, ng = kf[2], new[2]
    limit = math.pi / 2 if task == "pick_and_place" else math.pi / 6
    assert _yaw_diff(tf.yaw_of(ng.quaternion), tf.yaw_of(kg.quaternion)) <= limit + 1e-9
    # without the symmetry choice the TCP would have turned with the object
    naive = tf.pose7_to_matrix(cfg["object_pose"]) @ grasp_in_object(demo, kf)
    assert _yaw_diff(tf.yaw_of(tf.matrix_to_quat(naive[:3, :3])), tf.yaw_of(kg.quaternion)) > limit
    # the grasp is still a grasp of the object: same height and distance from the object's axis
    T_rel = tf.invert(tf.pose7_to_matrix(cfg["object_pose"])) @ ng.matrix()
    T_demo = grasp_in_object(demo, kf)
    assert abs(T_rel[2, 3] - T_demo[2, 3]) < 1e-9
    assert abs(np.linalg.norm(T_rel[:2, 3]) - np.linalg.norm(T_demo[:2, 3])) < 1e-9
    # the place keeps the demo's yaw too, and the object in the hand ends where the demo put it
    kp, np_ = kf[5], new[5]
    assert _yaw_diff(tf.yaw_of(np_.quaternion), tf.yaw_of(kp.quaternion)) <= limit + 1e-9
    assert np.linalg.norm(np_.position - kp.position) < 0.03


def test_unreachable_mapping_raises():
    demo, kf = seed("pick_and_place")
    cfg = _moved_configuration(demo)
    cfg["object_pose"][0] = 1.5
    with pytest.raises(CandidateRejected) as exc:
        map_keyframes(demo, kf, cfg, "pick_and_place")
    assert exc.value.rejection.reason == REJECT_UNREACHABLE and "approach" in str(exc.value)
    with pytest.raises(ValueError, match="object_pose"):
        map_keyframes(demo, kf, {"object_pose": [1, 2, 3]}, "pick_and_place")


# ----------------------------------------------------------------------------- execution in the twin
def _cells(env, n_id: int, n_ood: int):
    ids, oods = env.grid.cells("id"), env.grid.cells("ood")
    pick = [ids[i * len(ids) // n_id] for i in range(n_id)] + [oods[i * len(oods) // n_ood] for i in range(n_ood)]
    return pick


@pytest.mark.parametrize("task", ["pick_and_place", "insert_hexagon"])
def test_affine_candidates_succeed_in_the_twin(tiny_twins, task):
    from twinrl_twin.twin_env import make_twin_env

    demo, kf = seed(task)
    env = make_twin_env(tiny_twins(task), render=False)
    try:
        results = []
        for i, cell in enumerate(_cells(env, 2, 3)):
            env.reset(seed=10 + i, options={"cell": cell})
            cfg = env.configuration
            c = generate_candidate(env, demo, kf, cfg)
            results.append(c)
            if isinstance(c, Candidate):
                ep = c.episode
                assert ep.is_success and ep.success[-1] and ep.terminated[-1]
                assert ep.episode_source == ds.SOURCE_TWIN and np.all(ep.source == ds.SOURCE_TWIN)
                assert ep.initial_configuration["region"] == env.grid.region_of(*cell)
                assert (ep.initial_configuration["cell_row"], ep.initial_configuration["cell_col"]) == cell
                assert ep.extra["generator"] == "affine" and ep.extra["seed_demo"] == f"seed-{task}"
                assert list(ep.extra["keyframes"]) == [k.name for k in kf]
                assert ep.observations["proprio"].shape == (ep.length + 1, 22)
                assert np.max(np.linalg.norm(ep.actions[:, :3], axis=1)) <= MAX_STEP + 1e-6
                # the twin's TCP went through the mapped grasp (the episode's own grasp keyframe)
                gi = ep.extra["keyframes"]["grasp"]
                assert np.linalg.norm(ep.observations["proprio"][gi, 14:17] - c.path.positions[gi]) < 0.005
                assert c.seconds > 0
        ok = sum(isinstance(c, Candidate) for c in results)
        assert ok >= 4, [(c.reason, c.detail) for c in results if isinstance(c, Rejection)]
    finally:
        env.close()


def test_rejections_never_raise(tiny_twins):
    from twinrl_twin.twin_env import make_twin_env

    demo, kf = seed("pick_and_place")
    env = make_twin_env(tiny_twins("pick_and_place"), render=False)
    try:
        env.reset(seed=3, options={"region": "id"})
        cfg = env.configuration
        far = dict(cfg, object_pose=[1.5, 0.0, cfg["object_pose"][2], *cfg["object_pose"][3:]])
        r = generate_candidate(env, demo, kf, far)
        assert isinstance(r, Rejection) and r.reason == REJECT_UNREACHABLE and r.configuration["object_pose"][0] == 1.5

        r = generate_candidate(env, demo, kf, cfg, collision_check=lambda e: [("fr3_link7", "table")])
        assert isinstance(r, Rejection) and r.reason == REJECT_COLLISION and "fr3_link7-table" in r.detail

        def broken_planner(*args):
            raise RuntimeError("planner exploded")

        r = generate_candidate(env, demo, kf, cfg, method="plan", planner=broken_planner)
        assert isinstance(r, Rejection) and r.reason == REJECT_ERROR and "planner exploded" in r.detail
        with pytest.raises(ValueError, match="planner"):
            generate_candidate(env, demo, kf, cfg, method="plan")
        with pytest.raises(ValueError, match="method"):
            generate_candidate(env, demo, kf, cfg, method="teleport")

        # a planner's path is executed like an affine one
        r = generate_candidate(env, demo, kf, cfg, method="plan",
                               planner=lambda e, d, k, n: affine_transfer(d, k, n))
        assert isinstance(r, Candidate) and r.episode.extra["generator"] == "plan"

        # the twin does not put the object where asked (in the air): unreachable
        new = map_keyframes(demo, kf, cfg, env.task_obj)
        path = affine_transfer(demo, kf, new)
        air = dict(cfg, object_pose=[*cfg["object_pose"][:2], 0.2, *cfg["object_pose"][3:]])
        with pytest.raises(CandidateRejected, match="mm from the requested"):
            execute_path(env, path, air)
    finally:
        env.close()
