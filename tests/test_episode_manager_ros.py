"""episode_manager node over ROS against an in-test bridge (a TCP point that follows the
actions), through the RunEpisode action: policy and expert controllers, recording,
interventions, the Episode summary, cancel, and a refused reset."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]

TESTS = str(Path(__file__).resolve().parent)
OBJECT = [0.5, 0.1, 0.25, 0.0, 0.0, 0.0, 1.0]


class ReachExpert:
    """Expert used by the node under test (loaded as test_episode_manager_ros:make_expert)."""

    def reset(self, configuration):
        self.configuration = configuration

    def act(self, obs, object_pose, configuration):
        if object_pose is None:
            return np.zeros(7)
        # half the remaining distance per step: converges even when the observation it acts on
        # predates its previous action (a loaded host), where a full step would oscillate
        d = np.clip(0.5 * (np.asarray(object_pose[:3]) - obs.tcp_position), -0.02, 0.02)
        return np.array([*d, 0.0, 0.0, 0.0, 1.0])


def make_expert(task):
    return ReachExpert()


TARGET_LEAD = np.array([0.0, 0.0, 0.05])


class FakeBridge:
    """Reset/set_mode services, joint states, TCP pose, images, task status and object pose at
    20 Hz; the TCP moves by each received action (a human one wins within a tick)."""

    def __init__(self, node, rate=20.0, refuse_reset=False):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState
        from twinrl_msgs.msg import Action, CommandedTarget, TaskStatus
        from twinrl_msgs.srv import ResetEpisode, SetControlMode

        self.node = node
        self.lock = threading.Lock()
        self.tcp = np.array([0.4, 0.0, 0.3])
        self.object = np.array(OBJECT[:3])
        self.pending = None
        self.modes = []
        self.resets = []
        self.refuse_reset = refuse_reset
        self.frame = 0
        self.pubs = {
            "js": node.create_publisher(JointState, "/joint_states", 10),
            "tcp": node.create_publisher(PoseStamped, "/twinrl/tcp_pose", 10),
            "tp": node.create_publisher(Image, "/twinrl/camera/third_person/image_raw", 5),
            "wr": node.create_publisher(Image, "/twinrl/camera/wrist/image_raw", 5),
            "st": node.create_publisher(TaskStatus, "/twinrl/task_status", 10),
            "obj": node.create_publisher(PoseStamped, "/twinrl/sim/object_pose", 10),
            "target": node.create_publisher(CommandedTarget, "/twinrl/fr3_bridge/commanded_target", 10),
        }
        self.CommandedTarget = CommandedTarget
        self.msgs = (PoseStamped, Image, JointState, TaskStatus)
        node.create_subscription(Action, "/twinrl/action", self.on_action, 10)
        node.create_service(ResetEpisode, "/twinrl/fr3_bridge/reset", self.on_reset)
        node.create_service(SetControlMode, "/twinrl/fr3_bridge/set_mode", self.on_mode)
        node.create_timer(1.0 / rate, self.tick)

    def on_action(self, msg):
        a = np.array([msg.delta_position.x, msg.delta_position.y, msg.delta_position.z])
        with self.lock:
            if self.pending is None or msg.intervention or not self.pending[1]:
                self.pending = (a, msg.intervention)

    def on_reset(self, req, resp):
        self.resets.append(req.configuration)
        if self.refuse_reset:
            resp.ok, resp.message = False, "e-stop latched: release it before a reset"
            return resp
        p = req.configuration.object_pose.position
        with self.lock:
            self.object = np.array([p.x, p.y, p.z])
            self.tcp = np.array([0.4, 0.0, 0.3])
            self.pending = None
        resp.ok, resp.message = True, "reset done"
        resp.applied = req.configuration
        resp.applied.seed = 4242
        return resp

    def on_mode(self, req, resp):
        self.modes.append(int(req.mode))
        resp.ok, resp.message = True, "ok"
        return resp

    def image(self, size, value):
        msg = self.msgs[1]()
        msg.height = msg.width = size
        msg.encoding = "rgb8"
        msg.step = size * 3
        msg.data = bytes([value % 256]) * (size * size * 3)
        return msg

    def tick(self):
        PoseStamped, Image, JointState, TaskStatus = self.msgs
        with self.lock:
            if self.pending is not None:
                self.tcp = self.tcp + self.pending[0]
                self.pending = None
            tcp, obj = self.tcp.copy(), self.object.copy()
        self.frame += 1
        js = JointState()
        js.name = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]
        js.position = [0.0] * 7 + [0.02, 0.02]
        js.velocity = [0.0] * 9
        self.pubs["js"].publish(js)
        for key, pos in (("tcp", tcp), ("obj", obj)):
            ps = PoseStamped()
            ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = (float(v) for v in pos)
            ps.pose.orientation.x = 1.0 if key == "tcp" else 0.0
            ps.pose.orientation.w = 0.0 if key == "tcp" else 1.0
            self.pubs[key].publish(ps)
        target = self.CommandedTarget()        # the commanded target: TARGET_LEAD above the TCP
        target.pose.position.x, target.pose.position.y, target.pose.position.z = (float(v) for v in tcp + TARGET_LEAD)
        target.pose.orientation.x, target.pose.orientation.w, target.gripper = 1.0, 0.0, -1.0
        self.pubs["target"].publish(target)
        ok = bool(np.linalg.norm(tcp - obj) < 0.005)
        st = TaskStatus()
        st.reward, st.success, st.done, st.source = float(ok), ok, ok, "sim_detector"
        self.pubs["st"].publish(st)
        self.pubs["wr"].publish(self.image(8, self.frame))
        self.pubs["tp"].publish(self.image(16, self.frame))


@pytest.fixture
def graph(rclpy_context):
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from twinrl_msgs.action import RunEpisode
    from twinrl_msgs.msg import Episode

    node = rclpy.create_node("episode_manager_test", context=rclpy_context)
    executor = MultiThreadedExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(node)
    episodes = []
    node.create_subscription(Episode, "/twinrl/episodes", episodes.append, 10)
    client = ActionClient(node, RunEpisode, "/twinrl/run_episode")
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, client, episodes
    executor.shutdown()
    node.destroy_node()
    thread.join(timeout=5)


def start_manager(spawn_node, tmp_path, ros_env, **params):
    parameters = {"dataset_dir": str(tmp_path / "data"), "expert": "test_episode_manager_ros:make_expert",
                  "local_sampler": "", "time_limit": "", "task": "reach"}
    parameters.update(params)
    env = {"PYTHONPATH": TESTS + ":" + ros_env.get("PYTHONPATH", "")}
    return spawn_node("twinrl_bringup", "episode_manager", parameters=parameters, env=env)


def make_goal(controller, record=True, max_steps=60):
    from twinrl_msgs.action import RunEpisode

    goal = RunEpisode.Goal()
    c = goal.configuration
    c.task = "reach"
    p = c.object_pose
    p.position.x, p.position.y, p.position.z = OBJECT[:3]
    p.orientation.w = 1.0
    c.target_pose.orientation.w = 1.0
    c.cell_row, c.cell_col, c.region = 1, 4, 1
    goal.controller = controller
    goal.record = record
    goal.max_steps = max_steps
    return goal


def wait(future, timeout):
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), "timed out"
    return future.result()


def run_goal(client, goal, proc, feedback=None, timeout=40.0):
    assert client.wait_for_server(timeout_sec=20), proc.output()
    handle = wait(client.send_goal_async(goal, feedback_callback=feedback), 10)
    assert handle.accepted
    return handle, wait(handle.get_result_async(), timeout)


def test_policy_episode_with_intervention_is_recorded(graph, spawn_node, tmp_path, ros_env):
    from twinrl_bringup.dataset import Dataset, SOURCE_INTERVENTION, SOURCE_REAL
    from sensor_msgs.msg import Image
    from twinrl_msgs.msg import Action

    node, client, episodes = graph
    bridge = FakeBridge(node)
    pub = node.create_publisher(Action, "/twinrl/action", 10)
    count = {"n": 0}

    def policy(_img):  # one action per observation: towards the object; a human helps twice
        if not bridge.resets:
            return
        count["n"] += 1
        with bridge.lock:
            d = np.clip(0.5 * (bridge.object - bridge.tcp), -0.01, 0.01)   # damped, as ReachExpert
        msg = Action()
        msg.delta_position.x, msg.delta_position.y, msg.delta_position.z = (float(v) for v in d)
        msg.gripper = -1.0
        msg.policy_version = "p5"
        if count["n"] in (3, 4):
            msg.source, msg.intervention = Action.SOURCE_HUMAN, True
        pub.publish(msg)

    node.create_subscription(Image, "/twinrl/camera/third_person/image_raw", policy, 5)
    proc = start_manager(spawn_node, tmp_path, ros_env)
    feedback = []
    _, res = run_goal(client, make_goal("policy"), proc, feedback=lambda f: feedback.append(f.feedback))
    r = res.result
    assert r.success and 0 < r.length < 60, (r.message, proc.output()[-3000:])
    assert r.configuration.seed == 4242 and r.configuration.cell_col == 4 and r.configuration.region == 1
    assert feedback and feedback[-1].step == r.length - 1 and feedback[-1].episode_return == pytest.approx(1.0)
    assert bridge.modes[0] == 0 and bridge.modes[-1] == 2      # policy mode for the episode, hold after

    data = Dataset(tmp_path / "data")
    assert len(data) == 1
    ep = data[0]
    assert ep.episode_id == r.episode_id and ep.length == r.length and ep.is_success
    assert ep.episode_source == SOURCE_REAL and ep.policy_version == "p5"
    assert ep.observations["third_person"].shape == (r.length + 1, 16, 16, 3)
    assert ep.observations["wrist"].shape == (r.length + 1, 8, 8, 3)
    assert np.allclose(ep.observations["proprio"][:, 21], 0.04)    # gripper width from the finger joints
    # the bridge's commanded target relative to the TCP (the TCP moves <= 1 cm between messages)
    cmd = ep.observations["command"]
    assert cmd.shape == (r.length + 1, 7) and np.all(cmd[:, 6] == -1.0)
    assert np.abs(cmd[:, :3] - TARGET_LEAD).max() <= 0.0101 and np.abs(cmd[:, 3:6]).max() < 1e-6
    assert 1 <= ep.num_interventions <= 2 and (ep.source[ep.intervention] == SOURCE_INTERVENTION).all()
    assert ep.initial_configuration["region"] == "ood" and ep.region == "ood"
    deadline = time.monotonic() + 5
    while not episodes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert episodes and episodes[0].episode_id == r.episode_id and episodes[0].success
    assert episodes[0].storage_uri.endswith(".npz") and episodes[0].num_interventions == ep.num_interventions


def test_expert_episode_uses_object_pose_then_cancel_and_refused_reset(graph, spawn_node, tmp_path, ros_env):
    from action_msgs.msg import GoalStatus
    from twinrl_bringup.dataset import Dataset, SOURCE_DEMO

    node, client, _ = graph
    bridge = FakeBridge(node)
    proc = start_manager(spawn_node, tmp_path, ros_env)
    _, res = run_goal(client, make_goal("expert"), proc)
    r = res.result
    assert r.success and r.length > 0, (r.message, proc.output()[-3000:])
    ep = Dataset(tmp_path / "data")[0]
    assert ep.episode_source == SOURCE_DEMO and (ep.source == SOURCE_DEMO).all()
    assert np.all(ep.actions[:, 6] == 1.0)

    # cancel: the object is out of the expert's reach within the limit; cancel after a few steps
    goal = make_goal("expert", record=False, max_steps=500)
    goal.configuration.object_pose.position.x = 5.0
    feedback = []
    assert client.wait_for_server(timeout_sec=5)
    handle = wait(client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f)), 10)
    deadline = time.monotonic() + 20
    while len(feedback) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    modes_before = len(bridge.modes)
    wait(handle.cancel_goal_async(), 10)
    res = wait(handle.get_result_async(), 20)
    assert res.status == GoalStatus.STATUS_CANCELED
    assert res.result.message == "cancelled" and res.result.length >= 3
    assert bridge.modes[modes_before:] and bridge.modes[-1] == 2

    bridge.refuse_reset = True
    _, res = run_goal(client, make_goal("expert"), proc)
    assert res.status == GoalStatus.STATUS_ABORTED
    assert "reset refused: e-stop latched" in res.result.message
    assert len(Dataset(tmp_path / "data")) == 1


def test_operator_success_label_between_detector_statuses_ends_the_episode(graph, spawn_node, tmp_path, ros_env):
    """A human label is one TaskStatus event among the detector's periodic ones: it must not be lost."""
    from twinrl_msgs.msg import TaskStatus

    node, client, _ = graph
    FakeBridge(node)               # keeps publishing success=false at 20 Hz
    labels = node.create_publisher(TaskStatus, "/twinrl/task_status", 10)
    proc = start_manager(spawn_node, tmp_path, ros_env)
    # the label is published once: it must not go out before the manager's subscription matched
    deadline = time.monotonic() + 30
    while labels.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert labels.get_subscription_count() >= 1, proc.output()[-2000:]
    feedback = []

    def on_feedback(f):
        feedback.append(f.feedback)
        if len(feedback) == 5:
            st = TaskStatus()
            st.reward, st.success, st.done, st.source = 1.0, True, True, "human_label"
            labels.publish(st)

    _, res = run_goal(client, make_goal("policy", record=False, max_steps=200), proc, feedback=on_feedback)
    r = res.result
    assert r.success and r.message == "success", (r.message, proc.output()[-2000:])
    # without the label the episode runs to its 200-step limit; a loaded host may deliver the
    # label a few control periods after it was sent
    assert 5 <= r.length <= 15 and r.episode_return == pytest.approx(1.0)
