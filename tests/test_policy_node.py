"""policy node (integration): images in -> actions out at the control rate, hot reload, corrupt
checkpoints rejected while the node keeps acting, bad images -> clear error and no action."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import spin_until
from policy_fixtures import tiny_model_config
from twinrl_policy.checkpoint import file_sha256, save_checkpoint
from twinrl_policy.inference import PolicyRunner, proprio_from_joint_state
from twinrl_policy.model import VisuomotorPolicy

pytestmark = pytest.mark.ros

JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]


def _save(path, seed, version):
    torch.manual_seed(seed)
    return save_checkpoint(path, VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place"])), version=version)


@pytest.mark.slow
def test_policy_node_end_to_end(spawn_node, rclpy_context, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64
    from twinrl_msgs.msg import Action, PolicyVersion
    import rclpy

    _save(tmp_path / "v1.ckpt", 0, 1)
    sha2 = _save(tmp_path / "v2.ckpt", 1, 2)
    _save(tmp_path / "v3.ckpt", 2, 3)
    data = bytearray((tmp_path / "v3.ckpt").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "v3.ckpt").write_bytes(bytes(data))

    proc = spawn_node("twinrl_policy", "policy", parameters={
        "checkpoint": str(tmp_path / "v1.ckpt"), "control_rate": 10.0, "num_threads": 1,
        "error_log_period": 0.5})

    rng = np.random.default_rng(0)
    tp = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    wr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    qpos, qvel = list(np.linspace(-1, 1, 7)), [0.0] * 7
    tcp_p, tcp_q = [0.5, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0]
    proprio = proprio_from_joint_state(JOINTS, qpos, qvel, tcp_p, tcp_q)
    expected = {v: PolicyRunner(tmp_path / f"v{v}.ckpt").act(tp, wr, proprio).action for v in (1, 2)}

    node = rclpy.create_node("policy_node_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    pubs = {"tp": node.create_publisher(Image, "/twinrl/camera/third_person/image_raw", 5),
            "wr": node.create_publisher(Image, "/twinrl/camera/wrist/image_raw", 5),
            "js": node.create_publisher(JointState, "/joint_states", 5),
            "tcp": node.create_publisher(PoseStamped, "/twinrl/tcp_pose", 5),
            "ver": node.create_publisher(PolicyVersion, "/twinrl/policy_version", 10)}
    actions, latencies = [], []
    node.create_subscription(Action, "/twinrl/action", lambda m: actions.append((time.monotonic(), m)), 50)
    node.create_subscription(Float64, "/twinrl/policy/latency_ms", lambda m: latencies.append(m.data), 50)
    wrist_img = {"img": wr}

    def image(arr, stamp):
        m = Image()
        m.header.stamp = stamp
        m.height, m.width = arr.shape[:2]
        m.encoding, m.step = "rgb8", arr.shape[1] * 3
        m.data = arr.tobytes()
        return m

    def publish_obs():
        stamp = node.get_clock().now().to_msg()
        pubs["tp"].publish(image(tp, stamp))
        pubs["wr"].publish(image(wrist_img["img"], stamp))
        js = JointState()
        js.header.stamp, js.name, js.position, js.velocity = stamp, JOINTS, qpos, qvel
        pubs["js"].publish(js)
        ps = PoseStamped()
        ps.header.stamp = stamp
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = tcp_p
        (ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z, ps.pose.orientation.w) = tcp_q
        pubs["tcp"].publish(ps)

    node.create_timer(0.05, publish_obs)  # 20 Hz sensors

    def vec(m):
        return np.array([m.delta_position.x, m.delta_position.y, m.delta_position.z, m.delta_rotation.x,
                         m.delta_rotation.y, m.delta_rotation.z, m.gripper])

    # 1. images in -> actions out at the control rate, equal to the policy's own output
    assert spin_until(ex, lambda: len(actions) >= 3, timeout=40), proc.output()
    t0, n0 = time.monotonic(), len(actions)
    spin_until(ex, lambda: False, timeout=3.0)
    rate = (len(actions) - n0) / (time.monotonic() - t0)
    print(f"\npolicy node: {rate:.1f} actions/s at control_rate 10 Hz")
    # Never faster than the control rate. How close it gets to 10 Hz is a speed figure for
    # bench/policy_latency.py: on a loaded 2-core CI host the node was seen at 4.3 Hz, so the
    # test asks only that it keeps acting.
    assert 2.0 <= rate <= 13.0, rate
    for _, m in actions:
        v = vec(m)
        assert np.all(np.isfinite(v)) and m.policy_version == "1" and m.source == Action.SOURCE_POLICY
        assert np.allclose(v, expected[1], atol=1e-5)
    assert [m.step for _, m in actions[:5]] == list(range(actions[0][1].step, actions[0][1].step + 5))
    assert latencies and all(0 < x < 1000 for x in latencies)

    # 2. a newer version hot-reloads
    pv = PolicyVersion(version=2, uri=str(tmp_path / "v2.ckpt"), sha256=sha2, task="pick_and_place", stage="sft")
    pubs["ver"].publish(pv)
    assert spin_until(ex, lambda: actions[-1][1].policy_version == "2", timeout=10), proc.output()
    spin_until(ex, lambda: False, timeout=0.5)
    assert np.allclose(vec(actions[-1][1]), expected[2], atol=1e-5)
    assert not np.allclose(expected[1], expected[2])

    # 3. a corrupt checkpoint (announced with the corrupt file's own digest) is rejected;
    #    the node keeps acting with version 2
    pubs["ver"].publish(PolicyVersion(version=3, uri=str(tmp_path / "v3.ckpt"),
                                      sha256=file_sha256(tmp_path / "v3.ckpt"), task="pick_and_place"))
    assert spin_until(ex, lambda: "policy reload failed" in proc.output(), timeout=10), proc.output()
    n1 = len(actions)
    spin_until(ex, lambda: False, timeout=1.5)
    assert len(actions) - n1 >= 5  # keeps acting (about 15 at 10 Hz; the bound allows a loaded CI machine)
    assert all(m.policy_version == "2" for _, m in actions[n1:])
    out = proc.output()
    assert "v3.ckpt: checksum mismatch" in out and "keeping version 2" in out

    # 4. wrong image size -> clear error, no action
    wrist_img["img"] = np.zeros((20, 20, 3), np.uint8)
    assert spin_until(ex, lambda: "wrist: image is 20x20" in proc.output(), timeout=10), proc.output()
    spin_until(ex, lambda: False, timeout=0.3)
    n2 = len(actions)
    spin_until(ex, lambda: False, timeout=1.5)
    assert len(actions) == n2, "actions published from a bad observation"
    assert proc.output().count("wrist: image is 20x20") <= 5  # rate-limited

    # 5. a policy that takes the commanded target: no action until the bridge's target arrives,
    #    then actions from (observation, target - TCP, gripper command)
    from twinrl_bringup.dataset import command_vector
    from twinrl_msgs.msg import CommandedTarget

    wrist_img["img"] = wr
    torch.manual_seed(4)
    save_checkpoint(tmp_path / "v4.ckpt", VisuomotorPolicy(
        tiny_model_config(tasks=["pick_and_place"], command_input=True)), version=4)
    target_p, target_q, grip = [0.52, 0.01, 0.27], [1.0, 0.0, 0.0, 0.0], 1.0
    cmd = command_vector(tcp_p, tcp_q, target_p, target_q, grip)
    expected4 = PolicyRunner(tmp_path / "v4.ckpt").act(tp, wr, proprio, command=cmd).action
    assert not np.allclose(expected4, PolicyRunner(tmp_path / "v4.ckpt").act(
        tp, wr, proprio, command=np.zeros(7)).action, atol=1e-5)      # the input matters
    pubs["ver"].publish(PolicyVersion(version=4, uri=str(tmp_path / "v4.ckpt"),
                                      sha256=file_sha256(tmp_path / "v4.ckpt"), task="pick_and_place"))
    assert spin_until(ex, lambda: "no commanded target on /twinrl/fr3_bridge/commanded_target"
                      in proc.output(), timeout=10), proc.output()
    n3 = len(actions)
    spin_until(ex, lambda: False, timeout=1.0)
    assert len(actions) == n3, "a command-input policy acted without the commanded target"
    pub_target = node.create_publisher(CommandedTarget, "/twinrl/fr3_bridge/commanded_target", 10)

    def publish_target():
        m = CommandedTarget()
        m.header.frame_id = "fr3_link0"
        m.pose.position.x, m.pose.position.y, m.pose.position.z = target_p
        (m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z,
         m.pose.orientation.w) = target_q
        m.gripper = grip
        pub_target.publish(m)

    node.create_timer(0.05, publish_target)
    assert spin_until(ex, lambda: len(actions) > n3 + 2, timeout=10), proc.output()[-3000:]
    assert all(m.policy_version == "4" for _, m in actions[n3:])
    assert np.allclose(vec(actions[-1][1]), expected4, atol=1e-5)
    assert proc.poll() is None, proc.output()[-3000:]
    ex.shutdown()
    node.destroy_node()


def test_policy_node_observation_bundle_and_nan_guard(spawn_node, rclpy_context, tmp_path):
    """Observation-bundle input; a policy whose output overflows to NaN publishes nothing (and
    says why) until a good version is announced."""
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.msg import Action, Observation, PolicyVersion
    import rclpy

    torch.manual_seed(0)
    bad = VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place"]))
    with torch.no_grad():  # finite but huge weights: inf - inf = NaN inside the trunk
        w = bad.trunk[0].weight
        w.copy_(torch.where(torch.arange(w.numel()).reshape(w.shape) % 2 == 0, 1e38, -1e38))
    save_checkpoint(tmp_path / "v1.ckpt", bad, version=1)
    sha2 = _save(tmp_path / "v2.ckpt", 1, 2)

    proc = spawn_node("twinrl_policy", "policy", parameters={
        "checkpoint": str(tmp_path / "v1.ckpt"), "use_observation_topic": True, "num_threads": 1,
        "deterministic": False})
    node = rclpy.create_node("policy_bundle_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    pub = node.create_publisher(Observation, "/twinrl/observation", 5)
    pub_ver = node.create_publisher(PolicyVersion, "/twinrl/policy_version", 10)
    actions = []
    node.create_subscription(Action, "/twinrl/action", actions.append, 50)
    rng = np.random.default_rng(1)
    step = {"k": 100}

    def publish():
        m = Observation()
        m.header.stamp = node.get_clock().now().to_msg()
        for img, (h, w) in ((m.third_person, (32, 32)), (m.wrist, (16, 16))):
            img.height, img.width, img.encoding, img.step = h, w, "rgb8", w * 3
            img.data = rng.integers(0, 255, h * w * 3, dtype=np.uint8).tobytes()
        m.proprioception.joint_positions = list(np.zeros(7))
        m.proprioception.joint_velocities = list(np.zeros(7))
        m.proprioception.tcp_pose.orientation.x = 1.0
        m.proprioception.gripper_width = 0.04
        m.task, m.step = "pick_and_place", step["k"]
        step["k"] += 1
        pub.publish(m)

    node.create_timer(0.1, publish)
    assert spin_until(ex, lambda: "non-finite action" in proc.output(), timeout=40), proc.output()
    spin_until(ex, lambda: False, timeout=1.0)
    assert actions == []
    pub_ver.publish(PolicyVersion(version=2, uri=str(tmp_path / "v2.ckpt"), sha256=sha2))
    assert spin_until(ex, lambda: len(actions) >= 5, timeout=15), proc.output()
    for m in actions:
        v = np.array([m.delta_position.x, m.delta_position.y, m.delta_position.z, m.gripper])
        assert np.all(np.isfinite(v)) and m.policy_version == "2" and m.step >= 100
    assert len({round(m.gripper, 6) for m in actions}) > 1  # stochastic mode samples
    assert proc.poll() is None, proc.output()[-3000:]
    ex.shutdown()
    node.destroy_node()
