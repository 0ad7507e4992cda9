"""A twinrl_msgs action (goal, feedback, result) exchanged between two processes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import NodeProcess, spin_until

pytestmark = pytest.mark.ros
HELPER = Path(__file__).parent / "helpers" / "train_stage_server.py"


def test_goal_feedback_result_across_processes(ros_env, rclpy_context):
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.action import TrainStage

    server = NodeProcess([sys.executable, str(HELPER)], ros_env)
    node = rclpy.create_node("train_stage_client", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    try:
        client = ActionClient(node, TrainStage, "/twinrl/test/train_stage")
        assert spin_until(ex, client.server_is_ready, timeout=30), server.output()

        feedback = []
        goal = TrainStage.Goal(stage=TrainStage.Goal.STAGE_SFT, task="pick_and_place", steps=5,
                               output_uri="/tmp/policy.pt", alpha=0.5)
        fut = client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
        assert spin_until(ex, fut.done, timeout=15)
        handle = fut.result()
        assert handle.accepted
        rfut = handle.get_result_async()
        assert spin_until(ex, rfut.done, timeout=15)
        result = rfut.result().result
        assert result.ok and result.policy.version == 7 and result.policy.uri == "/tmp/policy.pt"
        assert result.message == "trained pick_and_place for 5 steps"
        assert [f.step for f in feedback] == [1, 2, 3, 4, 5]
        assert feedback[-1].loss == pytest.approx(result.final_loss)

        rejected = client.send_goal_async(TrainStage.Goal(task="x", steps=0))
        assert spin_until(ex, rejected.done, timeout=15)
        assert not rejected.result().accepted
    finally:
        ex.shutdown()
        node.destroy_node()
        server.kill_group()
    assert server.returncode is not None
