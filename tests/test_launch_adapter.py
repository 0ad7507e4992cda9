"""launch/*.launch.py build the same nodes as `twinrl up` (checked with recording stand-ins
for the launch / launch_ros modules, which the PyPI ROS distribution does not ship)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Rec:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.fixture
def fake_launch(monkeypatch):
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    subs = types.ModuleType("launch.substitutions")
    sources = types.ModuleType("launch.launch_description_sources")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")

    class LaunchDescription(_Rec):
        pass

    class DeclareLaunchArgument(_Rec):
        pass

    class OpaqueFunction(_Rec):
        pass

    class Shutdown(_Rec):
        pass

    class IncludeLaunchDescription(_Rec):
        pass

    class AnyLaunchDescriptionSource(_Rec):
        pass

    class Node(_Rec):
        pass

    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    launch.LaunchDescription = LaunchDescription
    actions.DeclareLaunchArgument, actions.OpaqueFunction = DeclareLaunchArgument, OpaqueFunction
    actions.Shutdown, actions.IncludeLaunchDescription = Shutdown, IncludeLaunchDescription
    subs.LaunchConfiguration = LaunchConfiguration
    sources.AnyLaunchDescriptionSource = AnyLaunchDescriptionSource
    ros_actions.Node = Node
    for name, mod in {"launch": launch, "launch.actions": actions, "launch.substitutions": subs,
                      "launch.launch_description_sources": sources, "launch_ros": launch_ros,
                      "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(Node=Node, Declare=DeclareLaunchArgument, Opaque=OpaqueFunction,
                                 Include=IncludeLaunchDescription)


def _load_launch_file(name):
    spec = importlib.util.spec_from_file_location(f"launch_file_{name}", ROOT / "launch" / f"{name}.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate_launch_description()


def test_link_check_launch_matches_runner(fake_launch):
    from twinrl_bringup.graph import load_graph, resolve

    ld = _load_launch_file("link_check")
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if isinstance(e, fake_launch.Declare)}
    assert declared == {"rate_hz": "20.0", "count": "0", "namespace": "twinrl/link_check"}
    opaque = [e for e in entities if isinstance(e, fake_launch.Opaque)]
    assert len(opaque) == 1
    context = {**declared, "rate_hz": "5"}  # as `ros2 launch ... rate_hz:=5` would give
    nodes = opaque[0].kwargs["function"](context)
    expected = resolve(load_graph("link_check"), {"rate_hz": "5"}).nodes
    assert [(n.kwargs["package"], n.kwargs["executable"], n.kwargs["name"], n.kwargs["namespace"])
            for n in nodes] == [(e.package, e.executable, e.name, e.namespace) for e in expected]
    ping = [n for n in nodes if n.kwargs["name"] == "ping"][0]
    assert ping.kwargs["parameters"] == [{"rate_hz": 5.0, "count": 0, "timeout_s": 30.0}]
    assert "on_exit" in ping.kwargs  # required nodes shut the launch down


def test_includes_become_launch_includes(fake_launch, tmp_path, monkeypatch):
    from twinrl_bringup import launch_adapter

    g = tmp_path / "withinc.yaml"
    g.write_text("description: x\narguments: {ip: 1.2.3.4, cams: true}\nnodes:\n"
                 "  - {name: a, package: twinrl_bringup, executable: pong, required: false}\n"
                 "includes:\n  - {package: franka_bringup, launch: franka.launch.py,"
                 " arguments: {robot_ip: $(arg ip)}, condition: $(arg cams)}\n")
    monkeypatch.setattr(launch_adapter, "_include_path", lambda pkg, f: f"/share/{pkg}/launch/{f}")
    acts = launch_adapter.build_actions(str(g), {"ip": "10.0.0.9", "cams": "true"})
    inc = [a for a in acts if isinstance(a, fake_launch.Include)]
    assert len(inc) == 1 and inc[0].kwargs["launch_arguments"] == [("robot_ip", "10.0.0.9")]
    assert inc[0].args[0].args[0] == "/share/franka_bringup/launch/franka.launch.py"
    node = [a for a in acts if isinstance(a, fake_launch.Node)][0]
    assert "on_exit" not in node.kwargs
    acts = launch_adapter.build_actions(str(g), {"ip": "10.0.0.9", "cams": "false"})
    assert not [a for a in acts if isinstance(a, fake_launch.Include)]
