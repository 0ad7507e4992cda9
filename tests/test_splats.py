"""3DGS PLY I/O (INRIA layout), SH rotation under a similarity, and Gaussian-scene
initialisation from a simulated RGB-D scan."""
import os

import numpy as np
import pytest

from twinrl_bringup import transforms as tf
from twinrl_twin.scan import Similarity, load_groundtruth, load_scan
from twinrl_twin.splats import (
    C0,
    GaussianScene,
    SplatFileError,
    SplatInitConfig,
    init_from_scan,
    read_ply,
    rgb_to_sh_dc,
    sh_basis,
    write_ply,
)


def _scene(n=40, degree=3, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    return GaussianScene(rng.normal(size=(n, 3)), rng.normal(size=(n, 4)), rng.normal(size=(n, 3)) - 4,
                         rng.normal(size=n), rng.normal(size=(n, k, 3)), rng.normal(size=(n, 3)),
                         rng.integers(0, 4, n) if labels else None,
                         {1: "robot", 2: "block", 3: "plate"} if labels else {})


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip(tmp_path, degree):
    sc = _scene(degree=degree)
    path = write_ply(tmp_path / "s.ply", sc)
    back = read_ply(path)
    assert len(back) == len(sc) and back.sh_degree == degree
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "normals"):
        assert np.array_equal(getattr(back, name), getattr(sc, name)), name
    assert np.array_equal(back.labels, sc.labels)
    assert back.label_names == {1: "robot", 2: "block", 3: "plate"}


def test_inria_layout_on_disk(tmp_path):
    from plyfile import PlyData

    sc = _scene(n=5, degree=1, labels=False)
    write_ply(tmp_path / "s.ply", sc)
    ply = PlyData.read(str(tmp_path / "s.ply"))
    names = [p.name for p in ply["vertex"].properties]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(9)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    v = ply["vertex"].data
    # channel-major f_rest: coefficient j (1..3) of channel c is f_rest[c * 3 + j - 1]
    assert np.allclose(v["f_rest_4"], sc.sh[:, 2, 1])
    assert np.allclose(v["f_rest_6"], sc.sh[:, 1, 2])
    assert np.allclose(v["rot_0"], sc.quats[:, 0])          # w first
    assert ply.elements[0].properties[0].val_dtype in ("f4", "float32", "float")


def test_colour_dc_convention():
    rgb = np.array([[0.0, 0.5, 1.0]])
    dc = rgb_to_sh_dc(rgb)
    assert np.allclose(dc * C0 + 0.5, rgb)
    sc = GaussianScene(np.zeros((1, 3)), [[1, 0, 0, 0]], np.zeros((1, 3)), [0.0], dc[:, None, :])
    assert np.allclose(sc.colors(), rgb, atol=1e-6) and np.isclose(sc.opacities()[0], 0.5)


def test_truncated_and_corrupt_files(tmp_path):
    path = write_ply(tmp_path / "s.ply", _scene(n=200))
    data = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[: len(data) - 777])
    with pytest.raises(SplatFileError, match=r"cut.ply: corrupt or truncated PLY"):
        read_ply(cut)
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(SplatFileError, match=r"junk.ply: corrupt or truncated PLY"):
        read_ply(junk)
    with pytest.raises(SplatFileError, match=r"missing.ply: file does not exist"):
        read_ply(tmp_path / "missing.ply")


def test_missing_properties_and_nans(tmp_path):
    from plyfile import PlyData, PlyElement

    arr = np.zeros(3, dtype=[(p, "<f4") for p in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "scale_0",
                                                    "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")])
    arr["rot_0"] = 1
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "noop.ply"))
    with pytest.raises(SplatFileError, match=r"noop.ply: missing properties \['opacity'\]"):
        read_ply(tmp_path / "noop.ply")

    sc = _scene(n=10)
    sc.means[4, 1] = np.nan
    with pytest.raises(SplatFileError, match=r"nan.ply: means has non-finite values \(first at Gaussian 4"):
        write_ply(tmp_path / "nan.ply", sc)
    assert not (tmp_path / "nan.ply").exists()
    # a NaN written by another tool is caught on read
    good = _scene(n=10)
    write_ply(tmp_path / "nan2.ply", good)
    ply = PlyData.read(str(tmp_path / "nan2.ply"), mmap=False)
    ply["vertex"].data["f_dc_1"][7] = np.nan
    ply.write(str(tmp_path / "nan2.ply"))
    with pytest.raises(SplatFileError, match=r"nan2.ply: sh has non-finite values \(first at Gaussian 7"):
        read_ply(tmp_path / "nan2.ply")


