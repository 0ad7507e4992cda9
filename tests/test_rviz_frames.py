"""frames node: markers (envelope, ID/OOD cells, success map) and frames (TF fallback)."""
import importlib.util
import time

import numpy as np
import pytest

from twinrl_bringup.frames import (build_markers, load_frames_config, load_grid, lookat_quaternion,
                                   static_frames, success_color)
from twinrl_bringup.safety import load_safety_config
from twinrl_bringup.transforms import quat_to_matrix


def test_lookat_optical_frame():
    q = lookat_quaternion([0, 0, 1], [1, 0, 1], [0, 0, 1])   # looking along +x, z up
    R = quat_to_matrix(q)
    assert np.allclose(R[:, 2], [1, 0, 0])       # optical z forward
    assert np.allclose(R[:, 0], [0, -1, 0])      # x right
    assert np.allclose(R[:, 1], [0, 0, -1])      # y down
    with pytest.raises(ValueError):
        lookat_quaternion([0, 0, 0], [0, 0, 1], [0, 0, 1])


def test_static_frames_sim_and_real():
    sim = {f.child: f for f in static_frames(load_frames_config())}
    assert {"fr3_hand", "third_person_optical_frame", "wrist_optical_frame"} <= set(sim)
    assert sim["third_person_optical_frame"].parent == "fr3_link0"
    assert sim["fr3_hand"].pose[2] == pytest.approx(-0.1034)
    real = {f.child: f for f in static_frames(load_frames_config("frames_real"))}
    assert "fr3_hand" not in real                 # robot_state_publisher owns the arm there
    assert set(real) == {"third_person_optical_frame", "wrist_optical_frame"}


def test_markers_content():
    from twinrl_msgs.msg import SuccessMap
    from visualization_msgs.msg import Marker

    s = load_safety_config()
    grid = load_grid("pick_and_place")
    sm = SuccessMap(task="pick_and_place", world="twin", rows=grid.rows, cols=grid.cols,
                    x_min=grid.x_range[0], x_max=grid.x_range[1], y_min=grid.y_range[0], y_max=grid.y_range[1])
    rates = np.linspace(0, 1, grid.rows * grid.cols).astype(np.float32)
    rates[0] = np.nan
    sm.success_rate = rates.tolist()
    from builtin_interfaces.msg import Time
    arr = build_markers("fr3_link0", Time(),
                        s.workspace.min, s.workspace.max, grid, sm)
    by_ns = {m.ns: m for m in arr.markers}
    box = by_ns["workspace_envelope"]
    assert box.type == Marker.LINE_LIST and len(box.points) == 24        # 12 edges
    xs = sorted({round(p.x, 6) for p in box.points})
    assert xs == [s.workspace.min[0], s.workspace.max[0]]
    n_id = int(grid.id_mask.sum())
    assert len(by_ns["id_region"].points) == n_id
    assert len(by_ns["ood_region"].points) == grid.rows * grid.cols - n_id
    smm = by_ns["success_map"]
    assert len(smm.points) == len(smm.colors) == grid.rows * grid.cols
    assert (smm.colors[0].r, smm.colors[0].g) == pytest.approx((0.5, 0.5))   # NaN: grey
    assert smm.colors[-1].g == pytest.approx(1.0) and smm.colors[-1].r == pytest.approx(0.0)
    assert success_color(0.0)[:2] == (1.0, 0.0)


@pytest.mark.ros
def test_frames_node_publishes_tf_fallback_and_markers(rclpy_context, spawn_node):
    import rclpy
    from geometry_msgs.msg import PoseStamped, TransformStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from visualization_msgs.msg import MarkerArray

    node = rclpy.create_node("frames_probe", context=rclpy_context)
    latched = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    markers, tf_static, tf = [], [], []
    node.create_subscription(MarkerArray, "/twinrl/markers", markers.append, latched)
    if importlib.util.find_spec("tf2_msgs") is not None:
        pytest.skip("tf2_msgs installed: the /twinrl/tf fallback is not used")
    node.create_subscription(TransformStamped, "/twinrl/tf_static", tf_static.append, latched)
    node.create_subscription(TransformStamped, "/twinrl/tf", tf.append, 10)
    pub_tcp = node.create_publisher(PoseStamped, "/twinrl/tcp_pose", 10)
    pub_align = node.create_publisher(PoseStamped, "/twinrl/twin/alignment", 10)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    proc = spawn_node("twinrl_bringup", "frames", parameters={"task": "pick_and_place"})
    tcp = PoseStamped()
    tcp.header.frame_id = "fr3_link0"
    tcp.pose.position.x, tcp.pose.position.z, tcp.pose.orientation.x = 0.5, 0.3, 1.0
    align = PoseStamped()
    align.pose.position.x, align.pose.orientation.w = 0.01, 1.0
    wanted = {"fr3_hand", "third_person_optical_frame", "wrist_optical_frame", "twin_world"}

    def done():
        return (markers and tf and wanted <= {t.child_frame_id for t in tf_static}
                and any(t.child_frame_id == "twin_world" and t.transform.translation.x > 0 for t in tf_static))

    # each alignment re-publishes every static frame: publish slowly and drain the
    # queue between, so no frame is dropped from the subscriber's history
    deadline = time.monotonic() + 20
    next_pub = 0.0
    while time.monotonic() < deadline and not done():
        if time.monotonic() >= next_pub:
            pub_tcp.publish(tcp)
            pub_align.publish(align)
            next_pub = time.monotonic() + 0.5
        ex.spin_once(timeout_sec=0.05)
    out = proc.output()
    assert "tf2_msgs is not installed" in out
    assert markers, out
    assert {m.ns for m in markers[-1].markers} >= {"workspace_envelope", "id_region", "ood_region"}
    children = {t.child_frame_id for t in tf_static}
    assert wanted <= children
    assert tf and tf[-1].child_frame_id == "fr3_hand_tcp" and tf[-1].transform.translation.x == pytest.approx(0.5)
    node.destroy_node()
