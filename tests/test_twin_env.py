"""The kinematic twin env: spaces equal to the sim's, grasp attach/release, expert success per
task, images from the scan's assets, corrupt twin directories, and the build/rollout CLI."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from twinrl_twin.scan_sim import simulate_scan
from twinrl_twin.sim.config import TASKS
from twinrl_twin.twin_assets import TwinAssetError, load_twin


@pytest.fixture(scope="module")
def twins(tiny_twins):
    """task -> twin directory (tests/conftest.py: tiny_twins)."""
    return tiny_twins


def _run_expert(env, seed, cell=None, limit=None):
    obs, info = env.reset(seed=seed, options={"cell": cell} if cell else None)
    expert = env.expert()
    steps = 0
    while True:
        obs, r, term, trunc, info = env.step(expert.act(obs, info))
        steps += 1
        if term or trunc or (limit and steps >= limit):
            return obs, info, steps


def _grasp_block(env, options=None, start=None):
    """Reset with ``options`` (or go on from ``start`` = (obs, info) of a reset) and run the
    expert until it holds the block; (obs, info)."""
    obs, info = start if start is not None else env.reset(seed=0, options=options)
    expert = env.expert()
    for _ in range(60):
        obs, _, _, _, info = env.step(expert.act(obs, info))
        if info["grasped"]:
            break
    assert info["grasped"], "the expert's close never grasped the block"
    return obs, info


def test_spaces_equal_the_sims(twins):
    from twinrl_twin.sim import make_env
    from twinrl_twin.twin_env import make_twin_env

    sim = make_env("pick_and_place", render=True)
    twin = make_twin_env(twins("pick_and_place"), render=True)
    try:
        so, si = sim.reset(seed=3)
        to, ti = twin.reset(seed=3)
        assert set(so) == set(to)
        for k in so:
            a, b = np.asarray(so[k]), np.asarray(to[k])
            assert a.shape == b.shape and a.dtype == b.dtype, k
        assert to["third_person"].shape == (256, 256, 3) and to["wrist"].shape == (128, 128, 3)
        assert to["proprio"].shape == (22,)
        # same seed -> same sampled configuration (the twin's fixture is the scanned one)
        assert si["configuration"]["cell_row"] == ti["configuration"]["cell_row"]
        assert np.allclose(si["configuration"]["object_pose"][:2], ti["configuration"]["object_pose"][:2])
        assert np.allclose(ti["configuration"]["target_pose"], twin.twin_target, atol=1e-9)
        # same action semantics: one 7-D delta through the same envelope moves both TCPs alike
        a = np.array([0.03, -0.02, -0.03, 0, 0, 0.1, -1.0])
        p0s, p0t = sim.target_pose[0], twin.target_pose[0]
        so, _, _, _, si = sim.step(a)
        to, _, _, _, ti = twin.step(a)
        assert np.allclose(sim.target_pose[0] - p0s, twin.target_pose[0] - p0t, atol=1e-9)
        # and the arms follow alike: both lag their new target after one step, then settle
        lag_s = np.linalg.norm(so["tcp_pose"][:3] - sim.target_pose[0])
        lag_t = np.linalg.norm(to["tcp_pose"][:3] - twin.target_pose[0])
        assert lag_t > 0.01 and abs(lag_t - lag_s) < 0.006, (lag_s, lag_t)
        assert np.allclose(to["command"][:3], twin.target_pose[0] - to["tcp_pose"][:3], atol=1e-6)
        for _ in range(8):
            to, _, _, _, ti = twin.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
            so, _, _, _, si = sim.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        assert np.linalg.norm(to["tcp_pose"][:3] - twin.target_pose[0]) < 2e-3
        for key in ("success", "configuration", "safety", "step"):
            assert key in ti and key in si
        # bad action: rejected by the envelope with a reason, nothing moves
        before = twin.target_pose[0]
        _, _, _, _, ti = twin.step([np.nan, 0, 0, 0, 0, 0, 0])
        assert not ti["safety"].accepted and "non-finite" in ti["safety"].reason
        assert np.array_equal(before, twin.target_pose[0])
        with pytest.raises(ValueError, match="unknown reset options"):
            twin.reset(options={"bogus": 1})
    finally:
        sim.close()
        twin.close()


def test_joint_velocities_are_the_sims_end_of_step_velocities(twins):
    """The twin reports the velocity at the end of the step as the sim does, not the step's mean
    motion (which lags it by half a step): closer to the sim's than the finite difference."""
    from twinrl_twin.sim import make_env
    from twinrl_twin.twin_env import end_of_step_velocity, make_twin_env

    # a steady velocity is read as itself, a steady ramp at its end
    assert np.allclose(end_of_step_velocity(np.full(7, 0.01), np.full(7, 0.01), 0.1), 0.1)
    assert np.allclose(end_of_step_velocity(np.full(7, 0.02), np.full(7, 0.01), 0.1), 0.25)
    sim = make_env("pick_and_place", render=False)
    twin = make_twin_env(twins("pick_and_place"), render=False)
    try:
        sim.reset(seed=5)
        to, _ = twin.reset(seed=5)
        rng = np.random.default_rng(0)
        actions = [np.r_[rng.uniform(-0.03, 0.03, 3), 0, 0, rng.uniform(-0.1, 0.1), -1.0] for _ in range(6)]
        actions += [np.r_[np.zeros(6), -1.0]] * 3
        err_end, err_mean = [], []
        for a in actions:
            q0 = to["joint_positions"].copy()
            so, *_ = sim.step(a)
            to, *_ = twin.step(a)
            err_end.append(to["joint_velocities"] - so["joint_velocities"])
            err_mean.append((to["joint_positions"] - q0) / twin.control_dt - so["joint_velocities"])
        rms_end, rms_mean = (float(np.sqrt(np.mean(np.square(e)))) for e in (err_end, err_mean))
        assert rms_end < 0.8 * rms_mean, (rms_end, rms_mean)
    finally:
        sim.close()
        twin.close()


