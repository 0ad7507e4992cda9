"""The README's sim-only session as a user runs it: `twinrl up sim`, then `twinrl episode run`
from another shell; a second graph in the same ROS domain is refused by its fr3_bridge."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_sim_ros import start_graph, stop_graph

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(240)]


def _twinrl(*args):
    return [sys.executable, "-m", "twinrl_bringup.cli", *args]


def test_episode_cli_and_single_bridge(ros_env, tmp_path, spawn_node):
    graph = start_graph(ros_env, tmp_path)
    try:
        res = subprocess.run(_twinrl("episode", "run", "--controller", "expert", "--region", "ood", "--count", "1",
                                     "--seed", "5", "--json", "--wait", "60"),
                             env=ros_env, capture_output=True, text=True, timeout=150)
        log = graph.log_path.read_text()
        assert res.returncode == 0, res.stdout + res.stderr + log[-3000:]
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        print("\nepisode:", summary["results"])
        assert summary["episodes"] == 1 and summary["successes"] == 1, summary
        ep = summary["results"][0]
        assert ep["region"] == "ood" and 0 < ep["length"] < 150 and ep["return"] > 0

        # A second bridge in the same domain must refuse to start (it would command the same arm).
        second = spawn_node("twinrl_bringup", "fr3_bridge", name="fr3_bridge_2",
                            parameters={"backend": "sim", "unique_check_s": 15.0})
        try:
            rc = second.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 1, second.output()[-2000:]
        assert "another fr3_bridge is already running" in second.output()
        assert graph.poll() is None, "the first graph must keep running"
    finally:
        stop_graph(graph)


def test_episode_cli_without_graph_says_so(ros_env):
    res = subprocess.run(_twinrl("episode", "run", "--wait", "2"), env=ros_env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "no RunEpisode server" in res.stderr and "twinrl up sim" in res.stderr
