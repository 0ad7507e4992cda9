"""Safety envelope: every action, however bad, yields a target inside the envelope."""
import math

import numpy as np
import pytest

from twinrl_bringup.config import ConfigError
from twinrl_bringup.safety import SafetyEnvelope, load_safety_config, tilt_angle

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # TCP z axis pointing down


@pytest.fixture(scope="module")
def env():
    return SafetyEnvelope(load_safety_config())


def _angle_between(q1, q2):
    d = abs(float(np.dot(q1, q2)))
    return 2.0 * math.acos(min(1.0, d))


def test_config_file_loads_with_fr3_joint_limits(env):
    cfg = env.cfg
    assert cfg.joint_limits.lower[3] == pytest.approx(-3.0421)
    assert cfg.joint_limits.upper[5] == pytest.approx(4.5169)
    assert cfg.watchdog_timeout == pytest.approx(0.2)
    assert np.all(env.box_min < env.box_max)


def test_bad_config_names_key(tmp_path):
    bad = tmp_path / "safety.yaml"
    bad.write_text(
        "workspace: {min: [0, 0, 0], max: [1, 1, 1]}\n"
        "joint_limits: {lower: [0,0,0,0,0,0,0], upper: [1,1,1,1,1,1,1]}\n"
        "max_translation_stp: 0.1\n")
    with pytest.raises(ConfigError, match="max_translation_stp"):
        load_safety_config(bad)
    bad.write_text(
        "workspace: {min: [0, 0, 2], max: [1, 1, 1]}\n"
        "joint_limits: {lower: [0,0,0,0,0,0,0], upper: [1,1,1,1,1,1,1]}\n")
    with pytest.raises(ConfigError, match="workspace"):
        load_safety_config(bad)


def test_random_nan_inf_out_of_range_never_leave_envelope(env):
    rng = np.random.default_rng(0)
    cfg = env.cfg
    p = np.array([0.5, 0.0, 0.3])
    q = DOWN.copy()
    n_rejected = n_clipped = 0
    specials = np.array([np.nan, np.inf, -np.inf, 1e9, -1e9, 1e300])
    for i in range(10000):
        scale = rng.choice([0.01, 0.1, 1.0, 100.0])
        a = rng.normal(size=7) * scale
        if i % 7 == 0:
            a[rng.integers(7)] = rng.choice(specials)
        r = env.apply(a, p, q)
        assert env.contains(r.position)
        assert -1.0 <= r.gripper <= 1.0
        assert abs(np.linalg.norm(r.quaternion) - 1.0) < 1e-9
        if not r.accepted:
            n_rejected += 1
            assert r.reason
            assert np.allclose(r.position, p) and np.allclose(r.quaternion, q)
            continue
        n_clipped += r.clipped
        assert np.linalg.norm(r.position - p) <= cfg.max_translation_step + 1e-9
        assert _angle_between(r.quaternion, q) <= cfg.max_rotation_step + 1e-9
        assert tilt_angle(r.quaternion) <= max(cfg.max_tilt, tilt_angle(q)) + 1e-9
        p, q = r.position, r.quaternion
    assert n_rejected > 0 and n_clipped > 0


def test_nan_rejected_with_named_component(env):
    r = env.apply([0.0, np.nan, 0, 0, 0, 0, 0], [0.5, 0, 0.3], DOWN)
    assert not r.accepted and "dy" in r.reason
    r = env.apply([0.0, 0, 0, 0, 0, 0, np.inf], [0.5, 0, 0.3], DOWN)
    assert not r.accepted and "gripper" in r.reason
    r = env.apply([0.0, 0.0], [0.5, 0, 0.3], DOWN)
    assert not r.accepted and "7 values" in r.reason


def test_small_action_passes_unchanged(env):
    r = env.apply([0.01, -0.02, 0.005, 0, 0, 0.1, -0.5], [0.5, 0, 0.3], DOWN)
    assert r.accepted and not r.clipped
    assert np.allclose(r.position, [0.51, -0.02, 0.305])
    assert _angle_between(r.quaternion, DOWN) == pytest.approx(0.1, abs=1e-9)
    assert r.gripper == -0.5


def test_box_and_velocity_clipping(env):
    top = env.box_max.copy()
    r = env.apply([0.04, 0.04, 0.04, 0, 0, 0, 0], top, DOWN)
    assert r.accepted and r.clipped and "workspace" in r.reason
    assert np.allclose(r.position, top)
    # velocity limit with dt: 0.5 m/s * 0.02 s = 1 cm
    r = env.apply([0.04, 0, 0, 0, 0, 0, 0], [0.5, 0, 0.3], DOWN, dt=0.02)
    assert r.clipped and np.linalg.norm(r.position - [0.5, 0, 0.3]) == pytest.approx(0.01)


def test_tilt_limit_blocks_tipping_but_allows_recovery(env):
    q = DOWN.copy()
    for _ in range(40):  # keep rotating about base x: tilt grows until the limit
        r = env.apply([0, 0, 0, 0.25, 0, 0, 0], [0.5, 0, 0.3], q)
        q = r.quaternion
    assert tilt_angle(q) <= env.cfg.max_tilt + 1e-9
    assert tilt_angle(q) > env.cfg.max_tilt - 0.26
    r = env.apply([0, 0, 0, -0.25, 0, 0, 0], [0.5, 0, 0.3], q)
    assert tilt_angle(r.quaternion) < tilt_angle(q)


def test_joint_clip_and_force(env):
    q = np.array([3.0, -2.0, 0.0, 0.0, 0.0, 0.0, 4.0])
    c = env.clip_joints(q)
    assert env.joints_within_limits(c)
    assert c[0] == pytest.approx(2.7437) and c[3] == pytest.approx(-0.1518) and c[5] == pytest.approx(0.5445)
    with pytest.raises(ValueError, match="non-finite"):
        env.clip_joints([np.nan] * 7)
    assert not env.force_exceeded(None)
    assert not env.force_exceeded([1.0, 2.0, 3.0])
    assert env.force_exceeded([0.0, 0.0, env.cfg.force_threshold + 1])
    assert env.force_exceeded([np.nan, 0, 0])