def test_grasp_attach_and_release(twins):
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("pick_and_place"), render=False)
    obs, info = env.reset(seed=0, options={"configuration": {"object_pose": [0.45, 0.05, 0.02, 0, 0, 0, 1]}})
    rest_z = env.task_obj.rest_z
    assert abs(info["object_pose"][2] - rest_z) < 1e-9          # dropped onto the table
    obs, info = _grasp_block(env, start=(obs, info))
    width = obs["gripper_width"]
    assert 0.005 < width < 0.06                                    # fingers stopped at the block
    # lift: the object follows the TCP rigidly
    rel0 = info["object_pose"][:3] - obs["tcp_pose"][:3]
    for _ in range(4):
        obs, _, _, _, info = env.step([0.0, 0.02, 0.04, 0, 0, 0, 1.0])
    assert info["grasped"] and info["object_pose"][2] > rest_z + 0.1
    assert np.allclose(info["object_pose"][:3] - obs["tcp_pose"][:3], rel0, atol=1e-6)
    # release in the air: the block drops to the table, upright
    obs, _, _, _, info = env.step([0, 0, 0, 0, 0, 0, -1.0])
    assert not info["grasped"]
    assert abs(info["object_pose"][2] - rest_z) < 1e-9
    assert not info["success"]                                   # not on the plate
    # closing with nothing between the fingers grasps nothing and closes fully
    for _ in range(3):
        obs, _, _, _, info = env.step([0, 0, 0.05, 0, 0, 0, -1.0])
    for _ in range(10):
        obs, _, _, _, info = env.step([0, 0, 0, 0, 0, 0, 1.0])
    assert not info["grasped"] and obs["gripper_width"] < 1e-6
    env.close()


