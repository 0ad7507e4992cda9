"""intervention node: SpaceMouse (spacenav topics or pyspacemouse) -> human actions and labels.

Publishes human actions (twinrl_msgs/Action, source HUMAN, intervention=true) on
``/twinrl/action`` while the operator moves the device, and operator labels as
twinrl_msgs/TaskStatus on ``/twinrl/task_status`` (source ``human_label``): success button
(reward 1, success, done), abort chord (aborted, done), optional failure button (done).
Follows the commanded gripper on ``/twinrl/action`` so a takeover keeps the grasp.
"""
from __future__ import annotations

import sys
import threading
import time


def _pyspacemouse_reader(state, lock, stop, log):
    try:
        import pyspacemouse
    except ImportError:
        log.fatal("input 'pyspacemouse' selected but the pyspacemouse package is not installed "
                  "(pip install pyspacemouse) - no human input")
        return
    if not pyspacemouse.open():
        log.fatal("pyspacemouse: no SpaceMouse device found (check USB and hidapi permissions)")
        return
    while not stop.is_set():
        s = pyspacemouse.read()
        if s is not None:
            with lock:
                state.append((time.monotonic(), (s.x, s.y, s.z), (s.roll, s.pitch, s.yaw), list(s.buttons)))
        time.sleep(0.005)


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.node import Node

    from geometry_msgs.msg import Twist
    from sensor_msgs.msg import Joy
    from twinrl_msgs.msg import Action, TaskStatus

    from twinrl_bringup.bridge.rosconv import action_to_msg
    from twinrl_bringup.config import ConfigError
    from twinrl_bringup.intervention import Intervention, load_intervention_config

    rclpy.init(args=argv)
    node = Node("intervention")
    log = node.get_logger()
    config = node.declare_parameter("config", "intervention").value
    task = node.declare_parameter("task", "").value
    input_override = node.declare_parameter("input", "").value
    try:
        overrides = [("input", input_override)] if input_override else []
        cfg = load_intervention_config(config, overrides)
    except ConfigError as exc:
        return fail_start(node, str(exc), 1)
    cfg.task = task or cfg.task
    iv = Intervention(cfg)
    lock = threading.Lock()
    pub_action = node.create_publisher(Action, cfg.action_topic, 10)
    pub_status = node.create_publisher(TaskStatus, cfg.task_status_topic, 10)
    counters = {"human_steps": 0, "labels": 0}

    def publish_label(event):
        ts = TaskStatus()
        ts.header.stamp = node.get_clock().now().to_msg()
        ts.task = cfg.task
        ts.source = "human_label"
        if event == "success":
            ts.reward, ts.success, ts.done = 1.0, True, True
        elif event == "abort":
            ts.done, ts.aborted = True, True
        elif event == "failure":
            ts.done = True
        else:
            return
        pub_status.publish(ts)
        counters["labels"] += 1
        log.info(f"operator label: {event}")

    def on_twist(msg):
        with lock:
            iv.on_twist((msg.linear.x, msg.linear.y, msg.linear.z),
                        (msg.angular.x, msg.angular.y, msg.angular.z), time.monotonic())

    def on_joy(msg):
        with lock:
            event = iv.on_buttons(list(msg.buttons), time.monotonic())
        if event == "gripper_toggle":
            log.info(f"operator: gripper -> {'close' if iv.gripper > 0 else 'open'}")
        elif event:
            publish_label(event)

    def on_commanded(msg):
        if msg.source != Action.SOURCE_HUMAN and not msg.intervention:
            with lock:
                iv.on_commanded_gripper(float(msg.gripper))

    stop = threading.Event()
    if cfg.input == "spacenav":
        node.create_subscription(Twist, cfg.twist_topic, on_twist, 10)
        node.create_subscription(Joy, cfg.joy_topic, on_joy, 10)
        log.info(f"intervention: reading {cfg.twist_topic} and {cfg.joy_topic}")
        readings = None
    else:
        readings = []
        threading.Thread(target=_pyspacemouse_reader, args=(readings, lock, stop, log), daemon=True).start()
        log.info("intervention: reading the SpaceMouse through pyspacemouse")
    node.create_subscription(Action, cfg.action_topic, on_commanded, 10)

    step = [0]

    def on_tick():
        now = time.monotonic()
        events = []
        with lock:
            if readings:
                for t, lin, ang, buttons in readings:
                    iv.on_twist(lin, ang, t)
                    ev = iv.on_buttons(buttons, t)
                    if ev:
                        events.append(ev)
                readings.clear()
            cmd = iv.step(now)
        for ev in events:
            publish_label(ev)
        if cmd is None:
            return
        msg = action_to_msg(cmd.action)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "fr3_link0"
        msg.source = Action.SOURCE_HUMAN
        msg.intervention = True
        msg.step = step[0]
        step[0] += 1
        pub_action.publish(msg)
        counters["human_steps"] += 1

    node.create_timer(1.0 / cfg.rate, on_tick)
    return spin_until_shutdown(node, on_shutdown=stop.set)


if __name__ == "__main__":
    sys.exit(main())
