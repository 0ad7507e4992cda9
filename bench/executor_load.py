#!/usr/bin/env python3
"""Executor load: what spinning a robot-state stream costs the rest of a node's process.

fr3_bridge's real backend subscribes to the arm's joint states, TCP pose and wrench (franka_ros2
publishes them at hundreds of Hz), and its control loop (the watchdog) runs on a thread of the
same process. This bench publishes those three topics at ``--rate`` Hz each from one process,
and in another spins a node that subscribes to them (plus a 50 Hz timer, as the status timer)
with each executor in turn, beside a 50 Hz loop thread like the bridge's control loop:

* ``multi``: rclpy's MultiThreadedExecutor (3 threads, as fr3_bridge used), the peer;
* ``single``: rclpy's SingleThreadedExecutor;
* ``offload``: twinrl_bringup.executor.OffloadExecutor (fr3_bridge's now; single-threaded for
  these callbacks, worker threads only for the groups it is given).

Printed per executor: messages delivered per second (of those published), the process CPU
share, and how late the loop thread wakes (p50 / p99 / max; the bridge's watchdog hold is
late by as much). Ratios are against ``multi``.

    python bench/executor_load.py [--rate 100] [--seconds 6] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

KINDS = ("multi", "single", "offload")
TOPICS = ("/bench/joint_states", "/bench/pose", "/bench/wrench")


def _types():
    from geometry_msgs.msg import PoseStamped, WrenchStamped
    from sensor_msgs.msg import JointState

    return (JointState, PoseStamped, WrenchStamped)


def publish(rate: float, seconds: float) -> None:
    import rclpy

    rclpy.init()
    node = rclpy.create_node("executor_load_pub")
    types = _types()
    js_t, pose_t, wr_t = types
    pubs = [node.create_publisher(t, name, 10) for t, name in zip(types, TOPICS)]
    msgs = [js_t(name=[f"fr3_joint{i}" for i in range(1, 8)], position=[0.0] * 7, velocity=[0.0] * 7),
            pose_t(), wr_t()]
    period, t_next = 1.0 / rate, time.monotonic()
    t_end = t_next + seconds
    while time.monotonic() < t_end:
        for p, m in zip(pubs, msgs):
            p.publish(m)
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    node.destroy_node()
    rclpy.shutdown()


def subscribe(kind: str, seconds: float, warmup: float) -> dict:
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

    rclpy.init()
    node = rclpy.create_node("executor_load_sub")
    count = [0]

    def on_msg(_msg):
        count[0] += 1

    for t, name in zip(_types(), TOPICS):
        node.create_subscription(t, name, on_msg, 10)
    node.create_timer(0.02, lambda: None)
    slow = MutuallyExclusiveCallbackGroup()   # a service-like group that is idle here
    node.create_timer(3600.0, lambda: None, callback_group=slow)
    if kind == "multi":
        from rclpy.executors import MultiThreadedExecutor
        executor = MultiThreadedExecutor(num_threads=3)
    elif kind == "single":
        from rclpy.executors import SingleThreadedExecutor
        executor = SingleThreadedExecutor()
    else:
        from twinrl_bringup.executor import OffloadExecutor
        executor = OffloadExecutor(offload=[slow])
    executor.add_node(node)
    late: list[float] = []
    measuring = threading.Event()
    stop = threading.Event()

    def loop():
        t_next = time.monotonic()
        while not stop.is_set():
            t_next += 0.02
            delay = t_next - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            if measuring.is_set():
                late.append(time.monotonic() - t_next)

    threading.Thread(target=loop, daemon=True).start()
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    time.sleep(warmup)
    n0, c0, t0 = count[0], time.process_time(), time.monotonic()
    measuring.set()
    time.sleep(seconds)
    measuring.clear()
    wall = time.monotonic() - t0
    out = {"kind": kind, "msgs_per_s": (count[0] - n0) / wall,
           "cpu_pct": 100.0 * (time.process_time() - c0) / wall}
    lat = np.asarray(late) * 1000.0
    out.update(late_p50_ms=float(np.percentile(lat, 50)), late_p99_ms=float(np.percentile(lat, 99)),
               late_max_ms=float(lat.max()))
    stop.set()
    print(json.dumps(out), flush=True)
    os._exit(0)   # the multi-threaded executor's pool may hold the interpreter open


def run_kind(kind: str, rate: float, seconds: float, env: dict) -> dict:
    warmup = 1.5
    pub = subprocess.Popen([sys.executable, __file__, "--role", "pub", "--rate", str(rate),
                            "--seconds", str(seconds + warmup + 3.0)], env=env)
    try:
        out = subprocess.run([sys.executable, __file__, "--role", "sub", "--kind", kind,
                              "--seconds", str(seconds), "--warmup", str(warmup)],
                             env=env, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"{kind}: subscriber failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        pub.kill()
        pub.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="Hz per robot-state topic (3 topics)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per executor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--role", choices=["main", "pub", "sub"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=KINDS, default="offload", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=float, default=1.5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        ap.error(f"--rate and --seconds must be positive (got {args.rate}, {args.seconds})")
    if args.role == "pub":
        publish(args.rate, args.seconds)
        return 0
    if args.role == "sub":
        subscribe(args.kind, args.seconds, args.warmup)
        return 0
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 101 + 1))   # 1..101: valid for every RMW
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rows = [run_kind(k, args.rate, args.seconds, env) for k in tqdm(KINDS, desc="executors")]
    if args.json:
        print(json.dumps({"rate_hz_per_topic": args.rate, "published_per_s": 3 * args.rate, "rows": rows}))
        return 0
    ref = rows[0]
    print(f"\n3 topics x {args.rate:.0f} Hz ({3 * args.rate:.0f} msgs/s published), 50 Hz loop thread, "
          f"{args.seconds:.0f} s each")
    print(f"{'executor':<9} {'msgs/s':>7} {'CPU %':>6} {'loop late p50':>14} {'p99':>8} {'max':>8}"
          f" {'CPU vs multi':>13} {'max late vs multi':>18}")
    for r in rows:
        print(f"{r['kind']:<9} {r['msgs_per_s']:7.0f} {r['cpu_pct']:6.0f} {r['late_p50_ms']:11.1f} ms"
              f" {r['late_p99_ms']:5.1f} ms {r['late_max_ms']:5.1f} ms"
              f" {r['cpu_pct'] / max(ref['cpu_pct'], 1e-9):12.2f}x"
              f" {r['late_max_ms'] / max(ref['late_max_ms'], 1e-9):17.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
