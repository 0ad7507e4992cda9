"""Scan format and loader, and simulated scans of the sim world (twinrl twin scan-sim):
geometry agrees with the ground truth, the scan frame is unknown, bad files give clear errors."""
import json
import math
import shutil

import numpy as np
import pytest

from twinrl_bringup import transforms as tf
from twinrl_twin.scan import (
    LABEL_ROBOT,
    OPENGL_TO_OPENCV,
    ScanError,
    Similarity,
    load_groundtruth,
    load_mesh,
    load_scan,
)
from twinrl_twin.scan_sim import ScanSimConfig, camera_path, load_scan_sim_config, simulate_scan



@pytest.fixture(scope="module")
def sim_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans") / "pp"
    summary = simulate_scan("pick_and_place", root, frames=8, seed=5, progress=False)
    return root, summary


@pytest.fixture
def scan_copy(sim_scan, tmp_path):
    dst = tmp_path / "scan"
    shutil.copytree(sim_scan[0], dst)
    return dst


def test_layout_and_loader(sim_scan):
    root, summary = sim_scan
    names = sorted(p.name for p in root.iterdir())
    assert names == ["cameras.json", "depth", "frames", "masks", "objects", "robot", "robot.json"]
    assert len(list((root / "frames").glob("*.png"))) == 8
    scan = load_scan(root)
    assert len(scan.frames) == 8 and scan.has_depth and scan.has_masks
    assert [f.index for f in scan.frames] == list(range(8))
    assert set(scan.objects) == {"object", "target"}
    assert scan.mask_labels == {2: "object", 3: "target"}
    assert scan.objects["object"].label == 2
    assert np.allclose(sorted(scan.objects["object"].mesh.extents), sorted([0.11, 0.026, 0.026]), atol=1e-6)
    assert scan.robot is not None and len(scan.robot.joint_positions) == 7
    assert "fr3_joint1" in scan.robot.joint_positions and scan.robot.urdf.endswith("fr3.urdf")
    f = scan.frames[0]
    assert f.rgb().shape == (240, 320, 3) and f.rgb().dtype == np.uint8
    assert f.depth().shape == (240, 320) and f.depth().dtype == np.float32
    assert f.mask().dtype == np.uint8
    # ground truth lives outside the scan directory
    gt = load_groundtruth(root)
    assert gt.path.parent == root.parent and not gt.path.is_relative_to(root)
    assert gt.task == "pick_and_place" and len(gt.camera_poses_base) == 8


def test_scan_frame_is_unknown_similarity(sim_scan):
    root, _ = sim_scan
    gt = load_groundtruth(root)
    sim = gt.scan_to_base
    assert not np.isclose(sim.scale, 1.0, atol=1e-3) or not np.allclose(sim.rotation, np.eye(3), atol=1e-3)
    scan = load_scan(root)
    for f, T_base in zip(scan.frames, gt.camera_poses_base):
        mapped = sim.apply_pose(f.T_scan_camera)
        assert np.allclose(mapped, T_base, atol=1e-6)
    # a second seed gives a different unknown frame
    cfg = load_scan_sim_config()
    from twinrl_twin.scan_sim import random_similarity

    a = random_similarity(cfg, np.random.default_rng(1))
    b = random_similarity(cfg, np.random.default_rng(2))
    assert not np.allclose(a.matrix, b.matrix)


def test_depth_masks_and_poses_agree_with_ground_truth(sim_scan):
    root, _ = sim_scan
    scan = load_scan(root)
    gt = load_groundtruth(root)
    obj = scan.objects["object"]
    T_obj = gt.object_poses_base["object"]
    lo, hi = obj.mesh.bounds
    n_obj = 0
    for f in scan.frames:
        P = f.points(stride=2)
        base = gt.scan_to_base.apply_points(P["points"])
        bg = P["labels"] == 0
        # most background pixels are the table top, the plane z = 0 of the base frame
        assert np.mean(np.abs(base[bg, 2]) < 2e-3) > 0.5
        robot = P["labels"] == LABEL_ROBOT
        assert robot.any(), f"robot not visible in frame {f.index}"
        pts = tf.transform_points(tf.invert(T_obj), base[P["labels"] == 2])
        n_obj += len(pts)
        if len(pts):
            assert np.all(pts >= lo - 2e-3) and np.all(pts <= hi + 2e-3)
    assert n_obj > 50


def test_handheld_path_shape():
    cfg = ScanSimConfig()
    path = camera_path(cfg, np.random.default_rng(0), 60)
    pos = path.positions()
    aim = np.asarray(cfg.look_at)
    dist = np.linalg.norm(pos - aim, axis=1)
    assert dist.min() > 0.55 and dist.max() < 1.25 and dist.max() - dist.min() > 0.2
    assert pos[:, 2].max() - pos[:, 2].min() > 0.1                       # height varies
    az = np.unwrap(np.arctan2(pos[:, 1] - aim[1], pos[:, 0] - aim[0]))
    assert abs(az[-1] - az[0]) > math.radians(150)                        # an arc around the cell
    for T, p in zip(path.poses, pos):
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        to_aim = (aim - p) / np.linalg.norm(aim - p)
        assert float(T[:3, 2] @ to_aim) > math.cos(math.radians(15))      # looks at the workspace
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    assert steps.max() < 0.12                                             # a continuous walk
    accel = np.linalg.norm(np.diff(pos, 2, axis=0), axis=1)
    assert accel.std() > 1e-4                                             # hand shake, not a perfect arc


