"""policy node: synchronised observations in, twinrl_msgs/Action out at the control rate.

Thin shell over :mod:`twinrl_policy.inference` and :mod:`twinrl_policy.sync`.

Subscribes (best-effort QoS, compatible with reliable publishers too):
``/twinrl/camera/third_person/image_raw`` and ``/twinrl/camera/wrist/image_raw``
(sensor_msgs/Image, rgb8), ``/joint_states`` (sensor_msgs/JointState) and
``/twinrl/tcp_pose`` (geometry_msgs/PoseStamped), matched by approximate time; or, with
``use_observation_topic``, a twinrl_msgs/Observation bundle on ``/twinrl/observation``.
``/twinrl/policy_version`` (twinrl_msgs/PolicyVersion): reload when the version is newer and
the file's sha256 matches; on failure the node logs why and keeps its weights.
``/twinrl/fr3_bridge/commanded_target`` (twinrl_msgs/CommandedTarget, parameter
``command_topic``): the target the bridge applies actions to, for policies that take it
(``model.command_input``); without a fresh one (``max_observation_age``) they publish nothing.

Publishes ``/twinrl/action`` (twinrl_msgs/Action) at ``control_rate`` from the newest
observation (none when it is older than ``max_observation_age``, invalid, or the output is
not finite; errors are logged at most every ``error_log_period`` seconds) and
``/twinrl/policy/latency_ms`` (std_msgs/Float64) per inference.

Parameters: checkpoint (path, required), task ("" = the checkpoint's only task),
control_rate (10.0 Hz), deterministic (true), num_threads (1), seed (0), sync_slop (0.05 s),
max_observation_age (0.5 s), use_observation_topic (false), error_log_period (2.0 s),
base_frame (fr3_link0), command_topic (/twinrl/fr3_bridge/commanded_target).
"""
from __future__ import annotations

import sys
import threading
import time


