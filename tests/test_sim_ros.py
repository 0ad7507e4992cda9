"""The sim world over ROS: ``twinrl up sim`` (fr3_bridge with backend sim + episode_manager),
one full scripted-expert episode through the RunEpisode action, recorded to a dataset."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(150)]

SMALL = """camera_overrides:
  third_person.width: 64
  third_person.height: 64
  wrist.width: 48
  wrist.height: 48
"""


def wait(future, timeout):
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), "timed out"
    return future.result()


def start_graph(ros_env, tmp_path):
    """``twinrl up sim`` with small camera images, in its own process group."""
    backend_config = tmp_path / "sim_backend.yaml"
    backend_config.write_text(SMALL)
    cmd = ["twinrl", "up", "sim", "--no-color", "--set", f"backend_config={backend_config}",
           "--set", f"dataset_dir={tmp_path / 'data'}", "--set", "seed=2"]
    log = open(tmp_path / "graph.log", "w")
    proc = subprocess.Popen(cmd, env=ros_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = tmp_path / "graph.log"
    return proc


def stop_graph(proc):
    for sig, t in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=t)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


def test_expert_episode_through_fr3_bridge_sim(rclpy_context, ros_env, tmp_path):
    import rclpy
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.action import RunEpisode
    from twinrl_msgs.msg import Episode
    from twinrl_bringup.dataset import Dataset, SOURCE_DEMO

    graph = start_graph(ros_env, tmp_path)

    node = rclpy.create_node("sim_ros_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    episodes, feedback = [], []
    node.create_subscription(Episode, "/twinrl/episodes", episodes.append, 10)
    client = ActionClient(node, RunEpisode, "/twinrl/run_episode")
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert client.wait_for_server(timeout_sec=40), graph.log_path.read_text()[-3000:]
        goal = RunEpisode.Goal()
        goal.sample_configuration = True
        goal.sample_strategy = 2                      # STRATEGY_CELL
        goal.configuration.task = "pick_and_place"
        goal.configuration.cell_row, goal.configuration.cell_col = 1, 2
        goal.configuration.seed = 17
        goal.controller = "expert"
        goal.record = True
        t0 = time.monotonic()
        handle = wait(client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)), 30)
        assert handle.accepted
        res = wait(handle.get_result_async(), 100)
        wall = time.monotonic() - t0
        r = res.result
        logs = "\n--- twinrl up sim ---\n" + graph.log_path.read_text()[-4000:]
        assert res.status == GoalStatus.STATUS_SUCCEEDED, r.message + logs
        assert r.success and r.length > 0, r.message + logs
        assert r.episode_return > 0
        assert (r.configuration.cell_row, r.configuration.cell_col) == (1, 2) and r.configuration.seed == 17
        assert feedback and feedback[-1].step == r.length - 1
        print(f"sim expert episode: {r.length} steps, {wall:.1f} s wall")

        data = Dataset(tmp_path / "data")
        assert len(data) == 1
        ep = data[0]
        assert ep.episode_id == r.episode_id and ep.length == r.length and ep.is_success
        assert ep.episode_source == SOURCE_DEMO and (ep.source == SOURCE_DEMO).all()
        assert ep.observations["third_person"].shape == (r.length + 1, 64, 64, 3)
        assert ep.observations["wrist"].shape == (r.length + 1, 48, 48, 3)
        # the arm moved: the recorded TCP heights span the approach, grasp and lift
        z = ep.observations["proprio"][:, 16]
        width = ep.observations["proprio"][:, 21]   # gripper width, from fr3_bridge's finger joints
        assert width.max() > 0.03 and width.min() < width.max() - 0.01, "gripper width not recorded"
        assert z.max() - z.min() > 0.05
        # the gripper closed at some point and the object ended near the plate
        assert (ep.actions[:, 6] > 0.5).any() and (ep.actions[:, 6] < -0.5).any()
        deadline = time.monotonic() + 5
        while not episodes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert episodes and episodes[0].success and episodes[0].storage_uri == str(data.path(0))
    finally:
        executor.shutdown()
        node.destroy_node()
        thread.join(timeout=5)
        rc = stop_graph(graph)
    assert rc == 0, graph.log_path.read_text()[-3000:]     # every node shut down cleanly
