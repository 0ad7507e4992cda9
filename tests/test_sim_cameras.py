"""Sim cameras: image sizes, content (the object is visible), intrinsics and poses that agree
with the images, perturbations, overrides."""
import numpy as np
import pytest

from twinrl_bringup import transforms as tf
from twinrl_twin.sim import make_env

import mujoco


@pytest.fixture(scope="module")
def env():
    e = make_env("pick_and_place", render=True, seed=0)
    yield e
    e.close()


def _object_mask(env, name="third_person"):
    seg = env.render_cameras(segmentation=True)[name][0]
    geom_ids = np.asarray(sorted(env.task_obj.object_geoms))
    return (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)) & np.isin(seg[..., 0], geom_ids)


def test_image_shapes_and_not_blank(env):
    obs, _ = env.reset(seed=2)
    assert obs["third_person"].shape == (256, 256, 3) and obs["third_person"].dtype == np.uint8
    assert obs["wrist"].shape == (128, 128, 3) and obs["wrist"].dtype == np.uint8
    for name in ("third_person", "wrist"):
        img = obs[name].astype(float)
        assert img.std() > 10.0, f"{name} looks blank"


def test_object_visible_and_projects_where_intrinsics_say(env):
    for seed in (0, 3, 8):
        obs, info = env.reset(seed=seed)
        mask = _object_mask(env)
        assert mask.sum() > 40, "object not visible in the third-person view"
        # the same pixels differ from a render with the object moved away
        img = obs["third_person"].astype(int)
        frames = env.render_cameras()
        image, K, T_cam = frames["third_person"]
        assert np.array_equal(image, obs["third_person"])
        # project the object centre with the reported intrinsics and optical-frame pose
        p = np.asarray(info["configuration"]["object_pose"][:3])
        pc = tf.transform_points(tf.invert(T_cam), p)
        assert pc[2] > 0
        u = K["fx"] * pc[0] / pc[2] + K["cx"]
        v = K["fy"] * pc[1] / pc[2] + K["cy"]
        rows, cols = np.nonzero(mask)
        assert cols.min() - 2 <= u <= cols.max() + 2 and rows.min() - 2 <= v <= rows.max() + 2
        # moving the object away changes exactly those pixels noticeably
        qadr = env.task_obj.object_qpos
        env.data.qpos[qadr:qadr + 3] = [0.0, 2.0, -0.5]
        mujoco.mj_forward(env.model, env.data)
        without = env.render_cameras()["third_person"][0].astype(int)
        diff = np.abs(img - without).sum(axis=2) > 30
        assert diff[mask].mean() > 0.8
        assert diff[~mask].mean() < 0.02


def test_intrinsics_follow_the_config(env):
    frames = env.render_cameras()
    K = frames["wrist"][1]
    fovy = env.cameras_cfg.wrist.fovy
    assert K["fy"] == pytest.approx(0.5 * 128 / np.tan(np.radians(fovy) / 2))
    assert (K["cx"], K["cy"]) == (63.5, 63.5)
    # the wrist camera rides on the hand
    T = frames["wrist"][2]
    tcp, _ = env.tcp_pose()
    assert np.linalg.norm(T[:3, 3] - tcp) < 0.2
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)


def test_wrist_camera_sees_the_object_at_the_grasp():
    e = make_env("insert_hexagon", render=True, seed=0)
    obs, info = e.reset(seed=4)
    expert = e.expert()
    while expert.phase in ("above", "descend") and info["step"] < 40:
        obs, _, _, _, info = e.step(expert.act(obs, info))
    assert _object_mask(e, "wrist").sum() > 100
    e.close()


def test_perturbations_change_the_images():
    base = make_env("pick_and_place", render=True, seed=0)
    ref = base.reset(seed=1)[0]["third_person"].astype(float)
    base.close()
    dark = make_env("pick_and_place", render=True, perturbation="dark")
    img = dark.reset(seed=1)[0]["third_person"].astype(float)
    dark.close()
    assert img.mean() < 0.7 * ref.mean()
    clutter = make_env("pick_and_place", render=True, perturbation="clutter")
    a = clutter.reset(seed=1)[0]["third_person"].astype(float)
    b = clutter.reset(seed=2)[0]["third_person"].astype(float)
    clutter.close()
    assert (np.abs(a - ref).sum(axis=2) > 30).sum() > 100
    assert (np.abs(a - b).sum(axis=2) > 30).sum() > 100       # clutter is re-drawn per episode
    dyn = make_env("pick_and_place", render=True, perturbation="dynamic_light")
    obs0 = dyn.reset(seed=1)[0]["third_person"].astype(float)
    obs1 = obs0
    for _ in range(5):
        obs1 = dyn.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))[0]["third_person"].astype(float)
    dyn.close()
    assert np.abs(obs1 - obs0).mean() > 3.0                    # light changes over time


def test_camera_overrides_and_render_false():
    e = make_env("erase_whiteboard", render=True, camera_overrides={"wrist.width": 64, "wrist.height": 48})
    obs, _ = e.reset(seed=0)
    assert obs["wrist"].shape == (48, 64, 3)
    e.close()
    from twinrl_bringup.config import ConfigError

    with pytest.raises(ConfigError, match="wrist: fovy"):
        make_env("erase_whiteboard", render=True, camera_overrides={"wrist.fovy": 500})
    e = make_env("erase_whiteboard", render=False)
    with pytest.raises(RuntimeError, match="render=False"):
        e.render_cameras()
    e.close()