@pytest.mark.parametrize("stiffness", [6000.0, 20000.0, 0.0])
def test_a_held_object_pressed_onto_the_table_stops_the_arm(twins, stiffness):
    """InteractionConfig.press_stiffness: the table holds the arm up (the block keeps its place
    in the hand) and a target pressing deeper than force_threshold / stiffness (30 N) trips the
    force stop (target := measured pose). Without the model (0) the block slips up in the hand."""
    from twinrl_twin.twin_env import load_interaction_config, make_twin_env

    env = make_twin_env(twins("pick_and_place"), render=False,
                        interaction=load_interaction_config(overrides=[f"press_stiffness={stiffness}"]))
    obs, info = _grasp_block(env, {"configuration": {"object_pose": [0.45, 0.05, 0.02, 0, 0, 0, 1]}})
    rest_z = env.task_obj.rest_z
    for _ in range(5):                                      # settle on the table, holding it
        obs, _, _, _, info = env.step([0, 0, 0, 0, 0, 0, 1.0])
    rel0 = info["object_pose"][:3] - obs["tcp_pose"][:3]
    tcp0 = obs["tcp_pose"][:3].copy()
    # the target 3 mm into the table: 18 N at 6000 N/m, 60 N at 20000 N/m
    seen = [obs]
    obs, _, _, _, info = env.step([0, 0, -0.003, 0, 0, 0, 1.0])
    seen.append(obs)
    for _ in range(4):
        obs, _, _, _, info = env.step([0, 0, 0, 0, 0, 0, 1.0])
        seen.append(obs)
    # the reported joint velocities are those of the motion the arm made, lift or stop included
    q = np.array([o["joint_positions"] for o in seen])
    v = np.array([o["joint_velocities"] for o in seen])
    moved = np.diff(q, axis=0)
    want = (1.5 * moved[1:] - 0.5 * moved[:-1]) / env.control_dt
    if stiffness == 20000.0:
        np.testing.assert_allclose(v[1], 0.0, atol=1e-12)         # the stop holds the arm
        want[0] = (1.5 * moved[1]) / env.control_dt               # the step after starts from rest
    np.testing.assert_allclose(v[2:], want, atol=1e-9)
    assert np.abs(moved).max() > 1e-4                             # it moved: the check has something to see
    assert -1e-9 < info["object_pose"][2] - rest_z < 0.001   # on the table (to the IK's 0.7 mm), not in it
    if stiffness:
        assert np.allclose(info["object_pose"][:3] - obs["tcp_pose"][:3], rel0, atol=1e-4)   # no slip
        assert abs(obs["tcp_pose"][2] - tcp0[2]) < 0.001      # held up by the table
    if stiffness == 6000.0:
        assert env._force_stops == 0 and obs["command"][2] < -0.0025      # the target stays below
    elif stiffness:
        assert env._force_stops == 1 and np.abs(obs["command"][:3]).max() < 1e-4   # held where it is
    else:
        assert obs["tcp_pose"][2] < tcp0[2] - 0.002           # the arm goes down, the block slips up
        assert (info["object_pose"] - obs["tcp_pose"])[2] > rel0[2] + 0.002
    env.close()


def test_in_hand_xy_option_places_the_grasped_object(twins):
    """The reset option in_hand_xy: once grasped, the object sits at that x / y of the TCP frame
    (instead of centred where the fingers met it); bad values are refused naming the option."""
    from twinrl_bringup import transforms as tf
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("pick_and_place"), render=False)
    config = {"object_pose": [0.45, 0.05, 0.02, 0, 0, 0, 1]}
    rels = {}
    for xy in (None, (0.004, -0.002)):
        opts = {"configuration": config} if xy is None else {"configuration": config, "in_hand_xy": list(xy)}
        obs, info = _grasp_block(env, opts)
        T_rel = tf.invert(tf.pose7_to_matrix(obs["tcp_pose"])) @ tf.pose7_to_matrix(info["object_pose"])
        rels[xy] = T_rel[:3, 3]
    np.testing.assert_allclose(rels[(0.004, -0.002)][:2], [0.004, -0.002], atol=1e-6)
    assert abs(rels[None][1]) < 1e-6                              # default: centred between the fingers
    assert rels[(0.004, -0.002)][2] == pytest.approx(rels[None][2], abs=1e-6)
    for bad, what in (([0.1, 0.0], "more than 0.02 m"), ([0.0], "2 finite values"),
                      ([float("nan"), 0.0], "2 finite values"), ("x", "expected")):
        with pytest.raises(ValueError, match=f"in_hand_xy: .*{what}"):
            env.reset(seed=0, options={"configuration": config, "in_hand_xy": bad})
    env.close()


