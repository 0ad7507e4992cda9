"""``twinrl episode run``: run episodes on a live graph through the RunEpisode action.

The command-line counterpart of ``ros2 action send_goal /twinrl/run_episode ...`` for installs
without the ``ros2`` CLI (PyPI wheels): it samples (or takes) a reset configuration, lets the
episode manager run the expert or the policy, prints feedback and the outcome, and stops the
episode cleanly (cancel) on Ctrl-C.
"""
from __future__ import annotations

import json
import os
import sys
import time

ACTION_NAME = "/twinrl/run_episode"


def _goal(args, index: int):
    from twinrl_msgs.action import RunEpisode
    from twinrl_msgs.msg import ResetConfiguration
    from twinrl_msgs.srv import SampleResetConfiguration

    goal = RunEpisode.Goal()
    goal.controller = args.controller
    goal.max_steps = args.max_steps
    goal.record = args.record
    goal.configuration.task = args.task or ""
    goal.configuration.region = ResetConfiguration.REGION_OOD if args.region == "ood" else ResetConfiguration.REGION_ID
    goal.configuration.seed = 0 if args.seed is None else args.seed + index
    if args.cell is not None:
        goal.sample_configuration = True
        goal.sample_strategy = SampleResetConfiguration.Request.STRATEGY_CELL
        goal.configuration.cell_row, goal.configuration.cell_col = args.cell
    else:
        goal.sample_configuration = True
        goal.sample_strategy = (SampleResetConfiguration.Request.STRATEGY_TARGETED if args.targeted
                                else SampleResetConfiguration.Request.STRATEGY_UNIFORM)
    return goal


def run_episodes(args) -> int:
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.action import RunEpisode

    rclpy.init()
    node = rclpy.create_node(f"twinrl_episode_client_{os.getpid()}")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    client = ActionClient(node, RunEpisode, ACTION_NAME)
    results = []
    current = {"handle": None}

    def spin_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            ex.spin_once(timeout_sec=0.05)
        return pred()

    try:
        if not spin_until(client.server_is_ready, args.wait):
            print(f"twinrl episode: no RunEpisode server on {ACTION_NAME} after {args.wait:g} s "
                  f"(is a graph running? try: twinrl up sim)", file=sys.stderr)
            return 2
        for i in range(args.count):
            last_fb = {"step": 0}

            def on_feedback(msg):
                last_fb["step"] = msg.feedback.step
                if not args.json and msg.feedback.step % 10 == 0:
                    print(f"  step {msg.feedback.step:4d}  return {msg.feedback.episode_return:6.2f}"
                          f"{'  [intervention]' if msg.feedback.intervention else ''}", flush=True)

            fut = client.send_goal_async(_goal(args, i), feedback_callback=on_feedback)
            if not spin_until(fut.done, 30.0) or not fut.result().accepted:
                print("twinrl episode: goal rejected (another episode running?)", file=sys.stderr)
                return 1
            current["handle"] = fut.result()
            rfut = current["handle"].get_result_async()
            if not spin_until(rfut.done, args.timeout):
                current["handle"].cancel_goal_async()
                spin_until(lambda: False, 2.0)
                print(f"twinrl episode: no result after {args.timeout:g} s; cancelled", file=sys.stderr)
                return 1
            res = rfut.result().result
            c = res.configuration
            row = {"episode": i, "success": bool(res.success), "length": int(res.length),
                   "return": float(res.episode_return), "episode_id": res.episode_id, "message": res.message,
                   "cell": [int(c.cell_row), int(c.cell_col)], "region": "ood" if c.region == 1 else "id"}
            results.append(row)
            if not args.json:
                print(f"episode {i}: {'SUCCESS' if row['success'] else 'failure'} in {row['length']} steps, "
                      f"return {row['return']:.2f}, cell {tuple(row['cell'])} ({row['region']})"
                      f"{', ' + row['message'] if row['message'] else ''}", flush=True)
    except KeyboardInterrupt:
        if current["handle"] is not None:
            current["handle"].cancel_goal_async()
            spin_until(lambda: False, 1.0)
        return 130
    finally:
        ex.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    n_ok = sum(r["success"] for r in results)
    summary = {"episodes": len(results), "successes": n_ok,
               "success_rate": n_ok / len(results) if results else 0.0, "results": results}
    print(json.dumps(summary) if args.json else f"{n_ok}/{len(results)} episodes succeeded")
    return 0


def _cell(text: str) -> tuple[int, int]:
    try:
        r, c = (int(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--cell expects ROW,COL, got {text!r}") from exc
    return r, c


def register(subparsers) -> None:
    p = subparsers.add_parser("episode", help="run episodes on a running graph (RunEpisode action client)")
    sub = p.add_subparsers(dest="episode_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="run N episodes through /twinrl/run_episode")
    r.add_argument("--controller", choices=["expert", "policy"], default="policy")
    r.add_argument("--count", type=int, default=1)
    r.add_argument("--task", default=None, help="task name (default: the graph's task)")
    r.add_argument("--region", choices=["id", "ood"], default="id", help="region to sample the start from")
    r.add_argument("--cell", type=_cell, default=None, metavar="ROW,COL", help="sample inside this grid cell")
    r.add_argument("--targeted", action="store_true", help="ask guidance for a failure-prone start (S_target)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--max-steps", type=int, default=0, help="0: the task's time limit")
    r.add_argument("--record", action="store_true", help="write the episodes to the graph's dataset")
    r.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the action server")
    r.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one episode")
    r.add_argument("--json", action="store_true", help="one JSON summary line")
    r.set_defaults(func=run_episodes)
