"""The twin's arm tracking fitted per joint to recorded demos (twinrl_twin.arm_tracking): the
model is the twin's own rule, the fit brings the twin's arm onto the sim world's path on demos it
did not see, the twin uses a stored fit, and bad demos, fits and configs are named."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from twinrl_twin.arm_tracking import (ArmTrackingError, fit_arm_tracking, simulate_tracking, tracking_data,
                                      write_arm_tracking)
from twinrl_twin.twin_assets import TwinAssetError


@pytest.fixture(scope="module")
def sim_demos(tmp_path_factory):
    """Six erase_whiteboard expert demos of the sim world, no images: the robot's own joints."""
    from twinrl_bringup import dataset as ds
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    root = tmp_path_factory.mktemp("arm_demos")
    env = make_env("erase_whiteboard", render=False, seed=0)
    writer = ds.DatasetWriter(root / "demos")
    try:
        paths = [writer.write_episode(record_episode(env, s, "id", images=False)) for s in range(6)]
    finally:
        env.close()
    return paths


@pytest.fixture
def twin(tiny_twins, tmp_path):
    d = tmp_path / "twin"
    shutil.copytree(tiny_twins("erase_whiteboard"), d)
    return d


def test_simulated_tracking_is_the_twins_own_rule(twin):
    from twinrl_twin.twin_env import load_interaction_config, make_twin_env

    gain = [0.3, 0.35, 0.4, 0.45, 0.6, 0.65, 0.7]
    damping = [0.25, 0.2, 0.15, 0.1, 0.05, 0.0, 0.3]
    icfg = load_interaction_config(overrides=[f"arm_gain={gain}", f"arm_damping={damping}"])
    env = make_twin_env(twin, render=False, interaction=icfg)
    try:
        assert np.allclose(env.arm_tracking[0], gain) and np.allclose(env.arm_tracking[1], damping)
        obs, _ = env.reset(seed=0)
        q = [obs["proprio"][:7].astype(float)]
        q_des = []
        rng = np.random.default_rng(0)
        for _ in range(12):
            a = np.r_[rng.uniform(-0.02, 0.02, 3), 0, 0, 0, 1.0]
            obs, *_ = env.step(a)
            q.append(obs["proprio"][:7].astype(float))
            q_des.append(env.joint_targets)
    finally:
        env.close()
    sim = simulate_tracking(q[0], np.array(q_des), np.array(gain), np.array(damping))
    assert np.abs(sim - np.array(q)).max() < 1e-5          # proprio is float32
    # and not by chance: another damping gives other joints
    other = simulate_tracking(q[0], np.array(q_des), np.array(gain), np.zeros(7))
    assert np.abs(other - np.array(q)).max() > 1e-3


def test_fit_puts_the_twins_arm_on_the_robots_path(twin, sim_demos):
    from twinrl_twin.twin_assets import load_twin
    from twinrl_twin.twin_env import make_twin_env

    fit = fit_arm_tracking(twin, sim_demos[:4])
    assert fit["episodes"] == 4 and fit["steps"] > 100
    assert fit["tcp_rms_mm_after"] < 0.6 * fit["tcp_rms_mm_before"], fit
    assert fit["joint_rms_deg_after"] < fit["joint_rms_deg_before"], fit
    gain, damping = np.array(fit["gain"]), np.array(fit["damping"])
    assert np.ptp(gain) > 0.02                       # the joints differ: one gain for all was the error
    write_arm_tracking(twin, fit)
    assert load_twin(twin).meta["arm_tracking"]["gain"] == fit["gain"]
    from twinrl_twin.twin_env import arm_gains, load_interaction_config

    cfg = load_interaction_config()
    env = make_twin_env(twin, render=False, interaction=cfg)
    try:
        # a stored fit wins over the config the env is given
        assert np.allclose(env.arm_tracking[0], gain) and np.allclose(env.arm_tracking[1], damping)
        # demos the fit did not see: the fitted tracking keeps the TCP nearer the robot's path
        held = tracking_data(env, sim_demos[4:], 60)
        err = {}
        for name, (g, d) in (("config", (arm_gains(cfg.arm_gain, "g"), arm_gains(cfg.arm_damping, "d"))),
                             ("fit", (gain, damping))):
            e = [np.linalg.norm(env.ik.forward(a)[0] - env.ik.forward(b)[0])
                 for qd, qr in held for a, b in zip(simulate_tracking(qr[0], qd, g, d)[1:], qr[1:])]
            err[name] = 1000 * float(np.sqrt(np.mean(np.square(e))))
    finally:
        env.close()
    assert err["fit"] < 0.6 * err["config"] and err["fit"] < 2.5, err


def test_bad_demos_fits_and_configs_are_named(twin, sim_demos, tmp_path):
    from twinrl_bringup import dataset as ds
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode
    from twinrl_twin.twin_assets import load_twin
    from twinrl_twin.twin_env import load_interaction_config

    env = make_env("pick_and_place", render=False, seed=0)
    try:
        other = ds.DatasetWriter(tmp_path / "pp").write_episode(record_episode(env, 0, "id", images=False, max_steps=5))
    finally:
        env.close()
    with pytest.raises(ArmTrackingError, match="pp.*pick_and_place.*erase_whiteboard"):
        fit_arm_tracking(twin, [other])
    with pytest.raises(ArmTrackingError, match="no episodes"):
        fit_arm_tracking(twin, [])
    meta = json.loads((twin / "twin.json").read_text())
    for bad, match in (({"gain": [0.5] * 6, "damping": 0.1}, "7 numbers"),
                       ({"gain": [0.5] * 7, "damping": [1.5] * 7}, r"damping in \[0, 1\)"),
                       ("fast", "expected an object")):
        meta["arm_tracking"] = bad
        (twin / "twin.json").write_text(json.dumps(meta))
        with pytest.raises(TwinAssetError, match="twin.json: arm_tracking"):
            load_twin(twin)
    with pytest.raises(ValueError, match="7 numbers"):
        write_arm_tracking(twin, {"gain": [0.4, 0.4], "damping": [0.1] * 7})
    with pytest.raises(ValueError, match="arm_gain"):
        load_interaction_config(overrides=["arm_gain=[0.4, 0.4]"]).validate()
    with pytest.raises(ValueError, match="arm_gain must be in"):
        load_interaction_config(overrides=["arm_gain=[0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 1.2]"]).validate()
