"""Twin alignment (twinrl_twin.alignment): coarse registration recovers the unknown scan
frame (rotation, translation, scale) of a simulated scan, the differentiable silhouette
renderer recovers a known transform and refinement reduces a perturbed estimate's error,
`twinrl twin align` writes its report, and scans without robot data fail clearly."""
import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import ConfigError
from twinrl_twin.alignment import (
    AlignmentError,
    align_scan,
    load_alignment_config,
    refine_align,
    robot_geometry_for,
    similarity_errors,
)
from twinrl_twin.robot_geometry import RobotGeometry, silhouette
from twinrl_twin.scan import LABEL_ROBOT, Similarity, load_groundtruth, load_scan
from twinrl_twin.scan_sim import load_scan_sim_config, simulate_scan
from twinrl_twin.silhouette import GaussianSilhouette

pytest.importorskip("mujoco")
pytest.importorskip("open3d")

FAST = ["coarse.ransac_tries=1", "coarse.model_points=12000", "refine.views=3", "refine.width=120",
        "refine.iterations=40", "refine.max_gaussians=2500", "iou_views=4", "overlay_views=2"]


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("align") / "pp"
    cfg = load_scan_sim_config(None, ["width=160", "height=120"])
    simulate_scan("pick_and_place", root, frames=10, seed=3, cfg=cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def coarse(small_scan):
    scan = load_scan(small_scan)
    cfg = load_alignment_config(None, FAST + ["refine.enabled=false"])
    return scan, align_scan(scan, cfg, progress=False)


def _model_mesh(scan):
    return robot_geometry_for(scan).mesh(scan.robot.joint_positions, scan.robot.gripper_width)


def test_coarse_recovers_scan_frame_and_scale(small_scan, coarse):
    scan, result = coarse
    truth = load_groundtruth(small_scan).scan_to_base
    assert set(result.stages) == {"ransac", "icp"}
    err = similarity_errors(result.similarity, truth, _model_mesh(scan).vertices)
    # measured ~0.5 mm / 0.02 deg / 0.01 % on exact sim depth; loose bounds here
    assert err["translation_mm"] < 3.0 and err["rotation_deg"] < 0.3 and abs(err["scale_percent"]) < 0.5, err
    assert result.similarity.scale == pytest.approx(truth.scale, rel=5e-3)
    # RANSAC alone is coarser; ICP must improve on it
    err_ransac = similarity_errors(result.stages["ransac"], truth)
    assert err["rotation_deg"] <= err_ransac["rotation_deg"] + 1e-9


def test_robot_model_matches_scan_masks(small_scan):
    scan = load_scan(small_scan)
    gt = load_groundtruth(small_scan)
    mesh = _model_mesh(scan)
    ious = []
    for f, T in list(zip(scan.frames, gt.camera_poses_base))[::3]:
        sil = silhouette(mesh, T, f.intrinsics)
        m = f.mask() == LABEL_ROBOT
        ious.append((sil & m).sum() / (sil | m).sum())
    assert min(ious) > 0.97, ious
    # the generated URDF approximates the capsules by longer cylinders: a worse, but close, model
    urdf = RobotGeometry.from_urdf(scan.robot.urdf).mesh(scan.robot.joint_positions, scan.robot.gripper_width)
    assert urdf.volume > mesh.volume
    assert "fr3_finger_joint1" in RobotGeometry.from_urdf(scan.robot.urdf).joint_names()


def test_silhouette_renderer_recovers_known_transform():
    """Self-consistency of the differentiable renderer: targets rendered at a known similarity,
    two views, Adam from the identity finds it again (one view alone confuses depth and scale)."""
    rng = np.random.default_rng(0)
    n = 600
    pts = np.concatenate([rng.normal(size=(n // 2, 3)) * [0.05, 0.2, 0.05],
                          rng.normal(size=(n // 2, 3)) * [0.15, 0.04, 0.04] + [0.1, 0.1, 0.1]])
    r = GaussianSilhouette(pts, np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)), np.full((n, 3), 0.012), 0.8,
                           patch_radius=3, eps2d=0.3)
    K = torch.tensor([[90.0, 0, 48], [0, 90.0, 36], [0, 0, 1]])
    cams = []
    for az in (0.0, 1.4):
        pos = np.array([np.cos(az), np.sin(az), 0.3]) * 1.2
        fwd = -pos / np.linalg.norm(pos)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(fwd, right), fwd], axis=1)
        cams.append(np.linalg.inv(tf.make_transform(pos, R)))
    vm = torch.tensor(np.stack(cams), dtype=torch.float32)
    Ks = K[None].repeat(2, 1, 1)
    true = (torch.tensor(0.03), torch.tensor([0.02, -0.03, 0.04]), torch.tensor([0.01, -0.015, 0.012]))
    with torch.no_grad():
        target = r.render(*true, vm, Ks, 96, 72)
    assert target.shape == (2, 72, 96) and 0.05 < float((target > 0.5).float().mean()) < 0.6
    ls, rv, tr = (torch.zeros((), requires_grad=True), torch.zeros(3, requires_grad=True),
                  torch.zeros(3, requires_grad=True))
    opt = torch.optim.Adam([{"params": [tr], "lr": 2e-3}, {"params": [rv], "lr": 4e-3}, {"params": [ls], "lr": 4e-3}])
    loss0 = None
    for _ in range(150):
        opt.zero_grad()
        loss = ((r.render(ls, rv, tr, vm, Ks, 96, 72) - target) ** 2).mean()
        loss0 = float(loss.detach()) if loss0 is None else loss0
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * loss0
    tr, rv, ls = tr.detach(), rv.detach(), ls.detach()
    assert torch.norm(tr - true[2]) < 2e-3
    assert torch.norm(rv - true[1]) < np.radians(0.5)
    assert abs(float(ls - true[0])) < 4e-3


def test_refinement_reduces_perturbed_error(small_scan, coarse):
    scan, result = coarse
    truth = load_groundtruth(small_scan).scan_to_base
    mesh = _model_mesh(scan)
    # a coarse estimate off by ~8 mm, ~0.8 deg and 1.5 % (about the RANSAC-stage error)
    P = Similarity(1.015, tf.Rotation.from_rotvec(np.radians([0.5, -0.4, 0.45])).as_matrix(), [0.006, -0.004, 0.004])
    start = Similarity.from_matrix(P.matrix @ truth.matrix)
    cfg = load_alignment_config(None, FAST)
    refined, info = refine_align(scan, start, mesh, cfg.refine, progress=False)
    e0 = similarity_errors(start, truth, mesh.vertices)
    e1 = similarity_errors(refined, truth, mesh.vertices)
    assert info["loss_final"] < info["loss_initial"]
    assert np.mean(info["iou_final"]) > np.mean(info["iou_initial"])
    assert e1["robot_mean_mm"] < 0.5 * e0["robot_mean_mm"], (e0, e1)
    assert abs(e1["scale_percent"]) < 0.5 * abs(e0["scale_percent"]), (e0, e1)


def test_cli_align_writes_report(small_scan, coarse, tmp_path):
    from twinrl_twin import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "report"
    args = parser.parse_args(["twin", "align", "--scan", str(small_scan), "--out", str(out)]
                             + sum((["--set", o] for o in FAST + ["refine.iterations=5"]), []))
    assert args.func(args) == 0
    rep = json.loads((out / "alignment.json").read_text())
    M = np.asarray(rep["transform"]["matrix"])
    assert M.shape == (4, 4) and rep["transform"]["scale"] > 0
    assert set(rep["errors_vs_groundtruth"]) == {"ransac", "icp", "refine"}
    assert {"translation_mm", "rotation_deg", "scale_percent"} <= set(rep["errors_vs_groundtruth"]["icp"])
    assert set(rep["timing_s"]) >= {"coarse", "refine", "report"}
    assert len(rep["mask_iou"]["per_view"]) == 4 and rep["mask_iou"]["mean"] > 0.9
    assert len(rep["overlays"]) == 2 and all((out / p).is_file() for p in rep["overlays"])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_scan_without_robot_data_fails_clearly(small_scan, tmp_path):
    cfg = load_alignment_config(None, FAST)
    no_masks = _copy(small_scan, tmp_path / "no_masks")
    shutil.rmtree(no_masks / "masks")
    with pytest.raises(AlignmentError, match="robot masks"):
        align_scan(load_scan(no_masks), cfg, progress=False)

    no_robot_label = _copy(small_scan, tmp_path / "no_label")
    from PIL import Image
    for p in (no_robot_label / "masks").glob("*.png"):
        m = np.array(Image.open(p))
        m[m == LABEL_ROBOT] = 0
        Image.fromarray(m).save(p)
    with pytest.raises(AlignmentError, match="only 0 robot points"):
        align_scan(load_scan(no_robot_label), cfg, progress=False)

    no_robot = _copy(small_scan, tmp_path / "no_robot")
    (no_robot / "robot.json").unlink()
    with pytest.raises(AlignmentError, match="robot.json"):
        align_scan(load_scan(no_robot), cfg, progress=False)


def test_scan_with_only_labelled_splats_aligns_coarsely(small_scan, tmp_path):
    """A scan without depth/masks but with a robot-labelled splats.ply: the coarse stage uses
    the robot Gaussians' centres."""
    from twinrl_twin.splats import init_from_scan, load_splat_init_config, write_ply

    root = _copy(small_scan, tmp_path / "splats_only")
    scene, _ = init_from_scan(load_scan(root), load_splat_init_config(None, ["frame_stride=1"]), progress=False)
    write_ply(root / "splats.ply", scene)
    shutil.rmtree(root / "depth")
    shutil.rmtree(root / "masks")
    scan = load_scan(root)
    assert not scan.has_depth and scan.splats_path is not None
    cfg = load_alignment_config(None, FAST + ["refine.enabled=false", "coarse.min_points=100"])
    result = align_scan(scan, cfg, progress=False)
    err = similarity_errors(result.similarity, load_groundtruth(small_scan).scan_to_base)
    assert err["translation_mm"] < 10.0 and err["rotation_deg"] < 1.0 and abs(err["scale_percent"]) < 2.0, err
    with pytest.raises(AlignmentError, match="surfels need depth"):
        refine_align(scan, result.similarity, _model_mesh(scan),
                     load_alignment_config(None, FAST + ["refine.gaussians=surfels"]).refine, progress=False)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="refine.bogus"):
        load_alignment_config(None, ["refine.bogus=1"])
    with pytest.raises(ConfigError, match="robot_geometry"):
        load_alignment_config(None, ["robot_geometry=mesh"])