def test_exported_meshes_follow_sim_geometry(tmp_path):
    root = tmp_path / "hex"
    simulate_scan("insert_hexagon", root, frames=2, seed=0, progress=False)
    mesh = load_mesh(root / "objects" / "object.obj")
    ext = np.sort(mesh.extents)
    # hexagonal prism: 0.036 across flats, 0.0416 across corners, 0.06 high
    assert np.allclose(ext, [0.036, 2 * 0.018 / math.cos(math.pi / 6), 0.06], atol=1e-4)
    assert mesh.is_watertight


def test_overwrite_protection(sim_scan, tmp_path):
    root, _ = sim_scan
    with pytest.raises(FileExistsError, match="already exists"):
        simulate_scan("pick_and_place", root, frames=2, seed=0, progress=False)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a scan directory"):
        simulate_scan("pick_and_place", other, frames=2, seed=0, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]     # no partial scan left behind


def _cameras(root):
    return json.loads((root / "cameras.json").read_text())


def test_missing_pose_for_a_frame(scan_copy):
    data = _cameras(scan_copy)
    dropped = data["frames"].pop(3)
    (scan_copy / "cameras.json").write_text(json.dumps(data))
    with pytest.raises(ScanError, match=r"cameras.json.*no camera pose for frame frames/00003.png"):
        load_scan(scan_copy)
    data["frames"].insert(3, {"image": dropped["image"]})
    (scan_copy / "cameras.json").write_text(json.dumps(data))
    with pytest.raises(ScanError, match=r"cameras.json.*frames\[3\].*no camera pose"):
        load_scan(scan_copy)


def test_malformed_json(scan_copy, sim_scan):
    (scan_copy / "cameras.json").write_text('{"frames": [')
    with pytest.raises(ScanError, match=r"cameras.json: malformed JSON"):
        load_scan(scan_copy)
    shutil.copy(sim_scan[0] / "cameras.json", scan_copy / "cameras.json")
    (scan_copy / "robot.json").write_text("not json")
    with pytest.raises(ScanError, match=r"robot.json: malformed JSON: line 1"):
        load_scan(scan_copy)


def test_unreadable_and_wrong_size_images(scan_copy):
    img = scan_copy / "frames" / "00002.png"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=r"00002.png: unreadable image"):
        load_scan(scan_copy)
    from PIL import Image

    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(img)
    with pytest.raises(ScanError, match=r"00002.png: image is 120x100 but its intrinsics say 320x240"):
        load_scan(scan_copy)
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(img)
    np.save(scan_copy / "depth" / "00004.npy", np.zeros((10, 10), np.float32))
    with pytest.raises(ScanError, match=r"depth/00004.npy: image is 10x10"):
        load_scan(scan_copy)


def test_bad_mesh_and_robot(scan_copy):
    (scan_copy / "objects" / "object.obj").write_text("this is not a mesh\n")
    with pytest.raises(ScanError, match=r"objects/object.obj: (mesh has no triangles|cannot load mesh)"):
        load_scan(scan_copy)
    shutil.rmtree(scan_copy / "objects")
    robot = json.loads((scan_copy / "robot.json").read_text())
    robot["urdf"] = "robot/missing.urdf"
    (scan_copy / "robot.json").write_text(json.dumps(robot))
    with pytest.raises(ScanError, match=r"robot.json: urdf: file .*missing.urdf does not exist"):
        load_scan(scan_copy)
    robot["urdf"] = "robot/fr3.urdf"
    robot["joint_positons"] = robot.pop("joint_positions")
    (scan_copy / "robot.json").write_text(json.dumps(robot))
    with pytest.raises(ScanError, match=r"robot.json: joint_positons: unknown key"):
        load_scan(scan_copy)
    with pytest.raises(ScanError, match=r"nope.glb: mesh file is missing"):
        load_mesh(scan_copy / "nope.glb")


def test_position_quaternion_poses_and_shared_frame_listing(scan_copy):
    scan = load_scan(scan_copy)
    data = _cameras(scan_copy)
    for fr in data["frames"]:
        T = np.asarray(fr.pop("transform"))
        p, q = tf.matrix_to_pose(T)
        fr["position"], fr["quaternion"] = p.tolist(), q.tolist()
        fr.pop("image")                         # default: frames/ in sorted order
    (scan_copy / "cameras.json").write_text(json.dumps(data))
    again = load_scan(scan_copy)
    for a, b in zip(scan.frames, again.frames):
        assert a.image_path == b.image_path
        assert np.allclose(a.T_scan_camera, b.T_scan_camera, atol=1e-9)


