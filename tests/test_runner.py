"""`twinrl up`: starts a graph's nodes, they exchange twinrl_msgs, it stops cleanly; crashes fail it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ros


def _twinrl(*args):
    return [sys.executable, "-m", "twinrl_bringup.cli", *args]


def _descendants(pid: int) -> set[int]:
    """PIDs of all live processes whose ancestry includes ``pid`` or that share its session."""
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            state, ppid = fields[0], int(fields[1])
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add((int(d), ppid))
    children = {pid}
    changed = True
    while changed:
        changed = False
        for p, pp in out:
            if pp in children and p not in children:
                children.add(p)
                changed = True
    children.discard(pid)
    return children


def _alive(pids) -> set[int]:
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return alive


def test_up_runs_graph_messages_flow_and_stops_clean(ros_env, rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from twinrl_msgs.msg import Action

    from conftest import spin_until

    proc = subprocess.Popen(_twinrl("up", "link_check", "--no-color", "--set", "rate_hz=20"),
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    node = rclpy.create_node("runner_test_listener", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    got = []
    node.create_subscription(Action, "/twinrl/link_check/pong", got.append, 10)
    try:
        assert spin_until(ex, lambda: len(got) >= 3, timeout=30), "no twinrl_msgs/Action arrived from the graph"
        assert all(m.source == Action.SOURCE_SCRIPTED for m in got)
        assert got[-1].step > got[0].step
        children = _descendants(proc.pid)
        assert len(children) >= 2, f"expected two node processes, found {children}"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        ex.shutdown()
        node.destroy_node()
    assert proc.returncode == 0, out
    assert "[twinrl/link_check/ping]" in out and "[twinrl/link_check/pong]" in out
    time.sleep(0.5)
    assert not _alive(children), f"leftover processes after stop: {_alive(children)}"


def test_crashing_node_makes_up_fail(ros_env):
    t0 = time.monotonic()
    res = subprocess.run(_twinrl("up", "link_check", "--no-color", "--set", "rate_hz=-1.0"), env=ros_env,
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rate_hz must be > 0" in res.stdout
    assert "FAILED: twinrl/link_check/ping" in res.stdout
    assert time.monotonic() - t0 < 60


def test_required_node_exit_stops_graph(ros_env):
    res = subprocess.run(_twinrl("up", "link_check", "--no-color", "--set", "count=5"), env=ros_env,
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout
    assert "required node twinrl/link_check/ping exited" in res.stdout
    assert "done: 5 replies" in res.stdout


def test_missing_executable_starts_nothing(ros_env, tmp_path):
    g = tmp_path / "bad.yaml"
    g.write_text("description: x\nnodes:\n  - {name: a, package: twinrl_bringup, executable: pong}\n"
                 "  - {name: b, package: realsense2_camera, executable: realsense2_camera_node}\n")
    res = subprocess.run(_twinrl("up", str(g), "--no-color"), env=ros_env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "realsense2_camera" in res.stdout and "started" not in res.stdout


def test_bad_override_is_an_error(ros_env):
    res = subprocess.run(_twinrl("up", "link_check", "--set", "nope=1"), env=ros_env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "nope" in res.stderr


def test_runner_killed_leaves_no_orphans(ros_env):
    proc = subprocess.Popen(_twinrl("up", "link_check", "--no-color"), env=ros_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=False)
    deadline = time.monotonic() + 30
    children = set()
    while time.monotonic() < deadline:
        children = {p for p in _descendants(proc.pid)}
        if len(children) >= 2:
            break
        time.sleep(0.2)
    assert len(children) >= 2
    time.sleep(1.0)
    children = _descendants(proc.pid)
    proc.kill()  # SIGKILL: the runner gets no chance to clean up
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(children):
        time.sleep(0.2)
    left = _alive(children)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "node processes outlived a killed runner"