def main(argv=None) -> int:
    import rclpy

    from twinrl_bringup.nodes import fail_start, spin_until_shutdown
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64
    from twinrl_bringup.dataset import command_vector
    from twinrl_bringup.executor import OffloadExecutor
    from twinrl_msgs.msg import Action, CommandedTarget, Observation, PolicyVersion

    from twinrl_policy.checkpoint import CheckpointError
    from twinrl_policy.inference import (ErrorThrottle, NonFiniteActionError, ObservationError, PolicyRunner,
                                         ReloadError, decode_image, proprio_from_joint_state)
    from twinrl_policy.sync import ApproximateTimeSync

    rclpy.init(args=argv)
    node = Node("policy")
    log = node.get_logger()
    p = lambda name, default: node.declare_parameter(name, default).value  # noqa: E731
    checkpoint = str(p("checkpoint", ""))
    task = str(p("task", ""))
    control_rate = float(p("control_rate", 10.0))
    deterministic = bool(p("deterministic", True))
    num_threads = int(p("num_threads", 1))
    seed = int(p("seed", 0))
    slop = float(p("sync_slop", 0.05))
    max_age = float(p("max_observation_age", 0.5))
    use_obs_topic = bool(p("use_observation_topic", False))
    throttle = ErrorThrottle(float(p("error_log_period", 2.0)))
    base_frame = str(p("base_frame", "fr3_link0"))
    command_topic = str(p("command_topic", "/twinrl/fr3_bridge/commanded_target"))

    def fail(msg: str) -> int:
        return fail_start(node, msg, 2)

    if not checkpoint:
        return fail("parameter 'checkpoint' is required (path of a policy checkpoint)")
    try:
        runner = PolicyRunner(checkpoint, task=task or None, deterministic=deterministic,
                              num_threads=num_threads, seed=seed)
    except (CheckpointError, ValueError) as exc:
        return fail(f"cannot start: {exc}")
    log.info(f"loaded policy version {runner.version} from {checkpoint} (task {runner.task}, "
             f"{'deterministic' if deterministic else 'stochastic'}, {control_rate:g} Hz)")

    def throttled(level: str, key: str, msg: str) -> None:
        n = throttle(key)
        if n is None:
            return
        text = msg + (f" ({n} similar messages suppressed)" if n else "")
        # rclpy ties one severity to each call site: one call per level
        if level == "error":
            log.error(text)
        elif level == "warning":
            log.warning(text)
        else:
            log.info(text)

    latest = {"obs": None, "recv": 0.0}
    lock = threading.Lock()
    sensors = MutuallyExclusiveCallbackGroup()

    def stamp_of(msg) -> float:
        s = msg.header.stamp
        t = s.sec + s.nanosec * 1e-9
        return t if t > 0 else time.time()

    if use_obs_topic:
        def on_observation(msg):
            with lock:
                latest["obs"], latest["recv"] = ("bundle", msg), time.monotonic()
        node.create_subscription(Observation, "/twinrl/observation", on_observation, 5, callback_group=sensors)
    else:
        def on_match(match):
            with lock:
                latest["obs"], latest["recv"] = ("topics", {k: v[1] for k, v in match.items()}), time.monotonic()
        sync = ApproximateTimeSync(["third_person", "wrist", "joint_states", "tcp_pose"], slop, 10, on_match)
        sensor_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        for name, mtype, topic in (("third_person", Image, "/twinrl/camera/third_person/image_raw"),
                                   ("wrist", Image, "/twinrl/camera/wrist/image_raw"),
                                   ("joint_states", JointState, "/joint_states"),
                                   ("tcp_pose", PoseStamped, "/twinrl/tcp_pose")):
            node.create_subscription(mtype, topic, lambda m, n=name: sync.add(n, stamp_of(m), m), sensor_qos,
                                     callback_group=sensors)

    target = {"msg": None, "recv": 0.0}

    def on_target(msg):
        with lock:
            target["msg"], target["recv"] = msg, time.monotonic()

    node.create_subscription(CommandedTarget, command_topic, on_target, 10, callback_group=sensors)

    def latest_command(proprio):
        """The bridge's commanded target relative to the measured TCP, or None (logged) when no
        fresh one has arrived."""
        with lock:
            msg, recv = target["msg"], target["recv"]
        if msg is None or time.monotonic() - recv > max_age:
            what = "no" if msg is None else f"a {time.monotonic() - recv:.2f} s old"
            throttled("warning", "command", f"{what} commanded target on {command_topic}: this policy "
                                            "takes it as an input (model.command_input), no action")
            return None
        o, q = msg.pose.position, msg.pose.orientation
        return command_vector(proprio[14:17], proprio[17:21], [o.x, o.y, o.z], [q.x, q.y, q.z, q.w],
                              msg.gripper)

    pub_action = node.create_publisher(Action, "/twinrl/action", 10)
    pub_latency = node.create_publisher(Float64, "/twinrl/policy/latency_ms", 10)
    counter = {"step": 0}

    def image(name, msg):
        return decode_image(name, msg.height, msg.width, msg.encoding, msg.step, msg.data, runner.image_size(name))

    def unpack(kind, obs):
        if kind == "bundle":
            pr = obs.proprioception
            o, q = pr.tcp_pose.position, pr.tcp_pose.orientation
            proprio = proprio_from_joint_state([], list(pr.joint_positions), list(pr.joint_velocities),
                                               [o.x, o.y, o.z], [q.x, q.y, q.z, q.w], pr.gripper_width)
            return (image("third_person", obs.third_person), image("wrist", obs.wrist), proprio,
                    obs.task or None, int(obs.step))
        js, tcp = obs["joint_states"], obs["tcp_pose"].pose
        o, q = tcp.position, tcp.orientation
        proprio = proprio_from_joint_state(list(js.name), list(js.position), list(js.velocity),
                                           [o.x, o.y, o.z], [q.x, q.y, q.z, q.w])
        return image("third_person", obs["third_person"]), image("wrist", obs["wrist"]), proprio, None, None

    def on_timer():
        with lock:
            item, recv = latest["obs"], latest["recv"]
        if item is None:
            throttled("info", "waiting", "waiting for observations")
            return
        age = time.monotonic() - recv
        if age > max_age:
            throttled("warning", "stale", f"newest observation is {age:.2f} s old (> {max_age} s): no action")
            runner.reset()      # a chunking policy's plans are stale too
            return
        try:
            tp, wr, proprio, obs_task, step = unpack(*item)
            command = None
            if runner.needs_command:
                command = latest_command(proprio)
                if command is None:
                    return
            result = runner.act(tp, wr, proprio, task=obs_task, command=command, step=step)
        except ObservationError as exc:
            throttled("error", "observation", f"bad observation, no action: {exc}")
            return
        except NonFiniteActionError as exc:
            throttled("error", "nonfinite", f"no action published: {exc}")
            return
        msg = Action()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = base_frame
        a = [float(v) for v in result.action]
        msg.delta_position.x, msg.delta_position.y, msg.delta_position.z = a[0:3]
        msg.delta_rotation.x, msg.delta_rotation.y, msg.delta_rotation.z = a[3:6]
        msg.gripper = a[6]
        msg.source = Action.SOURCE_POLICY
        msg.intervention = False
        msg.policy_version = str(result.version)
        msg.step = int(step) if step is not None else counter["step"]
        counter["step"] += 1
        pub_action.publish(msg)
        pub_latency.publish(Float64(data=float(result.latency_ms)))

    node.create_timer(1.0 / control_rate, on_timer, callback_group=MutuallyExclusiveCallbackGroup())

    def on_version(msg):
        if msg.task and msg.task != runner.task:
            log.info(f"ignoring policy version {msg.version} for task {msg.task!r} (this node runs {runner.task!r})")
            return
        if msg.version <= runner.version:
            log.info(f"ignoring policy version {msg.version}: not newer than the current version {runner.version}")
            return
        try:
            runner.reload(msg.uri, msg.version, msg.sha256)
        except ReloadError as exc:
            log.error(f"policy reload failed: {exc}")
            return
        log.info(f"reloaded policy version {runner.version} from {msg.uri} (stage {msg.stage or '?'})")

    reload_group = MutuallyExclusiveCallbackGroup()
    node.create_subscription(PolicyVersion, "/twinrl/policy_version", on_version, 10,
                             callback_group=reload_group)

    # A reload (file read, checksum, model build) runs on a worker thread and the node keeps
    # acting with the old weights meanwhile; sensors and inference run on the spinning thread.
    executor = OffloadExecutor(offload=[reload_group])
    executor.add_node(node)
    return spin_until_shutdown(node, executor)


if __name__ == "__main__":
    sys.exit(main())
