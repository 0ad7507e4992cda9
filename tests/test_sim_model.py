"""The FR3 model: URDF and MJCF generated from one source, matching FK (pinocchio vs MuJoCo)."""
import numpy as np
import pytest

from twinrl_twin.sim import fr3_model

import mujoco
import pinocchio as pin


def test_committed_files_match_the_generator():
    files = fr3_model.generated_files()
    for name, text in files.items():
        path = fr3_model.assets_dir() / name
        assert path.is_file(), f"{path} missing: run python -m twinrl_twin.sim.fr3_model --write"
        assert path.read_text() == text, f"{path} is stale: run python -m twinrl_twin.sim.fr3_model --write"


def test_generator_follows_the_config(tmp_path):
    cfg = fr3_model.load_fr3_config()
    cfg.tcp_offset = 0.2
    files = fr3_model.generated_files(cfg)
    assert 'name="fr3_hand_tcp" pos="0 0 0.2"' in files["fr3.xml"]
    assert '<origin xyz="0 0 0.2"' in files["fr3.urdf"]


def _frames_mujoco(m, d, q):
    d.qpos[:7] = q
    mujoco.mj_kinematics(m, d)
    out = {}
    for name in fr3_model.FRAMES:
        if name in ("fr3_link8", "fr3_hand_tcp"):
            sid = m.site(name).id
            out[name] = (d.site_xpos[sid].copy(), d.site_xmat[sid].reshape(3, 3).copy())
        else:
            bid = m.body(name).id
            out[name] = (d.xpos[bid].copy(), d.xmat[bid].reshape(3, 3).copy())
    return out


def test_fk_urdf_pinocchio_matches_mjcf_mujoco():
    assets = fr3_model.assets_dir()
    m = mujoco.MjModel.from_xml_path(str(assets / "fr3.xml"))
    d = mujoco.MjData(m)
    pm = pin.buildModelFromUrdf(str(assets / "fr3.urdf"))
    pd = pm.createData()
    cfg = fr3_model.load_fr3_config()
    lo, hi = np.array(cfg.joint_lower), np.array(cfg.joint_upper)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(200):
        q = rng.uniform(lo, hi)
        qp = np.zeros(pm.nq)
        qp[:7] = q
        pin.framesForwardKinematics(pm, pd, qp)
        mj = _frames_mujoco(m, d, q)
        for name, (p, R) in mj.items():
            oMf = pd.oMf[pm.getFrameId(name)]
            worst = max(worst, float(np.linalg.norm(oMf.translation - p)))
            assert np.allclose(oMf.rotation, R, atol=1e-6), name
    assert worst < 1e-6, f"largest FK position difference {worst} m"


def test_tcp_is_below_the_flange_and_limits_match():
    cfg = fr3_model.load_fr3_config()
    m = mujoco.MjModel.from_xml_path(str(fr3_model.assets_dir() / "fr3.xml"))
    d = mujoco.MjData(m)
    d.qpos[:7] = cfg.home
    mujoco.mj_kinematics(m, d)
    flange, tcp = d.site_xpos[m.site("fr3_link8").id], d.site_xpos[m.site("fr3_hand_tcp").id]
    assert np.linalg.norm(tcp - flange) == pytest.approx(0.1034, abs=1e-9)
    assert tcp[2] < flange[2]          # home pose points the hand down
    for i, j in enumerate(fr3_model.ARM_JOINTS):
        assert tuple(m.joint(j).range) == pytest.approx((cfg.joint_lower[i], cfg.joint_upper[i]))
    assert tuple(m.joint("fr3_finger_joint1").range) == pytest.approx((0.0, 0.04))
