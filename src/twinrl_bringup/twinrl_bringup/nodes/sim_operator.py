"""sim_operator node: plays a scripted SpaceMouse operator on /spacenav/twist and /spacenav/joy."""
from __future__ import annotations

import sys
import time


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.node import Node

    from geometry_msgs.msg import Twist
    from sensor_msgs.msg import Joy

    from twinrl_bringup.config import ConfigError
    from twinrl_bringup.operator_script import load_script

    rclpy.init(args=argv)
    node = Node("sim_operator")
    log = node.get_logger()
    script_name = node.declare_parameter("script", "idle").value
    rate = float(node.declare_parameter("rate", 50.0).value)
    loop = bool(node.declare_parameter("loop", False).value)
    start_delay = float(node.declare_parameter("start_delay", 0.0).value)
    twist_topic = node.declare_parameter("twist_topic", "/spacenav/twist").value
    joy_topic = node.declare_parameter("joy_topic", "/spacenav/joy").value
    try:
        script = load_script(script_name)
    except (ConfigError, ValueError) as exc:
        return fail_start(node, str(exc), 1)
    pub_twist = node.create_publisher(Twist, twist_topic, 10)
    pub_joy = node.create_publisher(Joy, joy_topic, 10)
    t0 = time.monotonic() + start_delay
    done = [False]
    log.info(f"sim_operator: script {script_name!r} ({script.duration:.1f} s, loop={loop}) "
             f"on {twist_topic}, {joy_topic}")

    def on_tick():
        t = time.monotonic() - t0
        if t < 0:
            lin, ang, buttons, finished = (0.0,) * 3, (0.0,) * 3, [0] * script.n_buttons, False
        else:
            lin, ang, buttons, finished = script.sample(t, loop)
        if finished and not done[0]:
            done[0] = True
            log.info("sim_operator: script finished; device released")
        tw = Twist()
        tw.linear.x, tw.linear.y, tw.linear.z = (float(v) for v in lin)
        tw.angular.x, tw.angular.y, tw.angular.z = (float(v) for v in ang)
        pub_twist.publish(tw)
        joy = Joy()
        joy.header.stamp = node.get_clock().now().to_msg()
        joy.header.frame_id = "spacenav"
        joy.axes = [float(v) for v in (*lin, *ang)]
        joy.buttons = [int(b) for b in buttons]
        pub_joy.publish(joy)

    node.create_timer(1.0 / rate, on_tick)
    return spin_until_shutdown(node)


if __name__ == "__main__":
    sys.exit(main())
