"""franky backend against an in-test stand-in of the franky module, driven by BridgeCore."""
import sys
import types

import numpy as np
import pytest

from twinrl_bringup.bridge import core as bc
from twinrl_bringup.bridge.registry import create_backend
from twinrl_bringup.safety import SafetyEnvelope, load_safety_config


def make_fake_franky():
    m = types.ModuleType("franky")
    log = {"moves": [], "gripper": [], "recover": 0}

    class Affine:
        def __init__(self, translation, quaternion):
            self.translation = np.asarray(translation, float)
            self.quaternion = np.asarray(quaternion, float)

    class ReferenceType:
        Absolute = "absolute"
        Relative = "relative"

    class CartesianMotion:
        def __init__(self, target, ref):
            self.target, self.ref = target, ref

    class Robot:
        def __init__(self, ip):
            self.ip = ip
            self.pose = Affine([0.45, 0.0, 0.35], [1.0, 0.0, 0.0, 0.0])
            self.force = np.zeros(6)

        def recover_from_errors(self):
            log["recover"] += 1

        def move(self, motion, asynchronous=False):
            assert motion.ref == "absolute"
            log["moves"].append((motion.target.translation.copy(), motion.target.quaternion.copy(), asynchronous))
            self.pose = motion.target

        @property
        def current_cartesian_state(self):
            return types.SimpleNamespace(pose=types.SimpleNamespace(end_effector_pose=self.pose))

        @property
        def current_joint_state(self):
            return types.SimpleNamespace(position=np.zeros(7), velocity=np.zeros(7))

        @property
        def state(self):
            return types.SimpleNamespace(O_F_ext_hat_K=self.force)

    class Gripper:
        def __init__(self, ip):
            self.width = 0.08

        def move_async(self, width, speed):
            log["gripper"].append(("move", width))

        def grasp_async(self, width, speed, force, epsilon_outer=None):
            log["gripper"].append(("grasp", force))

    m.Affine, m.ReferenceType, m.CartesianMotion, m.Robot, m.Gripper = Affine, ReferenceType, CartesianMotion, Robot, Gripper
    return m, log


@pytest.fixture
def franky_rig(monkeypatch):
    fake, log = make_fake_franky()
    monkeypatch.setitem(sys.modules, "franky", fake)
    env = SafetyEnvelope(load_safety_config())
    be = create_backend("franky", envelope=env, node=None, task="pick_and_place")
    core = bc.BridgeCore(be, env)
    core.start()
    return core, be, log, env


def test_franky_targets_stay_in_envelope_and_gripper_hysteresis(franky_rig):
    core, be, log, env = franky_rig
    assert log["recover"] == 1
    rng = np.random.default_rng(3)
    for i in range(2000):
        a = rng.normal(size=7) * 0.2
        if i % 9 == 0:
            a[i % 7] = np.nan
        core.on_action(a)
    moves = log["moves"]
    assert len(moves) > 1000
    assert all(env.contains(p) for p, _, _ in moves)
    assert all(asyn for _, _, asyn in moves)
    kinds = [k for k, _ in log["gripper"]]
    assert kinds and all(a != b for a, b in zip(kinds, kinds[1:]))   # alternates, no repeats


def test_franky_force_stop_and_reset(franky_rig):
    core, be, log, env = franky_rig
    be.robot.force = np.array([0.0, 0.0, 100.0, 0, 0, 0])
    core.tick()
    assert core.force_stopped
    n = len(log["moves"])
    assert not core.on_action([0.01, 0, 0, 0, 0, 0, 0]).accepted
    assert len(log["moves"]) == n
    be.robot.force = np.zeros(6)
    ok, msg, _ = core.reset({"task": "pick_and_place"})
    assert ok, msg
    p, q, asyn = log["moves"][-1]
    assert np.allclose(p, [0.45, 0.0, 0.35]) and not asyn
    assert log["gripper"][-1][0] == "move"


def test_franky_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "franky", None)
    be = create_backend("franky")
    with pytest.raises(RuntimeError, match="franky-control"):
        be.start()
