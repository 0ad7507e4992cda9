"""Graph descriptions: loading, substitutions, conditions, and every shipped graph resolves."""
from __future__ import annotations

import pytest

from twinrl_bringup.config import ConfigError
from twinrl_bringup.graph import find_executable, list_graphs, load_graph, node_command, params_document, resolve

GRAPH = """\
description: test graph
arguments:
  task: pick_and_place
  rate: 10.0
  use_extra: false
  ns: twinrl
nodes:
  - name: a
    package: twinrl_bringup
    executable: ping
    namespace: $(arg ns)
    parameters: {task: $(arg task), rate_hz: $(arg rate), label: "run-$(arg task)"}
    remappings: {ping: /$(arg ns)/other}
  - name: b
    package: twinrl_bringup
    executable: pong
    required: false
    condition: $(arg use_extra)
includes:
  - package: franka_bringup
    launch: franka.launch.py
    arguments: {robot_ip: 10.0.0.2}
    condition: $(arg use_extra)
"""


@pytest.fixture
def gfile(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(GRAPH)
    return p


def test_resolve_substitutes_typed_values(gfile):
    r = resolve(load_graph(gfile))
    assert [n.name for n in r.nodes] == ["a"] and r.includes == []
    a = r.nodes[0]
    assert a.parameters == {"task": "pick_and_place", "rate_hz": 10.0, "label": "run-pick_and_place"}
    assert a.namespace == "twinrl" and a.remappings == {"ping": "/twinrl/other"}
    assert a.label == "twinrl/a"


def test_overrides_and_conditions(gfile):
    r = resolve(load_graph(gfile), {"task": "insert_hexagon", "use_extra": "true", "rate": "5"})
    assert [n.name for n in r.nodes] == ["a", "b"]
    assert r.nodes[0].parameters["task"] == "insert_hexagon"
    assert r.nodes[0].parameters["rate_hz"] == 5.0 and isinstance(r.nodes[0].parameters["rate_hz"], float)
    assert r.includes[0].arguments == {"robot_ip": "10.0.0.2"}


def test_unknown_argument_is_named(gfile):
    with pytest.raises(ConfigError) as err:
        resolve(load_graph(gfile), {"tsk": "x"})
    assert "tsk" in str(err.value) and str(gfile) in str(err.value)


def test_undeclared_substitution_is_named(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(GRAPH.replace("{task: $(arg task),", "{task: $(arg job),"))
    with pytest.raises(ConfigError) as err:
        resolve(load_graph(p))
    assert "$(arg job)" in str(err.value) and "nodes[0](a).parameters.task" in str(err.value)


def test_bad_graph_keys_name_file_and_key(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(GRAPH.replace("    executable: pong\n", "    executable: pong\n    respawn: true\n"))
    with pytest.raises(ConfigError) as err:
        load_graph(p)
    assert str(p) in str(err.value) and "nodes[1].respawn" in str(err.value)
    p.write_text(GRAPH.replace("  - name: b", "  - name: a").replace("required: false", "namespace: twinrl"))
    resolve(load_graph(p))  # the second "a" is switched off by its condition
    with pytest.raises(ConfigError) as err:
        resolve(load_graph(p), {"use_extra": "true"})
    assert "duplicate node names: twinrl/a" in str(err.value)


def test_node_command_and_params(gfile):
    r = resolve(load_graph(gfile))
    cmd = node_command(r.nodes[0], "/x/ping", "/tmp/p.yaml")
    assert cmd[:2] == ["/x/ping", "--ros-args"]
    assert "__node:=a" in cmd and "__ns:=/twinrl" in cmd and "ping:=/twinrl/other" in cmd
    assert cmd[cmd.index("--params-file") + 1] == "/tmp/p.yaml"
    assert params_document(r.nodes[0]) == {"/twinrl/a": {"ros__parameters": r.nodes[0].parameters}}


def test_find_executable_errors(ros_env):
    assert find_executable("twinrl_bringup", "ping", ros_env).endswith("lib/twinrl_bringup/ping")
    with pytest.raises(FileNotFoundError, match="no executable 'nope'"):
        find_executable("twinrl_bringup", "nope", ros_env)
    with pytest.raises(FileNotFoundError, match="realsense2_camera.*apt install"):
        find_executable("realsense2_camera", "realsense2_camera_node", ros_env)


@pytest.mark.parametrize("name", list_graphs())
def test_shipped_graphs_resolve(name, ros_env):
    """Every graph in config/graphs resolves with its defaults, and every project node exists."""
    r = resolve(load_graph(name))
    assert r.nodes, f"graph {name} starts no node"
    for n in r.nodes:
        if n.package.startswith("twinrl"):
            find_executable(n.package, n.executable, ros_env)


def test_launch_files_match_graphs():
    """Each graph has a thin launch adapter and vice versa."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    launches = {p.name.removesuffix(".launch.py") for p in (root / "launch").glob("*.launch.py")}
    assert launches == set(list_graphs())
    for name in launches:
        text = (root / "launch" / f"{name}.launch.py").read_text()
        assert f'generate_graph_launch("{name}")' in text
        assert len([line for line in text.splitlines() if line.strip()]) <= 6, "launch files stay thin adapters"
