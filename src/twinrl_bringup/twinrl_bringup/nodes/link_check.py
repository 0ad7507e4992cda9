"""Link check: ``ping`` and ``pong`` nodes measure twinrl_msgs round trips over DDS.

Use them to check a multi-machine setup (actor and learner in one ROS domain) before a run:
``twinrl up link_check`` on one machine, or ``ping`` here and ``pong`` there. ``ping``
publishes twinrl_msgs/Action on ``ping`` (sequence number in ``step``, send time in the
header), ``pong`` echoes each message on ``pong``, and ``ping`` reports round-trip latency.

Parameters (ping): ``rate_hz`` (> 0), ``count`` (messages to send, 0 = forever; ping exits
0 once that many replies arrived or ``timeout_s`` passed, 1 when replies were missing).
"""
from __future__ import annotations

import sys
import time

import numpy as np


def _params(node, spec: dict):
    for name, default in spec.items():
        node.declare_parameter(name, default)
    return {name: node.get_parameter(name).value for name in spec}


def ping_main(args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from twinrl_msgs.msg import Action

    rclpy.init(args=args)
    node = rclpy.create_node("ping")
    rc = 0
    try:
        p = _params(node, {"rate_hz": 10.0, "count": 0, "timeout_s": 30.0})
        if not p["rate_hz"] > 0:
            raise ValueError(f"parameter rate_hz must be > 0, got {p['rate_hz']}")
        if p["count"] < 0:
            raise ValueError(f"parameter count must be >= 0, got {p['count']}")
        pub = node.create_publisher(Action, "ping", 10)
        rtts: dict[int, float] = {}
        sent: dict[int, float] = {}
        state = {"seq": 0, "t0": time.monotonic()}

        def on_pong(msg: Action) -> None:
            if msg.step in sent and msg.step not in rtts:
                rtts[msg.step] = time.monotonic() - sent[msg.step]

        sub = node.create_subscription(Action, "pong", on_pong, 10)
        pong_topic = sub.topic_name
        node.get_logger().info(f"sending on {pub.topic_name} at {p['rate_hz']:g} Hz, "
                               f"expecting echoes on {pong_topic}")

        def tick() -> None:
            if p["count"] and state["seq"] >= p["count"]:
                return
            # Send only once the echo path is matched both ways, so that no message is
            # lost to discovery (the default QoS is reliable once matched).
            if pub.get_subscription_count() == 0 or node.count_publishers(pong_topic) == 0:
                return
            msg = Action()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = "fr3_link0"
            msg.source = Action.SOURCE_SCRIPTED
            msg.step = state["seq"]
            sent[state["seq"]] = time.monotonic()
            pub.publish(msg)
            state["seq"] += 1

        node.create_timer(1.0 / p["rate_hz"], tick)
        last_report = time.monotonic()
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
            now = time.monotonic()
            if now - last_report > 2.0 and rtts:
                v = np.array(list(rtts.values())) * 1e3
                node.get_logger().info(f"{len(rtts)}/{state['seq']} replies, rtt p50 {np.percentile(v, 50):.2f} ms "
                                       f"p99 {np.percentile(v, 99):.2f} ms")
                last_report = now
            if p["count"] and len(rtts) >= p["count"]:
                v = np.array(list(rtts.values())) * 1e3
                node.get_logger().info(f"done: {len(rtts)} replies, rtt p50 {np.percentile(v, 50):.2f} ms")
                break
            if p["count"] and now - state["t0"] > p["timeout_s"]:
                node.get_logger().error(f"timeout: {len(rtts)} of {p['count']} replies after {p['timeout_s']} s")
                rc = 1
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        node.get_logger().fatal(str(exc))
        rc = 1
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return rc


def pong_main(args=None) -> int:
    import rclpy
    from twinrl_msgs.msg import Action

    from twinrl_bringup.nodes import spin_until_shutdown

    rclpy.init(args=args)
    node = rclpy.create_node("pong")
    pub = node.create_publisher(Action, "pong", 10)
    node.create_subscription(Action, "ping", pub.publish, 10)
    node.get_logger().info("echoing ping -> pong")
    return spin_until_shutdown(node)


if __name__ == "__main__":
    sys.exit(ping_main())