def test_nerfstudio_transforms_json_opengl_axes(scan_copy):
    scan = load_scan(scan_copy)
    intr = scan.frames[0].intrinsics
    frames = [{"file_path": f"frames/{f.image_path.name}",
               "transform_matrix": (f.T_scan_camera @ OPENGL_TO_OPENCV).tolist(),   # OpenCV -> OpenGL axes
               "depth_file_path": f"depth/{f.depth_path.name}"} for f in scan.frames]
    ns = {"camera_model": "OPENCV", "fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy,
          "w": intr.width, "h": intr.height, "frames": frames}
    (scan_copy / "cameras.json").unlink()
    (scan_copy / "transforms.json").write_text(json.dumps(ns))
    ns_scan = load_scan(scan_copy)
    assert ns_scan.source_format == "nerfstudio"
    for a, b in zip(scan.frames, ns_scan.frames):
        assert np.allclose(a.T_scan_camera, b.T_scan_camera, atol=1e-9)
        assert b.intrinsics == a.intrinsics
    # the converted pose still explains the depth: a frame's points agree across formats
    assert np.allclose(scan.frames[1].points(8)["points"], ns_scan.frames[1].points(8)["points"])
    del frames[2]["transform_matrix"]
    (scan_copy / "transforms.json").write_text(json.dumps(ns))
    with pytest.raises(ScanError, match=r"transforms.json: frames\[2\].*no camera pose"):
        load_scan(scan_copy)


def test_similarity_algebra():
    R = tf.Rotation.from_rotvec([0.3, -0.2, 1.1]).as_matrix()
    sim = Similarity(2.5, R, [0.1, -0.4, 0.9])
    pts = np.random.default_rng(0).normal(size=(10, 3))
    assert np.allclose(sim.inverse().apply_points(sim.apply_points(pts)), pts)
    assert np.allclose(Similarity.from_matrix(sim.matrix).matrix, sim.matrix)
    assert np.allclose(Similarity.from_dict(sim.to_dict()).matrix, sim.matrix)
    with pytest.raises(ValueError, match="scale"):
        Similarity(-1.0)


def test_cli_scan_sim_entry_point(tmp_path, capsys):
    from twinrl_bringup.cli import build_parser

    parser = build_parser()
    out = tmp_path / "cli_scan"
    args = parser.parse_args(["twin", "scan-sim", "--task", "insert_hexagon", "--out", str(out), "--frames", "3",
                              "--seed", "2", "--set", "width=160", "--set", "height=120", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 3 and (out / "preview.png").is_file()
    scan = load_scan(out)
    assert scan.frames[0].intrinsics.width == 160 and len(scan.frames) == 3
    assert (tmp_path / "cli_scan.groundtruth.json").is_file()
    args = parser.parse_args(["twin", "scan-info", str(out), "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["frames"] == 3 and info["depth"] and set(info["objects"]) == {"object", "target"}


def test_metric_png_depth_and_groundtruth_inside(tmp_path):
    cfg = load_scan_sim_config(overrides=["scale=[1.0, 1.0]", "depth_format=png", "width=96", "height=72"])
    root = tmp_path / "metric"
    simulate_scan("erase_whiteboard", root, frames=3, seed=4, cfg=cfg, progress=False)
    assert sorted(p.name for p in (root / "depth").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    scan = load_scan(root)
    assert scan.frames[0].depth_scale == pytest.approx(0.001)
    # moving the ground truth into <scan>/_groundtruth/ is also understood (and ignored by the loader)
    gt_file = tmp_path / "metric.groundtruth.json"
    (root / "_groundtruth").mkdir()
    gt_file.rename(root / "_groundtruth" / "groundtruth.json")
    gt = load_groundtruth(root)
    assert gt.scan_to_base.scale == pytest.approx(1.0)
    assert len(load_scan(root).frames) == 3
    for f in scan.frames:
        P = f.points(stride=1)
        base = gt.scan_to_base.apply_points(P["points"])
        table = (P["labels"] == 0) & (np.abs(base[:, 2]) < 3e-3)    # millimetre quantisation
        assert table.mean() > 0.3
    data = _cameras(root)
    data["frames"].append(dict(data["frames"][0]))
    (root / "cameras.json").write_text(json.dumps(data))
    with pytest.raises(ScanError, match=r"frames\[3\]: image 00000.png is listed twice"):
        load_scan(root)
    with pytest.raises(Exception, match=r"depth_format 'png' stores millimetres"):
        load_scan_sim_config(overrides=["depth_format=png"])


def test_overwrite_and_interrupted_run(tmp_path, monkeypatch):
    from twinrl_twin import scan_sim

    root = tmp_path / "s"
    simulate_scan("pick_and_place", root, frames=2, seed=0, progress=False)
    simulate_scan("pick_and_place", root, frames=3, seed=1, overwrite=True, progress=False)
    assert len(load_scan(root).frames) == 3 and load_groundtruth(root).seed == 1

    calls = {"n": 0}
    real = scan_sim._FrameRenderer.render

    def flaky(self, data, T):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("GL context lost")
        return real(self, data, T)

    monkeypatch.setattr(scan_sim._FrameRenderer, "render", flaky)
    with pytest.raises(RuntimeError, match="GL context lost"):
        simulate_scan("pick_and_place", tmp_path / "broken", frames=4, seed=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.groundtruth.json"]
