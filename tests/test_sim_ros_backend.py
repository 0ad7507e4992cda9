"""SimBackend (fr3_bridge backend "sim") without ROS: the Backend contract, resets, cameras,
world status, and a scripted-expert episode through BridgeCore and the safety envelope."""
from __future__ import annotations

import numpy as np
import pytest


from twinrl_bringup.bridge.backend import Backend, CartesianTarget  # noqa: E402
from twinrl_bringup.bridge.core import SOURCE_SCRIPTED, BridgeCore  # noqa: E402
from twinrl_bringup.config import ConfigError  # noqa: E402
from twinrl_bringup.safety import SafetyEnvelope, load_safety_config  # noqa: E402
from twinrl_twin.sim.backend import (  # noqa: E402
    SimBackend, load_backend_config, sample_configuration, task_time_limit,
)

SMALL = "{camera_overrides: {third_person.width: 64, third_person.height: 64, wrist.width: 32, wrist.height: 32}}"


@pytest.fixture(scope="module")
def backend():
    b = SimBackend("pick_and_place", config=SMALL, seed=3)
    b.start()
    yield b
    b.stop()


def test_contract_state_cameras_and_reset(backend):
    assert isinstance(backend, Backend) and backend.name == "sim"
    s = backend.read_state()
    assert s.joint_positions.shape == (7,) and s.tcp_position.shape == (3,)
    assert abs(np.linalg.norm(s.tcp_quaternion) - 1) < 1e-6 and 0.0 <= s.gripper_width <= 0.081
    frames = {f.name: f for f in backend.cameras()}
    assert frames["third_person"].image.shape == (64, 64, 3) and frames["wrist"].image.shape == (32, 32, 3)
    assert frames["third_person"].image.dtype == np.uint8 and frames["third_person"].image.std() > 1
    assert frames["wrist"].frame_id == "wrist_optical_frame" and frames["wrist"].fx > 0

    conf = sample_configuration("pick_and_place", 2, -1, (1, 4), seed=9)
    assert (conf["cell_row"], conf["cell_col"]) == (1, 4) and conf["region"] == "ood"
    applied = backend.reset(dict(conf, region=1))
    assert applied["region"] == 1 and (applied["cell_row"], applied["cell_col"]) == (1, 4)
    np.testing.assert_allclose(applied["object_pose"][:2], conf["object_pose"][:2], atol=2e-3)
    ws = backend.world_status()
    assert not ws.success and ws.reward == 0.0
    np.testing.assert_allclose(ws.extra["object_pose"][:2], conf["object_pose"][:2], atol=2e-3)

    # an unset configuration (all-zero poses, as in an empty ResetConfiguration) is sampled in its region
    for region in (0, 1):
        applied = backend.reset({"task": "pick_and_place", "object_pose": [0.0] * 7, "target_pose": [0.0] * 7,
                                 "region": region, "cell_row": 0, "cell_col": 0, "seed": 5 + region})
        assert applied["region"] == region and applied["seed"] == 5 + region
        assert np.linalg.norm(applied["object_pose"][3:]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="runs task 'pick_and_place'.*'insert_hexagon'"):
        backend.reset({"task": "insert_hexagon"})
    assert task_time_limit("pick_and_place") > 0


def test_command_tick_hold(backend):
    backend.reset({"task": "pick_and_place", "object_pose": [0.0] * 7, "seed": 1})
    s0 = backend.read_state()
    goal = s0.tcp_position + np.array([0.0, 0.0, -0.04])
    backend.command(CartesianTarget(goal, s0.tcp_quaternion, -1.0))
    for _ in range(25):
        backend.tick(0.02)
    s1 = backend.read_state()
    assert np.linalg.norm(s1.tcp_position - goal) < 0.01
    backend.hold()
    for _ in range(10):
        backend.tick(0.02)
    assert np.linalg.norm(backend.read_state().tcp_position - s1.tcp_position) < 0.005


def test_expert_episode_through_bridge_core(backend):
    """What fr3_bridge does with the expert's actions: envelope, target, backend ticks."""
    envelope = SafetyEnvelope(load_safety_config())
    clock = {"t": 0.0}                # the bridge's clock, advanced like its 50 Hz loop would
    core = BridgeCore(backend, envelope, clock=lambda: clock["t"])
    core.tick_period = 0.02
    core.start()
    ok, msg, applied = core.reset(sample_configuration("pick_and_place", 0, 0, (0, 0), seed=21))
    assert ok, msg
    success, steps = False, 0
    for steps in range(1, 151):
        a, k = backend.expert_action()
        assert k == steps - 1
        d = core.on_action(a, source=SOURCE_SCRIPTED)
        assert d.accepted, d.reason
        for _ in range(5):            # fr3_bridge's 50 Hz loop within one 10 Hz control period
            clock["t"] += 0.02
            core.tick()
        ws = backend.world_status()
        if ws.success:
            success = True
            break
    assert success, f"no success in {steps} steps (expert phase {backend.expert.phase})"
    assert ws.reward == 1.0 and ws.done
    assert core.counters.rejected == 0


def test_expert_steps_only_after_its_action_was_applied(backend):
    """The expert's phase machine counts steps: a step nobody applied must not be skipped."""
    backend.reset(sample_configuration("pick_and_place", 0, 0, (0, 1), seed=4))
    a0, k0 = backend.expert_action(now=100.0)
    a1, k1 = backend.expert_action(now=100.1)      # not applied yet: the same step again
    assert (k0, k1) == (0, 0) and np.array_equal(a0, a1)
    s = backend.read_state()
    backend.command(CartesianTarget(s.tcp_position + a0[:3], s.tcp_quaternion, a0[6], 0.0))
    _, k2 = backend.expert_action(now=100.2)
    assert k2 == 1
    _, k3 = backend.expert_action(now=100.3)
    _, k4 = backend.expert_action(now=100.3 + backend.cfg.expert_stale_s)   # stale: recomputed
    assert (k3, k4) == (1, 2)


def test_backend_config_errors():
    assert load_backend_config(None).render is True
    assert load_backend_config("{render: false}").render is False
    with pytest.raises(ConfigError, match="renderr"):
        load_backend_config("{renderr: false}")
    with pytest.raises(ConfigError, match="invalid inline YAML"):
        load_backend_config("{render: [}")
    with pytest.raises(RuntimeError, match="cannot be built"):
        SimBackend("stack_blocks", config="{render: false}").start()
