"""frames node: TCP / camera / twin-alignment frames and rviz markers.

Transforms go to ``/tf`` and ``/tf_static`` (tf2_msgs/TFMessage) where tf2_msgs is installed;
without it (ROS from PyPI) they are published as geometry_msgs/TransformStamped on
``/twinrl/tf`` and ``/twinrl/tf_static`` and a log line says so. Markers
(visualization_msgs/MarkerArray on ``/twinrl/markers``): the safety envelope, the task's ID
and OOD regions and the latest success map (``/twinrl/success_map``).
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile

    from geometry_msgs.msg import PoseStamped, TransformStamped
    from twinrl_msgs.msg import SuccessMap
    from visualization_msgs.msg import MarkerArray

    from twinrl_bringup.config import ConfigError
    from twinrl_bringup.frames import build_markers, load_frames_config, load_grid, static_frames
    from twinrl_bringup.safety import load_safety_config

    rclpy.init(args=argv)
    node = Node("frames")
    log = node.get_logger()
    config = node.declare_parameter("config", "frames").value
    task = node.declare_parameter("task", "pick_and_place").value
    camera_config = node.declare_parameter("camera_config", "").value
    try:
        overrides = []
        if camera_config:
            overrides.append(("camera_config", "" if camera_config == "none" else camera_config))
        cfg = load_frames_config(config, overrides)
        statics = static_frames(cfg)
        safety = load_safety_config()
        grid = load_grid(task)
    except (ConfigError, ValueError) as exc:
        return fail_start(node, str(exc), 1)

    latched = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    try:
        from tf2_msgs.msg import TFMessage

        pub_tf = node.create_publisher(TFMessage, "/tf", 100)
        pub_static = node.create_publisher(TFMessage, "/tf_static", latched)

        def send(transforms, static=False):
            (pub_static if static else pub_tf).publish(TFMessage(transforms=list(transforms)))

        log.info("frames: publishing /tf and /tf_static")
    except ImportError:
        pub_tf = node.create_publisher(TransformStamped, "/twinrl/tf", 100)
        pub_static = node.create_publisher(TransformStamped, "/twinrl/tf_static", latched)

        def send(transforms, static=False):
            for t in transforms:
                (pub_static if static else pub_tf).publish(t)

        log.warning("frames: tf2_msgs is not installed (not on PyPI): transforms go out as "
                    "geometry_msgs/TransformStamped on /twinrl/tf and /twinrl/tf_static instead of /tf")

    def transform(parent, child, pose7, stamp):
        t = TransformStamped()
        t.header.stamp = stamp
        t.header.frame_id = parent
        t.child_frame_id = child
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (
            float(v) for v in pose7[:3])
        (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
         t.transform.rotation.w) = (float(v) for v in pose7[3:])
        return t

    alignment = {"pose": tuple(cfg.twin_alignment)}

    def publish_static():
        stamp = node.get_clock().now().to_msg()
        ts = [transform(f.parent, f.child, f.pose, stamp) for f in statics]
        ts.append(transform(cfg.base_frame, cfg.twin_frame, alignment["pose"], stamp))
        send(ts, static=True)

    publish_static()
    log.info("frames: static " + ", ".join(f"{f.parent}->{f.child}" for f in statics)
             + f", {cfg.base_frame}->{cfg.twin_frame}")

    def on_tcp(msg):
        p, o = msg.pose.position, msg.pose.orientation
        send([transform(msg.header.frame_id or cfg.base_frame, cfg.tcp_frame,
                        (p.x, p.y, p.z, o.x, o.y, o.z, o.w), msg.header.stamp)])

    if cfg.publish_tcp:
        node.create_subscription(PoseStamped, cfg.tcp_topic, on_tcp, 10)

    def on_alignment(msg):
        p, o = msg.pose.position, msg.pose.orientation
        alignment["pose"] = (p.x, p.y, p.z, o.x, o.y, o.z, o.w)
        publish_static()

    node.create_subscription(PoseStamped, cfg.alignment_topic, on_alignment, 10)

    pub_markers = node.create_publisher(MarkerArray, cfg.markers_topic, latched)
    latest = {"map": None}

    def publish_markers():
        arr = build_markers(cfg.base_frame, node.get_clock().now().to_msg(), safety.workspace.min,
                            safety.workspace.max, grid, latest["map"])
        pub_markers.publish(arr)

    def on_map(msg):
        if msg.task and msg.task != task:
            return
        latest["map"] = msg
        publish_markers()

    node.create_subscription(SuccessMap, cfg.success_map_topic, on_map, 10)
    publish_markers()
    node.create_timer(1.0 / cfg.marker_rate, publish_markers)
    return spin_until_shutdown(node)


if __name__ == "__main__":
    sys.exit(main())
