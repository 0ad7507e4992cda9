"""The twin node's GenerateDemonstrations action: feedback per demo, the result's counts and
rejections, a bad seed demo aborts naming the file, an unknown method is refused."""
from __future__ import annotations

import time

import pytest

from test_demogen_generate import record_seed

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]


def _wait(ex, fut, timeout):
    deadline = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.1)
    assert fut.done(), "no answer from the twin node"
    return fut.result()


def test_generate_demonstrations_action(tiny_twins, rclpy_context, spawn_node, tmp_path):
    import rclpy
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.action import GenerateDemonstrations

    from twinrl_bringup.dataset import SOURCE_TWIN, Dataset

    twin = tiny_twins("pick_and_place")
    seed = record_seed("pick_and_place", tmp_path / "seed")
    proc = spawn_node("twinrl_twin", "twin", parameters={"twin_dir": str(twin), "rate": 1.0})
    node = rclpy.create_node("demo_client", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    client = ActionClient(node, GenerateDemonstrations, "/twinrl/twin/generate_demonstrations")
    try:
        assert client.wait_for_server(timeout_sec=60), proc.output()[-3000:]
        goal = GenerateDemonstrations.Goal()
        goal.task, goal.seed_demo_uri, goal.n_id, goal.n_ood = "pick_and_place", str(seed), 1, 2
        goal.method, goal.workers, goal.output_dir, goal.seed = "affine", 1, str(tmp_path / "out"), 4
        feedback = []
        handle = _wait(ex, client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)), 20)
        assert handle.accepted
        res = _wait(ex, handle.get_result_async(), 240)
        r = res.result
        assert res.status == GoalStatus.STATUS_SUCCEEDED and r.ok, (r.message, proc.output()[-3000:])
        assert r.generated >= 2 and r.output_dir == str(tmp_path / "out")
        assert len(r.rejection_reasons) == len(r.rejection_counts) and sum(r.rejection_counts) == r.rejected
        assert feedback and feedback[-1].total == 3 and feedback[-1].generated == r.generated
        d = Dataset(tmp_path / "out")
        assert len(d) == r.generated and all(e["episode_source"] == "twin" for e in d.entries)
        assert Dataset(tmp_path / "out")[0].source[0] == SOURCE_TWIN

        goal.seed_demo_uri = str(tmp_path / "nope.npz")
        handle = _wait(ex, client.send_goal_async(goal), 20)
        res = _wait(ex, handle.get_result_async(), 60)
        assert res.status == GoalStatus.STATUS_ABORTED and "nope.npz" in res.result.message

        goal.method = "teleport"
        handle = _wait(ex, client.send_goal_async(goal), 20)
        assert not handle.accepted
        assert proc.poll() is None, proc.output()[-2000:]
    finally:
        client.destroy()
        ex.remove_node(node)
        node.destroy_node()
        ex.shutdown()
