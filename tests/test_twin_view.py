"""The twin seen at a joint state (twinrl_twin.twin_view): renders follow the joints, the twin
robot silhouette matches the sim world's robot segmentation (IoU), the overlay keeps the live
image's size, bad input is refused, and re-alignment swaps a transform in (or says why not)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from twinrl_twin.scan import Similarity
from twinrl_twin.sim import fr3_model
from twinrl_twin.twin_assets import TwinAssetError


@pytest.fixture(scope="module")
def twin_dir(tiny_twins):
    return tiny_twins("pick_and_place")


@pytest.fixture(scope="module")
def view(twin_dir):
    from twinrl_twin.twin_view import TwinView

    v = TwinView(twin_dir)
    yield v
    v.close()


@pytest.fixture(scope="module")
def sim_mask():
    from twinrl_twin.twin_view import SimRobotMask

    m = SimRobotMask("pick_and_place")
    yield m
    m.close()


HOME = np.asarray(fr3_model.load_fr3_config().home, float)
WIDTH = 0.06


def perturbed():
    q = HOME.copy()
    q[0] += 0.15
    q[3] += 0.2
    return q


def test_renders_follow_the_joint_state(view):
    a = view.render(HOME, WIDTH)
    b = view.render(perturbed(), WIDTH)
    assert a["third_person"].shape == (256, 256, 3) and a["wrist"].shape == (128, 128, 3)
    for name in ("third_person", "wrist"):
        assert a[name].dtype == np.uint8 and a[name].std() > 5, name
        diff = np.abs(a[name].astype(int) - b[name].astype(int)).sum(axis=2) > 30
        assert diff.mean() > 0.01, f"{name}: the render did not change with the joints"
    again = view.render(HOME, WIDTH)
    assert np.array_equal(again["third_person"], a["third_person"])     # deterministic
    # the gripper width moves the fingers in the wrist view
    closed = view.render(HOME, 0.0)["wrist"]
    assert (np.abs(closed.astype(int) - a["wrist"].astype(int)).sum(axis=2) > 30).mean() > 0.002


def test_iou_high_at_the_live_pose_and_drops_when_perturbed(view, sim_mask):
    from twinrl_twin.twin_view import robot_mask_iou

    live = sim_mask.masks(HOME, WIDTH)
    ious = {n: robot_mask_iou(view.silhouette(n, HOME, WIDTH), live[n]) for n in ("third_person", "wrist")}
    assert ious["third_person"] > 0.8 and ious["wrist"] > 0.8, ious
    assert live["third_person"].sum() > 1000                  # the robot is in view
    moved = sim_mask.masks(perturbed(), WIDTH)["third_person"]
    off = robot_mask_iou(view.silhouette("third_person", HOME, WIDTH), moved)
    assert off < ious["third_person"] - 0.1, (off, ious)


def test_overlay_has_the_live_size_and_iou_is_nan_without_a_mask(view, sim_mask):
    rng = np.random.default_rng(0)
    live = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    twin = view.render(HOME, WIDTH)["third_person"]
    out, iou = view.compare("third_person", HOME, WIDTH, live, None, twin)
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    assert math.isnan(iou)
    assert not np.array_equal(out, live)                       # the twin is drawn over it
    mask = sim_mask.masks(HOME, WIDTH)["third_person"]
    live_img = sim_mask.env.render_cameras()["third_person"][0]
    out2, iou2 = view.compare("third_person", HOME, WIDTH, live_img, mask, twin)
    assert out2.shape == live_img.shape and iou2 > 0.8
    # green (agreement) dominates the robot pixels of the overlay
    g = out2[mask].astype(int)
    assert (g[:, 1] > g[:, 0]).mean() > 0.5


def test_bad_input_is_refused(view, twin_dir, tmp_path):
    from twinrl_twin.twin_view import JointStateError, TwinView, overlay_image

    with pytest.raises(JointStateError, match="finite"):
        view.render([np.nan] * 7, WIDTH)
    with pytest.raises(JointStateError, match="7 arm joint"):
        view.silhouette("third_person", HOME[:6], WIDTH)
    with pytest.raises(JointStateError, match="gripper width"):
        view.render(HOME, -0.01)
    with pytest.raises(ValueError, match="live image"):
        overlay_image(np.zeros((10, 10), np.uint8), np.zeros((10, 10), bool))
    with pytest.raises(KeyError, match="unknown camera"):
        view.camera_pose("side", {})
    with pytest.raises(TwinAssetError, match="does not exist"):
        TwinView(tmp_path / "no_twin")
    broken = tmp_path / "broken"
    shutil.copytree(twin_dir, broken)
    (broken / "robot_meshes.npz").write_bytes(b"not a zip")
    with pytest.raises(TwinAssetError, match="robot_meshes.npz"):
        TwinView(broken)


def test_apply_alignment_moves_the_scene_not_the_robot(view):
    old = view.alignment
    before = view.render(HOME, WIDTH)["third_person"]
    sil = view.silhouette("third_person", HOME, WIDTH)
    shifted = Similarity(old.scale, old.rotation, old.translation + np.array([0.0, 0.08, 0.0]))
    v0 = view.alignment_version
    change = view.apply_alignment(shifted, source="test")
    try:
        assert view.alignment_version == v0 + 1
        assert abs(change["translation_mm"] - 80.0) < 1e-6
        after = view.render(HOME, WIDTH)["third_person"]
        assert (np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 30).mean() > 0.005
        assert np.array_equal(view.silhouette("third_person", HOME, WIDTH), sil)   # the robot stays
        assert view.assets.alignment["source"] == "test"
    finally:
        view.apply_alignment(old, source="groundtruth")
    assert np.array_equal(view.render(HOME, WIDTH)["third_person"], before)


def test_realign_without_the_scan_says_why(twin_dir, tmp_path):
    from twinrl_twin.twin_view import RealignError, TwinView

    moved = tmp_path / "twin"
    shutil.copytree(twin_dir, moved)
    meta = json.loads((moved / "twin.json").read_text())
    meta["scan"] = str(tmp_path / "deleted_scan")
    (moved / "twin.json").write_text(json.dumps(meta))
    v = TwinView(moved)
    try:
        with pytest.raises(RealignError, match="deleted_scan.*gone"):
            v.realign()
    finally:
        v.close()