def test_atomic_write_keeps_old_file(tmp_path, monkeypatch):
    from plyfile import PlyData

    path = write_ply(tmp_path / "scene.ply", _scene(n=8, seed=1))
    before = path.read_bytes()

    def broken_write(self, stream):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_ply(path, _scene(n=8, seed=2))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["scene.ply"]              # no temporary left behind


def test_similarity_transform_moves_everything_consistently():
    sc = _scene(n=30, degree=3)
    R = tf.Rotation.from_rotvec([0.4, -1.1, 0.7]).as_matrix()
    sim = Similarity(1.7, R, [0.2, -0.3, 0.5])
    out = sc.transformed(sim)
    assert np.allclose(out.means, sim.apply_points(sc.means), atol=1e-5)
    assert np.allclose(out.log_scales, sc.log_scales + np.log(1.7), atol=1e-5)
    # covariance axes rotate with the scene
    q_in = sc.quats[:, [1, 2, 3, 0]] / np.linalg.norm(sc.quats, axis=1, keepdims=True)
    R_in = tf.Rotation.from_quat(q_in).as_matrix()
    R_out = tf.Rotation.from_quat(out.quats[:, [1, 2, 3, 0]]).as_matrix()
    assert np.allclose(R_out, R @ R_in, atol=1e-5)
    # view-dependent colour seen along R d after the transform == colour along d before
    d = np.random.default_rng(3).normal(size=(20, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    before = np.einsum("mk,nkc->nmc", sh_basis(d, 3), sc.sh)
    after = np.einsum("mk,nkc->nmc", sh_basis(d @ R.T, 3), out.sh)
    assert np.allclose(before, after, atol=1e-4)
    back = out.transformed(sim.inverse())
    assert np.allclose(back.means, sc.means, atol=1e-5) and np.allclose(back.sh, sc.sh, atol=1e-4)


@pytest.fixture(scope="module")
def sim_scan(tmp_path_factory):
    from twinrl_twin.scan_sim import simulate_scan

    root = tmp_path_factory.mktemp("scans") / "pp"
    simulate_scan("pick_and_place", root, frames=6, seed=7, progress=False)
    return root


def test_init_from_scan(sim_scan, tmp_path):
    scan = load_scan(sim_scan)
    gt = load_groundtruth(sim_scan)
    cfg = SplatInitConfig(frame_stride=1, pixel_stride=2, sh_degree=1)
    scene, voxel = init_from_scan(scan, cfg, progress=False)
    assert len(scene) > 1000 and scene.sh_degree == 1 and voxel > 0
    assert scene.label_names[1] == "robot" and scene.label_names[2] == "object"
    counts = np.bincount(scene.labels, minlength=4)
    assert counts[1] > 50 and counts[2] > 5 and counts[3] > 5
    assert np.all(scene.quats == np.array([1, 0, 0, 0], np.float32))
    assert np.allclose(scene.opacities(), 0.1, atol=1e-6)
    # scales come from neighbour spacing: of the order of the voxel size
    s = np.exp(scene.log_scales[:, 0])
    assert 0.3 * voxel < np.median(s) < 3.0 * voxel
    # object Gaussians sit on the block (in the base frame, via the ground truth) and are red
    obj = scene.select_label(2)
    base = gt.scan_to_base.apply_points(obj.means)
    T = gt.object_poses_base["object"]
    assert np.linalg.norm(base.mean(axis=0) - T[:3, 3]) < 0.03
    rgb = obj.colors().mean(axis=0)
    assert rgb[0] > 0.4 and rgb[0] > 2 * rgb[1]
    # voxel downsampling: no two Gaussians of one label closer than a fraction of the voxel
    from scipy.spatial import cKDTree

    d, _ = cKDTree(scene.select_label(0).means).query(scene.select_label(0).means, k=2)
    assert np.median(d[:, 1]) > 0.3 * voxel
    path = write_ply(tmp_path / "init.ply", scene)
    back = read_ply(path)
    assert np.array_equal(back.labels, scene.labels) and back.label_names == scene.label_names
    assert np.allclose(back.sh, scene.sh)


def test_cli_init_splats(sim_scan, tmp_path, capsys):
    from twinrl_bringup.cli import build_parser

    out = tmp_path / "init.ply"
    args = build_parser().parse_args(["twin", "init-splats", str(sim_scan), "--out", str(out),
                                      "--set", "sh_degree=0", "--set", "frame_stride=3"])
    assert args.func(args) == 0
    scene = read_ply(out)
    assert scene.sh_degree == 0 and len(scene) > 500 and scene.labels is not None
    assert f"wrote {len(scene)} Gaussians" in capsys.readouterr().out
