"""Antipodal grasps on simple meshes with known good grasps; collision and support checks;
mapping to the robot base; clear errors for bad meshes."""
import math

import numpy as np
import pytest
import trimesh

from twinrl_bringup import transforms as tf
from twinrl_twin.grasps import (
    GraspConfig,
    finger_boxes,
    grasps_in_base,
    load_grasp_config,
    load_grasps,
    sample_grasps,
    sample_grasps_file,
    save_grasps,
)
from twinrl_twin.scan import ScanError, Similarity

CFG = GraspConfig(samples=300, approaches=8, top_n=15)


def _hex_prism(across_flats=0.036, height=0.06):
    r = across_flats / 2 / math.cos(math.pi / 6)
    return trimesh.creation.cylinder(radius=r, height=height, sections=6)


def _check_frames(grasps):
    for g in grasps:
        R = g.pose[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
        assert np.allclose(g.position, g.contacts.mean(axis=0), atol=1e-9)
        axis = g.contacts[1] - g.contacts[0]
        assert np.isclose(np.linalg.norm(axis), g.width)
        assert abs(float(axis @ g.closing_axis)) / g.width > 0.999


def test_box_grasps_close_across_the_narrow_side():
    box = trimesh.creation.box(extents=(0.11, 0.026, 0.026))
    grasps = sample_grasps(box, CFG)
    assert len(grasps) >= 10
    _check_frames(grasps)
    for g in grasps:
        # 0.11 m along x does not fit the 0.08 m hand: every grasp closes along y or z
        assert abs(g.closing_axis[0]) < 1e-6
        assert np.isclose(g.width, 0.026, atol=1e-6)
    best = grasps[0]
    assert abs(best.closing_axis[1]) > 0.999                    # fingers on the side faces
    assert best.approach_direction[2] < -0.95                   # top-down first
    assert np.linalg.norm(best.position[:2]) < 0.015            # near the middle of the block
    scores = [g.score for g in grasps]
    assert scores == sorted(scores, reverse=True)


def test_cylinder_grasps_pass_through_the_axis():
    cyl = trimesh.creation.cylinder(radius=0.02, height=0.06, sections=64)
    grasps = sample_grasps(cyl, CFG)
    assert len(grasps) >= 10
    _check_frames(grasps)
    for g in grasps:
        assert abs(g.closing_axis[2]) < 0.05                    # horizontal closing axis
        assert np.isclose(g.width, 0.04, atol=5e-4)             # diameter
        assert np.linalg.norm(g.position[:2]) < 1e-3            # centre on the axis
    assert grasps[0].approach_direction[2] < -0.95


def test_hexagonal_prism_grasps_across_flats_only():
    grasps = sample_grasps(_hex_prism(), CFG)
    assert len(grasps) >= 10
    _check_frames(grasps)
    corners = 0.036 / math.cos(math.pi / 6)
    for g in grasps:
        # across corners (0.0416 m) the contact normals are 30 deg off the axis: outside the
        # friction cone of mu = 0.5 (26.6 deg); across flats (0.036 m) they are exact
        assert np.isclose(g.width, 0.036, atol=1e-5) and not np.isclose(g.width, corners, atol=1e-3)
        assert abs(g.closing_axis[2]) < 1e-6
        # flat normals of this prism point at 30 + k * 60 degrees
        ang = math.degrees(math.atan2(g.closing_axis[1], g.closing_axis[0])) % 60.0
        assert abs(ang - 30.0) < 0.5
        assert g.antipodality > 0.99
    # with a friction coefficient of 0.7 (35 deg) and perturbed rays, across-corner pairs appear
    loose = sample_grasps(_hex_prism(), GraspConfig(samples=400, approaches=6, cone_samples=3, friction=0.7,
                                                    top_n=400, dedup_distance=0.0))
    assert any(g.width > 0.038 for g in loose)


def test_friction_cone_respected_with_perturbed_rays():
    cfg = GraspConfig(samples=300, approaches=6, cone_samples=4, friction=0.3, top_n=30)
    cyl = trimesh.creation.cylinder(radius=0.02, height=0.05, sections=64)
    grasps = sample_grasps(cyl, cfg)
    assert grasps
    limit = math.atan(0.3)
    for g in grasps:
        a = (g.contacts[1] - g.contacts[0]) / g.width
        for p, sign in ((g.contacts[0], -1.0), (g.contacts[1], 1.0)):
            n = np.array([p[0], p[1], 0.0])
            n /= np.linalg.norm(n)                               # outward normal of the side
            assert math.acos(np.clip(sign * (n @ a), -1, 1)) <= limit + 0.02
    assert min(g.antipodality for g in grasps) < 0.99           # perturbed rays: not all perfect


def test_too_wide_object_has_no_grasp():
    assert sample_grasps(trimesh.creation.box(extents=(0.1, 0.1, 0.1)), CFG) == []
    narrower = GraspConfig(samples=200, approaches=6, max_width=0.02)
    assert sample_grasps(trimesh.creation.box(extents=(0.11, 0.026, 0.026)), narrower) == []


def test_finger_collision_with_a_neighbour_rejects_the_squeezed_grasp():
    a = trimesh.creation.box(extents=(0.05, 0.02, 0.04))
    alone = sample_grasps(a, CFG)
    assert any(abs(g.closing_axis[1]) > 0.99 for g in alone)
    b = trimesh.creation.box(extents=(0.05, 0.02, 0.04))
    b.apply_translation([0.0, 0.02 + 0.005, 0.0])               # 5 mm gap: no room for a finger
    pair = trimesh.util.concatenate([a, b])
    grasps = sample_grasps(pair, GraspConfig(samples=600, approaches=8, top_n=40))
    assert grasps, "the pair can still be grasped along x"
    for g in grasps:
        assert abs(g.closing_axis[1]) < 0.5, "a finger would have to enter the 5 mm gap"
    # the finger boxes really sit outside the contacts
    lo, hi = finger_boxes(CFG, 0.02)[0]
    assert lo[1] >= 0.01 + CFG.finger_clearance - 1e-12 and hi[2] == pytest.approx(CFG.tip_margin)


def _finger_corners(g, cfg):
    """Object-frame corners of both finger boxes at the final grasp pose (no approach sweep)."""
    out = []
    for lo, hi in finger_boxes(cfg, g.width)[:2]:
        lo = lo.copy()
        lo[2] = hi[2] - cfg.finger_length
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        out.append(tf.transform_points(g.pose, corners))
    return np.concatenate(out)


def test_support_plane_keeps_fingers_off_the_table():
    plate = trimesh.creation.box(extents=(0.06, 0.03, 0.004))
    assert sample_grasps(plate, CFG) == []                       # fingertips would go below the table
    lifted = sample_grasps(plate, CFG, on_support=False)         # e.g. a plate held up off the table
    assert {round(g.width, 4) for g in lifted} == {0.03, 0.06}
    tall = trimesh.creation.box(extents=(0.03, 0.03, 0.08))
    grasps = sample_grasps(tall, CFG)
    assert grasps
    for g in grasps:
        assert _finger_corners(g, CFG)[:, 2].min() >= -0.04 + CFG.support_clearance - 1e-9
    # without the support check, some grasps reach below the table plane
    free = sample_grasps(tall, GraspConfig(samples=300, approaches=8, top_n=200), on_support=False)
    assert min(_finger_corners(g, CFG)[:, 2].min() for g in free) < -0.04


def test_approach_angle_limit():
    box = trimesh.creation.box(extents=(0.11, 0.026, 0.026))
    cfg = GraspConfig(samples=300, approaches=12, max_approach_angle=30.0, top_n=50)
    grasps = sample_grasps(box, cfg)
    assert grasps
    assert all(g.approach_direction[2] <= -math.cos(math.radians(30.0)) + 1e-9 for g in grasps)


def test_grasps_in_base_with_object_pose_and_alignment():
    grasps = sample_grasps(trimesh.creation.box(extents=(0.11, 0.026, 0.026)), CFG)[:3]
    T_base_obj = tf.make_transform([0.5, -0.1, 0.013], tf.quat_from_euler("z", 0.7))
    direct = grasps_in_base(grasps, T_base_obj)
    for g, T in zip(grasps, direct):
        assert np.allclose(T, T_base_obj @ g.pose)
        assert np.allclose(T[:3, 3], tf.transform_points(T_base_obj, g.position))
    # the same object seen in an unknown scan frame: pose there + alignment gives the same grasps
    sim = Similarity(0.4, tf.Rotation.from_rotvec([0.5, 1.0, -0.3]).as_matrix(), [1.0, 2.0, -0.5])
    T_scan_obj = sim.inverse().apply_pose(T_base_obj)
    via_scan = grasps_in_base(grasps, T_scan_obj, alignment=sim)
    for a, b in zip(direct, via_scan):
        assert np.allclose(a, b, atol=1e-9)
    with pytest.raises(ValueError, match="T_object"):
        grasps_in_base(grasps, np.full((4, 4), np.nan))


def test_bad_mesh_paths_and_files(tmp_path):
    with pytest.raises(ScanError, match=r"no_such_mesh.obj: mesh file is missing"):
        sample_grasps_file(tmp_path / "no_such_mesh.obj", CFG)
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(ScanError, match=r"broken.glb: cannot load mesh"):
        sample_grasps_file(bad, CFG)


def test_save_load_round_trip_and_config(tmp_path):
    mesh_path = tmp_path / "hex.obj"
    _hex_prism().export(mesh_path)
    grasps = sample_grasps_file(mesh_path, CFG)
    path = save_grasps(tmp_path / "hex.grasps.json", grasps, "hex", str(mesh_path))
    back = load_grasps(path)
    assert len(back) == len(grasps)
    for a, b in zip(grasps, back):
        assert np.allclose(a.pose, b.pose, atol=1e-9) and a.score == b.score
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ScanError, match=r"bad.json: malformed grasp file"):
        load_grasps(tmp_path / "bad.json")
    cfg = load_grasp_config()
    assert cfg.max_width == pytest.approx(0.08) and cfg.friction > 0
    from twinrl_bringup.config import ConfigError

    with pytest.raises(ConfigError, match=r"grasps.*friction"):
        load_grasp_config(overrides=["friction=-1"])


