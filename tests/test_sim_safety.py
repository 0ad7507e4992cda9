"""Safety in the sim world: 10,000 random, NaN, inf and huge actions through env.step never
put the TCP target outside the envelope (render=False)."""
import numpy as np

from twinrl_bringup.safety import SafetyEnvelope, load_safety_config
from twinrl_twin.sim import make_env


def test_ten_thousand_bad_actions_never_leave_the_envelope():
    env = make_env("insert_triple_column", render=False, seed=0)
    box = SafetyEnvelope(load_safety_config())
    rng = np.random.default_rng(42)
    env.reset(seed=0)
    outside = 0
    rejected = 0
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            a = rng.uniform(-1, 1, 7) * np.array([0.08, 0.08, 0.08, 0.5, 0.5, 0.5, 2.0])
        elif kind == 1:
            a = rng.normal(size=7) * 10.0 ** rng.integers(0, 12)     # huge
        elif kind == 2:
            a = rng.uniform(-1, 1, 7)
            a[rng.integers(0, 7)] = np.nan
        elif kind == 3:
            a = rng.uniform(-1, 1, 7)
            a[rng.integers(0, 7)] = rng.choice([np.inf, -np.inf])
        else:
            a = np.array([0.05, 0.05, -0.05, 0, 0, 0, 1.0]) * rng.choice([-1, 1])   # push into walls
        obs, reward, term, trunc, info = env.step(a)
        p, q = env.target_pose
        if not box.contains(p) or not np.isfinite(q).all():
            outside += 1
        assert box.joints_within_limits(env.joint_targets)
        if not info["safety"].accepted:
            rejected += 1
            assert info["safety"].reason
        assert np.isfinite(obs["proprio"]).all()
        if i % 1000 == 999:
            env.reset()
    env.close()
    assert outside == 0
    assert rejected >= 4000          # every NaN / inf action is rejected


def test_pressing_onto_the_object_triggers_the_force_stop():
    env = make_env("pick_and_place", render=False, seed=0)
    # the block lies right under the closed gripper; pushing down presses the fingertips on it
    obs, _ = env.reset(seed=0, options={"configuration": {"object_pose": [0.40, 0.0, 0.013, 0, 0, 0, 1]}})
    forces = []
    for _ in range(30):
        obs, _, _, _, info = env.step(np.array([0.0, 0.0, -0.05, 0, 0, 0, 1.0]))
        forces.append(np.linalg.norm(env.external_force()))
    env.close()
    assert info["force_stops"] > 0
    # the arm stops on the block instead of crushing it: fingertips stay above the block's top
    assert obs["tcp_pose"][2] - 0.01 > 0.026 - 0.004