def test_insertion_needs_alignment(twins):
    from twinrl_bringup import transforms as tf
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("insert_hexagon"), render=False)
    env.reset(seed=0)
    t = env.task_obj.target_pose7()
    rest, depth = env.task_obj.rest_z, env.task_cfg.target.size[2]
    aligned = tf.pose7_to_matrix(np.r_[t[:3], tf.quat_from_euler("z", tf.yaw_of(t[3:]) + math.pi / 3)])
    assert abs(env.support_z(aligned) - (t[2] + rest)) < 1e-9    # hexagon symmetry: drops in
    off = aligned.copy()
    off[0, 3] += 0.01
    assert abs(env.support_z(off) - (t[2] + depth + rest)) < 1e-9  # 1 cm off: sits on the walls
    turned = tf.pose7_to_matrix(np.r_[t[:3], tf.quat_from_euler("z", tf.yaw_of(t[3:]) + 0.3)])
    assert env.support_z(turned) > t[2] + rest + 1e-3
    far = tf.pose7_to_matrix([t[0] + 0.3, t[1], 0.1, 0, 0, 0, 1])
    assert abs(env.support_z(far) - rest) < 1e-9
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_sim_expert_succeeds_in_the_twin(twins, task):
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins(task), render=False)
    cells = env.grid.cells("all")
    try:
        for k, seed in enumerate((11, 12, 13)):
            _, info, steps = _run_expert(env, seed, cells[(5 * k) % len(cells)])
            assert info["success"], f"{task}: seed {seed} failed after {steps} steps ({info['configuration']})"
            assert steps < env.time_limit
    finally:
        env.close()


def test_images_show_the_scanned_scene(twins):
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("pick_and_place"), render=True)
    try:
        obs, _ = env.reset(seed=0, options={"configuration": {"object_pose": [0.5, -0.1, 0.02, 0, 0, 0, 1]}})
        a = obs["third_person"].astype(int)
        for key in ("third_person", "wrist"):
            img = obs[key]
            assert img.std() > 15, f"{key} looks blank"
            assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
        # the object is visible: moving it changes pixels where it was and where it went
        obs2, _ = env.reset(seed=0, options={"configuration": {"object_pose": [0.5, 0.1, 0.02, 0, 0, 0, 1]}})
        diff = np.abs(obs2["third_person"].astype(int) - a).sum(axis=2) > 40
        assert diff.sum() > 20
        cols = np.flatnonzero(diff.any(axis=0))
        assert cols.max() - cols.min() > 20                           # two separate places
        # its colour comes from the scan: reddish block pixels (the sim's block is red)
        changed = a[diff]
        assert (changed[:, 0] - changed[:, 2]).max() > 60
        # the scene comes from the scan's Gaussians: the table colour of the sim scan
        assert np.median(a[200:, :, 0]) > np.median(a[200:, :, 2]) + 20
        # the scanned table became a support-surface mesh at the table height (z = 0)
        surf = env.assets.surface
        assert len(surf.faces) > 1000
        near = (np.abs(surf.vertices[:, 0] - 0.5) < 0.2) & (np.abs(surf.vertices[:, 1]) < 0.3)
        assert abs(float(np.median(surf.vertices[near, 2]))) < 0.01
        # the robot moves in the images
        for _ in range(3):
            obs3, *_ = env.step([0.0, 0.05, 0.0, 0, 0, 0, -1])
        assert (np.abs(obs3["third_person"].astype(int) - obs2["third_person"].astype(int)).sum(axis=2) > 40).sum() > 50
    finally:
        env.close()


def test_wrist_image_does_not_depend_on_the_third_person_cameras_size(twins):
    """moderngl keeps a viewport per framebuffer: setting it before binding the wrist's once
    left the wrist drawing its points, support surface and far field at the third-person
    camera's scale (the plate's splats beside its mesh, holes of the table elsewhere)."""
    from twinrl_twin.twin_env import make_twin_env

    wrists = []
    for third in (96, 48):
        over = {"third_person.width": third, "third_person.height": third, "wrist.width": 48, "wrist.height": 48}
        env = make_twin_env(twins("pick_and_place"), render=True, camera_overrides=over)
        try:
            obs, info = env.reset(seed=0, options={"cell": (1, 1)})
            expert = env.expert()
            for _ in range(45):            # over the plate, the block in hand
                obs, _, term, trunc, info = env.step(expert.act(obs, info))
            assert info["grasped"]
            first = env.render_cameras()["wrist"]
            second = env.render_cameras()["wrist"]
            assert np.array_equal(first, second), "the wrist image changed between two renders of one state"
            wrists.append(second)
        finally:
            env.close()
    diff = np.abs(wrists[0].astype(int) - wrists[1].astype(int)).max(axis=2)
    assert (diff > 10).mean() == 0, f"{(diff > 10).mean():.1%} of the wrist pixels depend on the third-person size"