def test_cli_grasps_on_a_mesh_file(tmp_path, capsys):
    from twinrl_bringup.cli import build_parser

    mesh_path = tmp_path / "block.obj"
    trimesh.creation.box(extents=(0.11, 0.026, 0.026)).export(mesh_path)
    parser = build_parser()
    args = parser.parse_args(["twin", "grasps", str(mesh_path), "--out", str(tmp_path / "g"),
                              "--set", "samples=200", "--set", "top_n=5"])
    assert args.func(args) == 0
    grasps = load_grasps(tmp_path / "g" / "block.grasps.json")
    assert len(grasps) == 5 and all(np.isclose(g.width, 0.026, atol=1e-6) for g in grasps)
    assert "block: 5 grasps" in capsys.readouterr().out
    args = parser.parse_args(["twin", "grasps", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "g")])
    with pytest.raises(ScanError, match="missing.obj: mesh file is missing"):
        args.func(args)


def test_friction_coefficient_decides_on_inclined_faces():
    # a block whose top view is a trapezoid: its two side faces (vertical) are 38.6 deg apart
    xy = [(-0.025, -0.015), (0.025, -0.015), (0.0145, 0.015), (-0.0145, 0.015)]
    pts = [(x, y, z) for x, y in xy for z in (-0.015, 0.015)]
    block = trimesh.convex.convex_hull(np.array(pts))
    common = dict(samples=500, approaches=8, top_n=100000, finger_width=0.004, dedup_distance=0.0)
    tight = sample_grasps(block, GraspConfig(friction=0.5, **common))       # cone 26.6 deg
    assert tight and all(abs(g.closing_axis[0]) < 0.1 for g in tight)       # only the parallel faces
    loose = sample_grasps(block, GraspConfig(friction=1.0, **common))       # cone 45 deg
    side = [g for g in loose if abs(g.closing_axis[0]) > 0.5]
    assert side, "with mu = 1 the inclined side faces are graspable"
    for g in side:
        assert 0.0 < g.antipodality < 1.0 - 35.0 / 45.0 + 0.02              # 38.6 deg of a 45 deg cone
