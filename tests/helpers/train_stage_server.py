"""A TrainStage action server in its own process, for the cross-process action test.

Accepts goals with steps > 0, publishes one feedback per step (loss 1/(step+1)), and returns
the final loss; rejects goals with steps == 0.
"""
import sys
import time

import rclpy
from rclpy.action import ActionServer, GoalResponse
from rclpy.executors import ExternalShutdownException
from twinrl_msgs.action import TrainStage


def main():
    rclpy.init()
    node = rclpy.create_node("train_stage_server")

    def on_goal(goal):
        return GoalResponse.ACCEPT if goal.steps > 0 else GoalResponse.REJECT

    def execute(handle):
        fb = TrainStage.Feedback()
        for i in range(handle.request.steps):
            fb.step, fb.total_steps, fb.loss = i + 1, handle.request.steps, 1.0 / (i + 2)
            fb.success_rate = float("nan")
            handle.publish_feedback(fb)
            time.sleep(0.05)
        handle.succeed()
        res = TrainStage.Result()
        res.ok, res.final_loss = True, fb.loss
        res.message = f"trained {handle.request.task} for {handle.request.steps} steps"
        res.policy.version = 7
        res.policy.uri = handle.request.output_uri
        res.policy.stage = "sft"
        return res

    ActionServer(node, TrainStage, "/twinrl/test/train_stage", execute, goal_callback=on_goal)
    print("ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