def test_ink_on_the_board_shows_from_above(twins):
    """A fixture's splats lying in its top face are drawn as discs in the face (surfels):
    camera-facing sprites pushed back by their radius hid the whiteboard's ink under the
    board's mesh when seen from above, as the wrist camera sees it. The board's mesh is drawn
    here with vertex colours alone: its texture from the scan's frames shows the ink by itself
    (test_twin_textures.py), which would hide what the splats do."""
    import dataclasses

    from twinrl_twin.render import RenderConfig, TwinRenderer, surfel_radii
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("erase_whiteboard"), render=False)
    try:
        env.reset(seed=5)
        board = np.asarray(env.twin_target, float)
        fixture = np.eye(4)
        fixture[:3, 3] = board[:3]
        above = fixture.copy()
        above[2, 3] += 0.25                  # identity rotation: an OpenGL camera looking down
        pts, mesh = env.assets.fixture_points, env.assets.fixture_mesh
        radii = surfel_radii(pts, mesh, 0.003)
        ink = pts.colors.max(axis=1) < 80
        assert ink.sum() > 5 and (radii[ink] > 0).all(), "the ink does not lie in the board's top face"
        assert (radii <= pts.radii + 1e-7).all()
        # a splat's disc stays inside the board's outline
        half = np.abs(mesh.vertices[:, :2]).max(axis=0)
        lying = radii > 0
        assert (np.abs(pts.positions[lying, :2]) + radii[lying, None] <= half + 1e-5).all()
        away = np.eye(4)
        away[:3, 3] = (5.0, 5.0, -5.0)      # the robot and the eraser out of the picture
        links = list(env.assets.robot)
        untextured = dataclasses.replace(env.assets, fixture_mesh=dataclasses.replace(mesh, uvs=None, texture=None))
        dark = {}
        for tol, drawn in ((0.003, links), (0.0, links), (0.003, [])):
            r = TwinRenderer(untextured, drawn, {"top": (96, 96)}, RenderConfig(surfel_tolerance=tol, far_field=False))
            try:
                img = r.render(above, 60.0, (96, 96), {n: away for n in drawn}, away, fixture)
            finally:
                r.close()
            dark[tol, len(drawn)] = int((img.max(axis=2) < 80).sum())
        n = len(links)
        assert dark[0.003, n] > 40 and dark[0.003, n] > 4 * dark[0.0, n], dark
        # a renderer without robot links (a twin of the cell alone) draws the same board
        assert dark[0.003, 0] == dark[0.003, n], dark
    finally:
        env.close()


def _board_crop(env, img):
    """Pixels of ``img`` (third-person) inside the projection of the whiteboard's top."""
    from twinrl_bringup import transforms as tf
    from twinrl_twin.render import perspective

    cam = env.cameras_cfg.third_person
    t = env.task_obj.target_pose7()
    bx, by, bz = env.task_cfg.target.size
    corners = np.array([[sx * bx / 2, sy * by / 2, bz] for sx in (-1, 1) for sy in (-1, 1)])
    world = tf.transform_points(tf.pose7_to_matrix(t), corners)
    clip = (perspective(cam.fovy, cam.width / cam.height) @ np.linalg.inv(env.cam_local["third_person"])
            @ np.c_[world, np.ones(4)].T).T
    ndc = clip[:, :2] / clip[:, 3:4]
    u = (ndc[:, 0] + 1) / 2 * cam.width
    v = (1 - ndc[:, 1]) / 2 * cam.height
    return img[int(v.min()):int(v.max()) + 1, int(u.min()):int(u.max()) + 1]


