"""fr3_bridge core without ROS: envelope, watchdog, e-stop, arbitration, force stop."""
import numpy as np
import pytest

from twinrl_bringup.bridge import core as bc
from twinrl_bringup.bridge.backend import Backend, RobotState
from twinrl_bringup.bridge.registry import BackendError, backend_class, create_backend
from twinrl_bringup.safety import SafetyEnvelope, load_safety_config
from twinrl_bringup.transforms import quat_angle


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class FakeBackend:
    """Tracks targets perfectly; records every command and hold."""

    name = "fake"

    def __init__(self):
        self.p = np.array([0.45, 0.0, 0.35])
        self.q = np.array([1.0, 0.0, 0.0, 0.0])
        self.force = None
        self.commands = []
        self.holds = 0
        self.resets = []

    def start(self):
        pass

    def read_state(self):
        return RobotState(0.0, np.zeros(7), np.zeros(7), self.p.copy(), self.q.copy(), 0.08, self.force)

    def command(self, target):
        self.commands.append(target)
        self.p, self.q = np.array(target.position), np.array(target.quaternion)

    def hold(self):
        self.holds += 1

    def tick(self, dt):
        pass

    def cameras(self):
        return []

    def reset(self, configuration):
        self.resets.append(configuration)
        return configuration

    def world_status(self):
        return None

    def stop(self):
        pass


@pytest.fixture()
def rig():
    clock = FakeClock()
    be = FakeBackend()
    env = SafetyEnvelope(load_safety_config())
    core = bc.BridgeCore(be, env, clock=clock)
    core.tick_period = 0.01
    core.start()
    return core, be, clock, env


def test_fake_backend_satisfies_protocol():
    assert isinstance(FakeBackend(), Backend)


def test_random_nan_inf_out_of_range_produce_no_target_outside_envelope(rig):
    core, be, clock, env = rig
    rng = np.random.default_rng(1)
    specials = [np.nan, np.inf, -np.inf, 1e12, -1e12]
    n = 10000
    for i in range(n):
        a = rng.normal(size=7) * rng.choice([0.01, 0.1, 10.0])
        if i % 5 == 0:
            a[rng.integers(7)] = specials[i % len(specials)]
        prev = core.target
        clock.t += 0.1
        d = core.on_action(a, source=bc.SOURCE_POLICY)
        if d.accepted:
            t = d.target
            assert env.contains(t.position)
            assert np.linalg.norm(t.position - prev.position) <= env.cfg.max_translation_step + 1e-9
            assert quat_angle(prev.quaternion, t.quaternion) <= env.cfg.max_rotation_step + 1e-9
            assert -1.0 <= t.gripper <= 1.0
        else:
            assert d.reason
    outside = [t for t in be.commands if not env.contains(t.position)]
    assert len(be.commands) > 0.5 * n
    assert outside == []
    s = core.status()
    assert s["commands_received"] == n
    assert s["commands_rejected"] == n - s["commands_accepted"] > 0
    assert s["reasons"]["non_finite"] == s["commands_rejected"]
    assert s["commands_clipped"] > 0


def test_velocity_limit_for_fast_commands(rig):
    core, be, clock, env = rig
    core.on_action([0, 0, 0, 0, 0, 0, 0])
    clock.t += 0.01  # 10 ms later: at most 0.5 m/s * 10 ms
    p0 = core.target.position.copy()
    d = core.on_action([0.05, 0, 0, 0, 0, 0, 0])
    step = np.linalg.norm(core.target.position - p0)
    assert d.clipped and step == pytest.approx(env.cfg.max_cartesian_velocity * 0.01)


