"""fr3_bridge node: the only node that commands the arm (thin shell over bridge.core).

Subscribes ``/twinrl/action`` (twinrl_msgs/Action) and ``/twinrl/estop`` (std_msgs/Bool,
true latches, false releases); serves ``/twinrl/fr3_bridge/reset`` (ResetEpisode),
``/twinrl/fr3_bridge/set_mode`` (SetControlMode) and ``/twinrl/estop`` (std_srvs/SetBool).
Publishes ``/joint_states`` (unless the robot driver does), ``/twinrl/tcp_pose``,
``/twinrl/fr3_bridge/status`` (BridgeStatus), ``/diagnostics``,
``/twinrl/fr3_bridge/applied_action`` (the delta actually executed, with the intervention
flag), ``/twinrl/fr3_bridge/commanded_target`` (CommandedTarget: the target actions apply to,
each loop tick and after each applied action), the backend's camera images and ``/twinrl/task_status`` / ``/twinrl/sim/object_pose``
where the backend detects them.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time

import numpy as np


def _declare(node, name, default):
    return node.declare_parameter(name, default).value


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node

    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import Bool
    from twinrl_msgs.msg import Action, BridgeStatus, CommandedTarget, TaskStatus
    from twinrl_msgs.srv import ResetEpisode, SetControlMode

    from twinrl_bringup.bridge import core as bc
    from twinrl_bringup.bridge.registry import BackendError, create_backend
    from twinrl_bringup.bridge.rosconv import (
        action_from_msg, configuration_from_msg, configuration_to_msg, fill_pose, image_msg,
        camera_info_msg, executed_delta)
    from twinrl_bringup.executor import OffloadExecutor
    from twinrl_bringup.safety import SafetyEnvelope, load_safety_config

    rclpy.init(args=argv)
    node = Node("fr3_bridge")
    log = node.get_logger()
    backend_name = _declare(node, "backend", "sim")
    task = _declare(node, "task", "pick_and_place")
    backend_config = _declare(node, "backend_config", "")
    # dotted key=value overrides of the backend's config file, ";"-separated
    # (real: "target_topic=/target_frame;wrench_topic=/ft"); passed to backends that take them
    backend_options = _declare(node, "backend_options", "")
    safety_config = _declare(node, "safety_config", "")
    loop_rate = float(_declare(node, "loop_rate", 50.0))
    camera_rate = float(_declare(node, "camera_rate", 10.0))
    status_rate = float(_declare(node, "status_rate", 5.0))
    publish_joint_states = bool(_declare(node, "publish_joint_states", True))
    human_override_s = float(_declare(node, "human_override_s", 0.3))
    seed = int(_declare(node, "seed", 0))
    base_frame = _declare(node, "base_frame", "fr3_link0")
    # SCHED_FIFO priority of the control-loop thread (0: normal scheduling)
    rt_priority = int(_declare(node, "rt_priority", 20))
    # finger joint names published with /joint_states (gripper width / 2 each); "" to omit
    finger_joints = [n for n in str(_declare(node, "finger_joints", "fr3_finger_joint1,fr3_finger_joint2")).split(",")
                     if n.strip()]

    # Exactly one bridge may command an arm: a second one in the same ROS domain (a graph
    # started twice, a forgotten session) would interleave targets. Look for another bridge's
    # status publisher before touching the backend.
    unique_check_s = float(_declare(node, "unique_check_s", 1.5))
    deadline = time.monotonic() + unique_check_s
    while time.monotonic() < deadline:
        if node.count_publishers("/twinrl/fr3_bridge/status") > 0:
            return fail_start(node, "another fr3_bridge is already running in ROS domain "
                              f"{os.environ.get('ROS_DOMAIN_ID', '0')} (it publishes /twinrl/fr3_bridge/status); "
                              "two bridges would command one arm. Stop it, or use another ROS_DOMAIN_ID.", 1)
        rclpy.spin_once(node, timeout_sec=0.1)

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    try:
        envelope = SafetyEnvelope(load_safety_config(safety_config or None))
        options = [o.strip() for o in str(backend_options).split(";") if o.strip()]
        backend = create_backend(backend_name, node=node, task=task, config=backend_config or None,
                                 envelope=envelope, seed=seed, overrides=options)
        bridge = bc.BridgeCore(backend, envelope, human_override_s=human_override_s)
        bridge.tick_period = 1.0 / loop_rate
        bridge.start()
    except (BackendError, RuntimeError, ValueError, ImportError) as exc:
        return fail_start(node, f"fr3_bridge cannot start backend {backend_name!r}: {exc}", 1)
    log.info(f"fr3_bridge: backend {backend_name}, task {task}, loop {loop_rate:.0f} Hz, "
             f"watchdog {envelope.cfg.watchdog_timeout * 1000:.0f} ms")

    pub_joints = node.create_publisher(JointState, "/joint_states", 10) if publish_joint_states else None
    pub_tcp = node.create_publisher(PoseStamped, "/twinrl/tcp_pose", 10)
    pub_status = node.create_publisher(BridgeStatus, "/twinrl/fr3_bridge/status", 10)
    pub_diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    pub_applied = node.create_publisher(Action, "/twinrl/fr3_bridge/applied_action", 10)
    pub_target = node.create_publisher(CommandedTarget, "/twinrl/fr3_bridge/commanded_target", 10)

    def publish_target(target, stamp=None):
        if target is None:
            return
        m = CommandedTarget()
        m.header.stamp = stamp or node.get_clock().now().to_msg()
        m.header.frame_id = base_frame
        fill_pose(m.pose, target.position, target.quaternion)
        m.gripper = float(target.gripper)
        pub_target.publish(m)
    pub_task = node.create_publisher(TaskStatus, "/twinrl/task_status", 10)
    pub_obj = node.create_publisher(PoseStamped, "/twinrl/sim/object_pose", 10)
    cam_pubs: dict = {}

    def on_action(msg):
        a7 = action_from_msg(msg)
        prev = bridge.target
        prev_p = None if prev is None else np.array(prev.position)
        prev_q = None if prev is None else np.array(prev.quaternion)
        d = bridge.on_action(a7, source=int(msg.source), intervention=bool(msg.intervention))
        if d.accepted and d.target is not None and prev_p is not None:
            out = Action()
            out.header.stamp = node.get_clock().now().to_msg()
            out.header.frame_id = base_frame
            dp, drot = executed_delta(prev_p, prev_q, d.target.position, d.target.quaternion)
            out.delta_position.x, out.delta_position.y, out.delta_position.z = (float(v) for v in dp)
            out.delta_rotation.x, out.delta_rotation.y, out.delta_rotation.z = (float(v) for v in drot)
            out.gripper = float(d.target.gripper)
            out.source = msg.source
            out.intervention = bool(d.intervention)
            out.policy_version = msg.policy_version
            out.step = msg.step
            pub_applied.publish(out)
        if d.accepted:
            publish_target(d.target)

    node.create_subscription(Action, "/twinrl/action", on_action, 100)
    node.create_subscription(Bool, "/twinrl/estop", lambda m: log.warning(bridge.set_estop(bool(m.data))), 10)

    def on_set_mode(req, resp):
        ok, message, prev = bridge.set_mode(int(req.mode))
        resp.ok, resp.message, resp.previous_mode = ok, message, prev
        log.info(message)
        return resp

    node.create_service(SetControlMode, "/twinrl/fr3_bridge/set_mode", on_set_mode)

    try:
        from std_srvs.srv import SetBool

        def on_estop_srv(req, resp):
            resp.message = bridge.set_estop(bool(req.data))
            resp.success = True
            log.warning(resp.message)
            return resp

        node.create_service(SetBool, "/twinrl/estop", on_estop_srv)
    except ImportError:
        log.warning("std_srvs is not installed: e-stop only on the /twinrl/estop topic (no service)")

    reset_group = MutuallyExclusiveCallbackGroup()

    def on_reset(req, resp):
        conf = configuration_from_msg(req.configuration)
        if not conf.get("task"):
            conf["task"] = task
        ok, message, applied = bridge.reset(conf)
        resp.ok, resp.message = ok, message
        resp.applied = configuration_to_msg(applied, req.configuration)
        (log.info if ok else log.error)(f"reset: {message}")
        return resp

    node.create_service(ResetEpisode, "/twinrl/fr3_bridge/reset", on_reset, callback_group=reset_group)

    def on_loop():
        state = bridge.tick()
        if state is None:
            return
        stamp = node.get_clock().now().to_msg()
        if pub_joints is not None:
            js = JointState()
            js.header.stamp = stamp
            names = list(state.joint_names)
            position = [float(v) for v in state.joint_positions]
            velocity = [float(v) for v in state.joint_velocities]
            if finger_joints and math.isfinite(state.gripper_width):
                # FR3 hand: two prismatic fingers, each opened by half the width
                names += finger_joints
                position += [float(state.gripper_width) / 2.0] * len(finger_joints)
                velocity += [0.0] * len(finger_joints)
            js.name, js.position, js.velocity = names, position, velocity
            pub_joints.publish(js)
        tcp = PoseStamped()
        tcp.header.stamp = stamp
        tcp.header.frame_id = base_frame
        fill_pose(tcp.pose, state.tcp_position, state.tcp_quaternion)
        pub_tcp.publish(tcp)
        publish_target(bridge.target, stamp)

    # The control loop (watchdog, force check, backend tick) runs in a thread of its own on
    # absolute deadlines, so it never waits behind executor callbacks.
    loop_stop = threading.Event()

    def loop_thread():
        # The watchdog deadline is a safety guarantee: ask for real-time scheduling of this
        # thread (as a control loop on a robot PC runs), so a busy host cannot delay the hold.
        if rt_priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
                log.info(f"control loop: SCHED_FIFO priority {rt_priority}")
            except (OSError, AttributeError) as exc:
                log.warning(f"control loop: no real-time scheduling ({exc}); the watchdog deadline "
                            "can slip when the host is busy (grant CAP_SYS_NICE / rtprio to fix)")
        period = 1.0 / loop_rate
        next_t = time.monotonic()
        while not loop_stop.is_set() and rclpy.ok():
            try:
                on_loop()
            except Exception as exc:  # keep the watchdog alive whatever a backend does
                log.error(f"control loop: {exc}", throttle_duration_sec=5.0)
                with bridge.lock:
                    if not bridge.holding:
                        bridge.holding = True
                        try:
                            backend.hold()
                        except Exception:
                            pass
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:          # fell far behind: resynchronise instead of bursting
                next_t = time.monotonic()
                loop_stop.wait(0.001)    # never spin: this thread may run with real-time priority
                continue
            # Sleep until the next period, or until the watchdog deadline if that comes first;
            # a deadline wake-up only runs the watchdog check (no backend step).
            while delay > 0 and not loop_stop.is_set():
                deadline = bridge.watchdog_deadline()
                until_deadline = None if deadline is None else deadline - bridge.clock()
                if until_deadline is not None and until_deadline < delay:
                    if until_deadline > 0:
                        loop_stop.wait(until_deadline + 0.0005)
                    try:
                        bridge.check_watchdog()
                    except Exception as exc:
                        log.error(f"watchdog check: {exc}", throttle_duration_sec=5.0)
                else:
                    loop_stop.wait(delay)
                delay = next_t - time.monotonic()

    loop_worker = threading.Thread(target=loop_thread, name="fr3_bridge_loop", daemon=True)
    loop_worker.start()

    def on_world():
        ws = backend.world_status()
        if ws is None:
            return
        stamp = node.get_clock().now().to_msg()
        ts = TaskStatus()
        ts.header.stamp = stamp
        ts.task = task
        ts.reward, ts.success, ts.done = float(ws.reward), bool(ws.success), bool(ws.done)
        ts.source = "sim_detector"
        pub_task.publish(ts)
        pose7 = ws.extra.get("object_pose") if isinstance(ws.extra, dict) else None
        if pose7 is not None and len(pose7) == 7:
            ps = PoseStamped()
            ps.header.stamp = stamp
            ps.header.frame_id = base_frame
            fill_pose(ps.pose, pose7[:3], pose7[3:])
            pub_obj.publish(ps)

    node.create_timer(envelope.cfg.control_period, on_world)

    def on_cameras():
        for frame in backend.cameras():
            pubs = cam_pubs.get(frame.name)
            if pubs is None:
                base = f"/twinrl/camera/{frame.name}"
                pubs = (node.create_publisher(Image, f"{base}/image_raw", 5),
                        node.create_publisher(CameraInfo, f"{base}/camera_info", 5))
                cam_pubs[frame.name] = pubs
            stamp = node.get_clock().now().to_msg()
            pubs[0].publish(image_msg(frame, stamp))
            pubs[1].publish(camera_info_msg(frame, stamp))

    camera_group = MutuallyExclusiveCallbackGroup()
    if camera_rate > 0:
        node.create_timer(1.0 / camera_rate, on_cameras, callback_group=camera_group)

    def on_status():
        s = bridge.status()
        st = BridgeStatus()
        st.header.stamp = node.get_clock().now().to_msg()
        st.backend = s["backend"]
        st.mode = s["mode"]
        st.estop = s["estop"]
        st.holding = s["holding"]
        st.commands_received = s["commands_received"]
        st.commands_rejected = s["commands_rejected"]
        st.commands_clipped = s["commands_clipped"]
        st.last_rejection = s["last_rejection"]
        pub_status.publish(st)
        diag = DiagnosticArray()
        diag.header.stamp = st.header.stamp
        ds = DiagnosticStatus()
        ds.name = "fr3_bridge: safety"
        ds.hardware_id = s["backend"]
        if s["estop"] or s["force_stopped"]:
            ds.level, ds.message = DiagnosticStatus.ERROR, "e-stop" if s["estop"] else "force stop"
        elif s["commands_rejected"]:
            ds.level, ds.message = DiagnosticStatus.WARN, f"{s['commands_rejected']} commands rejected"
        else:
            ds.level, ds.message = DiagnosticStatus.OK, "holding" if s["holding"] else "tracking"
        values = {k: v for k, v in s.items() if k != "reasons"}
        values.update({f"rejected.{k}": v for k, v in s["reasons"].items()})
        ds.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        diag.status = [ds]
        pub_diag.publish(diag)

    node.create_timer(1.0 / status_rate, on_status)

    def on_shutdown():
        loop_stop.set()
        loop_worker.join(timeout=2.0)
        try:
            backend.stop()
        except Exception as exc:  # stopping must not mask the shutdown
            log.error(f"backend stop failed: {exc}")

    # The reset (seconds) and the camera renders run on worker threads of their own; status,
    # actions and robot state run on the spinning thread, which a thread pool per callback
    # would keep busy enough to delay the control loop (see twinrl_bringup.executor).
    executor = OffloadExecutor(offload=[reset_group, camera_group])
    executor.add_node(node)
    return spin_until_shutdown(node, executor, on_shutdown=on_shutdown)


if __name__ == "__main__":
    sys.exit(main())