def test_erased_ink_disappears_from_images(twins):
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twins("erase_whiteboard"), render=True)
    try:
        obs0, info = env.reset(seed=5)
        crop0 = _board_crop(env, obs0["third_person"])
        ink0 = (crop0.max(axis=2) < 60).sum()
        assert ink0 > 30, "the scanned ink pattern is not visible on the board"
        obs, info, _ = _run_expert(env, 5)
        assert info["success"] and info["erased_fraction"] >= 0.9
        for _ in range(5):                                         # lift the arm off the board
            obs, *_ = env.step([0, 0, 0.05, 0, 0, 0, 1.0])
        ink1 = (_board_crop(env, obs["third_person"]).max(axis=2) < 60).sum()
        assert ink1 < 0.3 * ink0, (ink0, ink1)
        # a new episode brings the ink back
        obs2, _ = env.reset(seed=5)
        assert not env.task_obj.erased.any()
        assert np.array_equal(obs2["third_person"], obs0["third_person"])
    finally:
        env.close()


def test_corrupt_twin_directory_names_the_file(twins, tmp_path):
    src = twins("pick_and_place")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    load_twin(bad)                                                    # the copy is fine
    data = (bad / "scene_points.npz").read_bytes()
    (bad / "scene_points.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TwinAssetError, match="scene_points.npz"):
        load_twin(bad)
    shutil.copy(src / "scene_points.npz", bad / "scene_points.npz")
    np.savez(bad / "object_mesh.npz", vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 7]]),
             colors=np.zeros((3, 3), np.uint8))
    with pytest.raises(TwinAssetError, match="object_mesh.npz.*face indices"):
        load_twin(bad)
    shutil.copy(src / "object_mesh.npz", bad / "object_mesh.npz")
    meta = json.loads((bad / "twin.json").read_text())
    meta["object_pose"] = [0.5, 0, "x"]
    (bad / "twin.json").write_text(json.dumps(meta))
    with pytest.raises(TwinAssetError, match="twin.json.*object_pose"):
        load_twin(bad)
    (bad / "twin.json").write_text("{not json")
    with pytest.raises(TwinAssetError, match="twin.json"):
        load_twin(bad)
    (bad / "twin.json").unlink()
    with pytest.raises(TwinAssetError, match="twin.json"):
        load_twin(bad)
    (bad / "robot_meshes.npz").unlink()
    shutil.copy(src / "twin.json", bad / "twin.json")
    with pytest.raises(TwinAssetError, match="robot_meshes.npz.*missing"):
        load_twin(bad)


