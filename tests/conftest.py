"""Shared fixtures: ROS environment for subprocesses, rclpy contexts, node processes.

Every ROS test runs in the domain chosen by scripts/test.sh (unique per run, loopback only);
processes started here are killed with their whole process group at teardown.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

if "ROS_DOMAIN_ID" not in os.environ:  # pytest run by hand: still isolate the run
    os.environ["ROS_DOMAIN_ID"] = str(os.getpid() % 101 + 1)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: starts ROS 2 nodes or processes")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def ros_env() -> dict:
    """Environment for node subprocesses: the workspace env, same ROS domain, unbuffered."""
    from twinrl_bringup.workspace import workspace_env

    env = workspace_env(dict(os.environ))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return env


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context of its own, shut down at teardown."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


class NodeProcess(subprocess.Popen):
    """A node started in its own process group; output collected in the background."""

    def __init__(self, cmd, env):
        super().__init__(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True, bufsize=1)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.stdout:
            self._lines.append(line)

    def output(self) -> str:
        return "".join(self._lines)

    def kill_group(self, timeout: float = 5.0) -> None:
        if self.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # anything left in the group (children of the node)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reader.join(timeout=2)


def executable_path(package: str, executable: str, env: dict) -> str:
    from twinrl_bringup.graph import find_executable

    return find_executable(package, executable, env)


@pytest.fixture
def spawn_node(ros_env, tmp_path):
    """spawn_node(package, executable, name=, namespace=, parameters={}, remappings={}) -> NodeProcess."""
    procs: list[NodeProcess] = []

    def _spawn(package, executable, name=None, namespace=None, parameters=None, remappings=None,
               extra_args=(), env=None):
        cmd = [executable_path(package, executable, ros_env), "--ros-args"]
        if name:
            cmd += ["-r", f"__node:={name}"]
        if namespace:
            cmd += ["-r", f"__ns:={'/' + namespace.strip('/')}"]
        if parameters:
            pfile = Path(tempfile.mkstemp(suffix=".yaml", dir=tmp_path)[1])
            pfile.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
            cmd += ["--params-file", str(pfile)]
        for src, dst in (remappings or {}).items():
            cmd += ["-r", f"{src}:={dst}"]
        cmd += list(extra_args)
        p = NodeProcess(cmd, {**ros_env, **(env or {})})
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        p.kill_group()


def spin_until(executor, predicate, timeout: float, step: float = 0.05) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return predicate()


@pytest.fixture
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def tiny_twins(tmp_path_factory):
    """task -> directory of a twin built from an 8-frame simulated scan of that task, built on
    first use and shared by the whole run. Ground-truth alignment stands in for
    twinrl_twin.alignment here (alignment has its own tests and benchmark)."""
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.scan_sim import simulate_scan
    from twinrl_twin.twin_assets import build_twin

    root = tmp_path_factory.mktemp("tiny_twins")
    built: dict = {}

    def get(task: str = "pick_and_place") -> Path:
        if task not in built or not built[task].exists():
            scan = root / f"scan_{task}"
            if not scan.exists():
                simulate_scan(task, scan, frames=8, seed=1, progress=False)
            out = root / f"twin_{task}"
            build_twin(scan, out, task, load_groundtruth(scan).scan_to_base, "groundtruth", preview=False)
            built[task] = out
        return built[task]

    return get
