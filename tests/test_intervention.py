"""Intervention: recorded spacenav readings -> expected human actions, buttons -> events/labels."""
import time

import numpy as np
import pytest
import yaml

from twinrl_bringup.config import ConfigError
from twinrl_bringup.intervention import (ButtonDecoder, ButtonMap, Intervention, SpaceMouseMapper,
                                         load_intervention_config)
from twinrl_bringup.operator_script import OperatorScript, Segment, load_script


@pytest.fixture(scope="module")
def cfg():
    return load_intervention_config()


def expected_axis(v, cfg):
    x = np.clip(v / cfg.full_scale, -1, 1)
    return np.sign(x) * max(abs(x) - cfg.deadband, 0.0) / (1 - cfg.deadband)


# (linear, angular) readings as /spacenav/twist carries them (recorded from a SpaceMouse Compact)
RECORDED = [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((0.03, -0.05, 0.06), (0.01, 0.0, -0.02)),          # sensor noise, inside the deadband
    ((0.34, 0.0, 0.0), (0.0, 0.0, 0.0)),                # half deflection forward
    ((0.0, -0.68, 0.0), (0.0, 0.0, 0.0)),               # full deflection
    ((0.0, 0.0, 0.9), (0.0, 0.0, 0.0)),                 # beyond full scale: clipped
    ((0.1, 0.2, -0.3), (0.3, -0.4, 0.5)),
]


def test_recorded_readings_map_to_expected_actions(cfg):
    m = SpaceMouseMapper(cfg)
    for lin, ang in RECORDED:
        dp, dr, moved = m.map(lin, ang)
        exp_t = np.array([expected_axis(v, cfg) for v in lin]) * cfg.translation_scale
        exp_r = np.array([expected_axis(v, cfg) for v in ang]) * cfg.rotation_scale
        assert np.allclose(dp, exp_t) and np.allclose(dr, exp_r)
        assert moved == bool(np.any(exp_t) or np.any(exp_r))
    # spot values computed by hand
    dp, _, moved = m.map((0.03, -0.05, 0.06), (0, 0, 0))
    assert not moved and np.all(dp == 0)
    dp, _, _ = m.map((0.0, -0.68, 0.0), (0, 0, 0))
    assert dp[1] == pytest.approx(-cfg.translation_scale)
    dp, _, _ = m.map((0.0, 0.0, 0.9), (0, 0, 0))
    assert dp[2] == pytest.approx(cfg.translation_scale)
    dp, _, _ = m.map((0.34, 0, 0), (0, 0, 0))
    assert dp[0] == pytest.approx((0.5 - 0.1) / 0.9 * cfg.translation_scale)
    dp, dr, moved = m.map((np.nan, 0, 0), (0, 0, 0))
    assert not moved and np.all(dp == 0)


def test_axis_permutation_and_signs():
    c = load_intervention_config(overrides=[("translation_axes", [1, 0, 2]),
                                            ("translation_signs", [-1.0, 1.0, 1.0])])
    dp, _, _ = SpaceMouseMapper(c).map((c.full_scale, 0, 0), (0, 0, 0))
    assert dp == pytest.approx([0.0, c.translation_scale, 0.0])
    dp, _, _ = SpaceMouseMapper(c).map((0, c.full_scale, 0), (0, 0, 0))
    assert dp == pytest.approx([-c.translation_scale, 0.0, 0.0])


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="deadband"):
        load_intervention_config(overrides=[("deadband", 1.5)])
    with pytest.raises(ConfigError, match="translation_axes"):
        load_intervention_config(overrides=[("translation_axes", [0, 0, 1])])
    with pytest.raises(ConfigError, match="buttons.abort"):
        load_intervention_config(overrides=[("buttons.abort", [0])])


def test_buttons_chords_fire_on_release():
    d = ButtonDecoder(ButtonMap())
    seq = [[1, 0], [1, 0], [0, 0]]
    assert [d.update(b) for b in seq] == [None, None, "gripper_toggle"]
    seq = [[0, 1], [0, 0]]
    assert [d.update(b) for b in seq] == [None, "success"]
    seq = [[1, 0], [1, 1], [0, 1], [0, 0]]   # chord: abort only, no toggle or success
    assert [d.update(b) for b in seq] == [None, None, None, "abort"]
    assert d.update([0, 0]) is None