def test_cli_build_and_rollout(twins, tmp_path, capsys):
    import argparse

    from twinrl_twin.cli import register

    parser = argparse.ArgumentParser(prog="twinrl")
    register(parser.add_subparsers(dest="command"))
    scan = tmp_path / "scan"
    simulate_scan("insert_triple_column", scan, frames=6, seed=2, progress=False)
    out = tmp_path / "twin"
    args = parser.parse_args(["twin", "build", "--scan", str(scan), "--task", "insert_triple_column", "--out",
                              str(out), "--groundtruth-alignment", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["alignment"]["source"] == "groundtruth" and report["counts"]["scene_points"] > 1000
    assert (out / "preview.png").is_file() and (out / "twin.json").is_file()
    assert not list(tmp_path.glob(".twin.partial-*"))
    # an existing twin is not overwritten without --overwrite
    args = parser.parse_args(["twin", "build", "--scan", str(scan), "--task", "insert_triple_column", "--out",
                              str(out), "--groundtruth-alignment"])
    assert args.func(args) == 2
    assert "already exists" in capsys.readouterr().err
    args = parser.parse_args(["twin", "rollout", "--twin", str(out), "--episodes", "2", "--no-render", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("task", "episodes", "success_rate", "mean_length", "env_steps_per_s", "per_cell"):
        assert key in summary
    assert summary["task"] == "insert_triple_column" and summary["episodes"] == 2
    assert summary["success_rate"] == 1.0 and sum(c["episodes"] for c in summary["per_cell"]) == 2
    args = parser.parse_args(["twin", "rollout", "--twin", str(tmp_path / "nope"), "--episodes", "1"])
    assert args.func(args) == 2
    assert "nope" in capsys.readouterr().err


def _error_against_sim(twin_dirs: dict, camera: str, cell) -> dict:
    """Mean absolute pixel difference of ``camera`` between the sim world and each pick_and_place
    twin of ``twin_dirs`` (name -> directory), all in the sim's start configuration of ``cell``."""
    from twinrl_policy.evaluation import sim_env_factory
    from twinrl_twin.twin_env import make_twin_env

    sim = sim_env_factory("pick_and_place", 0, {}, None)
    errors = {}
    try:
        obs, info = sim.reset(seed=3, options={"cell": cell})
        for name, d in twin_dirs.items():
            env = make_twin_env(d, render=True)
            try:
                tw, _ = env.reset(seed=3, options={"configuration": info["configuration"]})
                errors[name] = float(np.abs(tw[camera].astype(float) - obs[camera]).mean())
            finally:
                env.close()
    finally:
        sim.close()
    return errors


def test_twin_draws_the_generated_robot_as_the_sim_does(twins, tmp_path):
    """The generated URDF approximates the sim's capsules by flat-ended cylinders; the twin
    draws the robot from the FR3 description instead (robot_model: auto), and its wrist view
    then looks like the sim's, where the cylinders' ends filled its lower part."""
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.twin_assets import build_twin, load_build_config

    auto_dir = twins("pick_and_place")
    scan = auto_dir.parent / "scan_pick_and_place"
    cfg = load_build_config()
    assert cfg.robot_model == "auto"
    cfg.robot_model = "urdf"
    build_twin(scan, tmp_path / "urdf_twin", "pick_and_place", load_groundtruth(scan).scan_to_base, "groundtruth",
               cfg=cfg, preview=False)
    errors = _error_against_sim({"auto": auto_dir, "urdf": tmp_path / "urdf_twin"}, "wrist", (1, 2))
    assert errors["auto"] < 0.8 * errors["urdf"], errors
    cfg.robot_model = "meshes"
    with pytest.raises(ValueError, match="robot_model must be auto, urdf or description"):
        cfg.validate()


def test_far_field_panorama_shows_what_the_scan_saw_beyond_the_scene(twins, tmp_path):
    """What the scan's cameras saw with no depth or beyond the scene radius (the sim cell's black
    sky over its grey floor) becomes a panorama drawn behind the twin: its third-person view is
    then closer to the sim's than with a flat clear colour (the older twins' grey)."""
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.twin_assets import build_twin, flat_background_overrides, load_build_config

    pano_dir = twins("pick_and_place")
    assets = load_twin(pano_dir)
    pano = assets.far_field
    assert pano is not None and pano.shape == (64, 128, 3) and pano.dtype == np.uint8
    assert pano[48:].max() < 30                          # above 45 deg elevation: the sim's black sky
    assert np.median(pano[:16]) > 80                     # below -45 deg: its grey floor
    assert assets.background == pytest.approx((0.0, 0.0, 0.0), abs=0.05)   # the median far-field colour
    scan = pano_dir.parent / "scan_pick_and_place"
    cfg = load_build_config(None, flat_background_overrides())
    build_twin(scan, tmp_path / "flat", "pick_and_place", load_groundtruth(scan).scan_to_base, "groundtruth",
               cfg=cfg, preview=False)
    assert load_twin(tmp_path / "flat").far_field is None
    errors = _error_against_sim({"panorama": pano_dir, "flat": tmp_path / "flat"}, "third_person", (2, 4))
    assert errors["panorama"] < 0.7 * errors["flat"], errors
    for bad in (["far_field_width=3"], ["background=[0.5, 2.0, 0.0]"]):
        with pytest.raises(ValueError, match=bad[0].split("=")[0]):
            load_build_config(None, bad).validate()


def test_corrupt_far_field_is_named(twins, tmp_path):
    src = twins("pick_and_place")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    np.savez(bad / "far_field.npz", panorama=np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(TwinAssetError, match=r"far_field.npz.*\(H, 2H, 3\)"):
        load_twin(bad)
    (bad / "far_field.npz").write_bytes(b"not a zip")
    with pytest.raises(TwinAssetError, match="far_field.npz.*unreadable"):
        load_twin(bad)
    (bad / "far_field.npz").unlink()
    with pytest.raises(TwinAssetError, match="far_field.npz.*missing"):
        load_twin(bad)
    meta = json.loads((src / "twin.json").read_text())
    meta.update(far_field=None, background=[0.1, "grey", 0.1])
    (bad / "twin.json").write_text(json.dumps(meta))
    with pytest.raises(TwinAssetError, match="twin.json.*background"):
        load_twin(bad)
    meta["background"] = None                             # a twin from before: the default grey
    (bad / "twin.json").write_text(json.dumps(meta))
    assert load_twin(bad).background is None and load_twin(bad).far_field is None