def test_watchdog_holds_within_timeout(rig):
    core, be, clock, env = rig
    core.on_action([0.01, 0, 0, 0, 0, 0, 0])
    t_last = clock.t
    holds0 = be.holds
    while be.holds == holds0:
        clock.t += core.tick_period
        core.tick()
        assert clock.t - t_last < 1.0
    assert core.holding
    assert clock.t - t_last <= env.cfg.watchdog_timeout + 1e-9
    assert clock.t - t_last > env.cfg.watchdog_timeout - core.hold_margin() - 2 * core.tick_period
    assert core.status()["watchdog_holds"] == 1
    # fresh actions at 10 Hz keep it moving (no hold)
    for _ in range(20):
        clock.t += 0.1
        assert core.on_action([0.001, 0, 0, 0, 0, 0, 0]).accepted
        core.tick()
    assert not core.holding


def test_estop_rejects_and_holds_until_released(rig):
    core, be, clock, env = rig
    core.on_action([0.01, 0, 0, 0, 0, 0, 0])
    n_cmd = len(be.commands)
    core.set_estop(True)
    assert core.holding and be.holds >= 1
    for _ in range(5):
        clock.t += 0.1
        d = core.on_action([0.01, 0, 0, 0, 0, 0, 0])
        assert not d.accepted and "e-stop" in d.reason
    assert len(be.commands) == n_cmd
    ok, msg, _ = core.reset({})
    assert not ok and "e-stop" in msg
    core.set_estop(False)
    clock.t += 0.1
    assert core.on_action([0.01, 0, 0, 0, 0, 0, 0]).accepted
    assert core.status()["estops"] == 1


def test_arbitration_human_overrides_policy(rig):
    core, be, clock, env = rig
    d = core.on_action([0.01, 0, 0, 0, 0, 0, 0], source=bc.SOURCE_POLICY)
    assert d.accepted and not d.intervention
    clock.t += 0.1
    d = core.on_action([0, 0.01, 0, 0, 0, 0, 1], source=bc.SOURCE_HUMAN, intervention=True)
    assert d.accepted and d.intervention
    clock.t += 0.1
    d = core.on_action([0.01, 0, 0, 0, 0, 0, 0], source=bc.SOURCE_POLICY)
    assert not d.accepted and d.ignored and "human" in d.reason
    clock.t += core.human_override_s
    d = core.on_action([0.01, 0, 0, 0, 0, 0, 0], source=bc.SOURCE_POLICY)
    assert d.accepted and not d.intervention
    assert core.status()["interventions"] == 1


def test_modes(rig):
    core, be, clock, env = rig
    ok, _, prev = core.set_mode(bc.MODE_HUMAN)
    assert ok and prev == bc.MODE_POLICY
    assert core.on_action([0.01, 0, 0, 0, 0, 0, 0]).ignored
    assert core.on_action([0.01, 0, 0, 0, 0, 0, 0], source=bc.SOURCE_HUMAN).accepted
    core.set_mode(bc.MODE_HOLD)
    assert core.holding
    assert core.on_action([0.01, 0, 0, 0, 0, 0, 0], source=bc.SOURCE_HUMAN).ignored
    ok, msg, _ = core.set_mode(7)
    assert not ok and "unknown mode" in msg


def test_force_stop_latches_until_reset(rig):
    core, be, clock, env = rig
    core.on_action([0.01, 0, 0, 0, 0, 0, 0])
    be.force = np.array([0.0, 0.0, env.cfg.force_threshold * 2])
    core.tick()
    assert core.force_stopped and core.holding
    be.force = None
    clock.t += 0.1
    d = core.on_action([0.01, 0, 0, 0, 0, 0, 0])
    assert not d.accepted and "force" in d.reason
    ok, _, _ = core.reset({"task": "pick_and_place"})
    assert ok and not core.force_stopped and be.resets
    assert core.on_action([0.01, 0, 0, 0, 0, 0, 0]).accepted


def test_registry():
    assert backend_class("real").__name__ == "RealBackend"
    with pytest.raises(BackendError, match="unknown fr3_bridge backend 'nope'"):
        backend_class("nope")
    with pytest.raises(BackendError, match="cannot import"):
        backend_class("no_such_pkg.mod:Thing")
    fb = create_backend(f"{__name__}:FakeBackend", node=None, task="x")
    assert fb.name == "fake"