def test_intervention_takeover_linger_and_gripper(cfg):
    iv = Intervention(cfg)
    t = 0.0
    assert iv.step(t) is None                            # nobody touches the device
    iv.on_commanded_gripper(0.9)                         # the policy closed the gripper
    iv.on_twist((0.68, 0, 0), (0, 0, 0), t)
    cmd = iv.step(t)
    assert cmd is not None and cmd.moved
    assert cmd.action[0] == pytest.approx(cfg.translation_scale) and cmd.action[6] == 1.0
    iv.on_twist((0, 0, 0), (0, 0, 0), t + 0.1)          # released: linger with zero motion
    cmd = iv.step(t + 0.2)
    assert cmd is not None and not cmd.moved and np.all(cmd.action[:6] == 0) and cmd.action[6] == 1.0
    assert iv.step(t + 0.1 + cfg.linger_s + 0.01) is None
    # toggle while released: one human step with the new gripper
    iv.on_buttons([1, 0], t + 1.0)
    iv.on_buttons([0, 0], t + 1.1)
    cmd = iv.step(t + 1.1)
    assert cmd is not None and cmd.action[6] == -1.0
    # a stale device (unplugged while deflected) stops counting as moved
    iv.on_twist((0.68, 0, 0), (0, 0, 0), t + 2.0)
    assert iv.step(t + 2.0 + cfg.stale_input_s + cfg.linger_s + 0.1) is None


def test_operator_scripts():
    s = load_script("nudge")
    lin, _, b, fin = s.sample(2.5)
    assert lin[0] > 0 and not fin
    _, _, _, fin = s.sample(s.duration + 0.1)
    assert fin
    _, _, b, _ = s.sample(s.duration + 0.1, loop=True)
    with pytest.raises(ConfigError, match="no such operator script"):
        load_script("missing_script")
    with pytest.raises(ValueError):
        OperatorScript([])
    with pytest.raises(ConfigError, match="duration"):
        from twinrl_bringup.config import from_dict
        from_dict({"duration": -1}, Segment)


@pytest.mark.ros
def test_nodes_sim_operator_to_intervention(rclpy_context, spawn_node, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.msg import Action, TaskStatus

    script = tmp_path / "op.yaml"
    script.write_text(yaml.safe_dump([
        {"duration": 1.0},
        {"duration": 1.5, "linear": [0.34, 0.0, 0.0]},
        {"duration": 0.5},
        {"duration": 0.2, "buttons": [1, 0]},
        {"duration": 0.5},
        {"duration": 0.2, "buttons": [0, 1]},
        {"duration": 0.5},
    ]))
    node = __import__("rclpy").create_node("iv_probe", context=rclpy_context)
    actions, labels = [], []
    node.create_subscription(Action, "/twinrl/action", actions.append, 100)
    node.create_subscription(TaskStatus, "/twinrl/task_status", labels.append, 10)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    iv = spawn_node("twinrl_bringup", "intervention", parameters={"task": "pick_and_place"})
    deadline = time.monotonic() + 20        # process start-up is slow on a loaded host
    while "intervention: reading" not in iv.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    while node.count_publishers("/twinrl/action") < 1 and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.1)       # discovery: the probe sees the intervention node
    # the script starts after a delay that covers the operator <-> intervention discovery
    op = spawn_node("twinrl_bringup", "sim_operator", parameters={"script": str(script), "start_delay": 1.5})
    while "sim_operator: script" not in op.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not labels:
        ex.spin_once(timeout_sec=0.05)
    for _ in range(10):
        ex.spin_once(timeout_sec=0.02)
    assert labels, "no label; intervention:\n" + iv.output() + "\noperator:\n" + op.output()
    assert labels[0].success and labels[0].done and labels[0].source == "human_label"
    assert labels[0].task == "pick_and_place" and labels[0].reward == 1.0
    human = [a for a in actions if a.source == Action.SOURCE_HUMAN]
    assert human and all(a.intervention for a in human)
    cfg = load_intervention_config()
    moving = [a for a in human if a.delta_position.x > 0]
    assert len(moving) >= 3   # 1.5 s at 10 Hz: 15 steps on an idle host, fewer when starved
    assert moving[0].delta_position.x == pytest.approx((0.5 - 0.1) / 0.9 * cfg.translation_scale, rel=1e-6)
    assert all(a.gripper == -1.0 for a in moving)
    assert human[-1].gripper == 1.0 and human[-1].delta_position.x == 0.0   # toggled closed
    node.destroy_node()
