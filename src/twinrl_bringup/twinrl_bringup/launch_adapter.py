"""Build a ``launch.LaunchDescription`` from a graph description (for ``ros2 launch``).

The files in ``launch/`` are three-line adapters over :func:`generate_graph_launch`; the
graph itself (nodes, parameters, remappings, includes) lives in ``config/graphs/*.yaml`` and
is resolved by :func:`twinrl_bringup.graph.resolve`, exactly as ``twinrl up`` resolves it.
Graph arguments become launch arguments (``ros2 launch twinrl_bringup sim.launch.py
task:=insert_hexagon``). ``launch`` and ``launch_ros`` are imported here only: they exist on
a full ROS 2 install, not in the PyPI wheels.
"""
from __future__ import annotations

import os

from .graph import _fmt, load_graph, resolve


def _include_path(package: str, launch_file: str) -> str:
    from ament_index_python.packages import get_package_share_directory

    return os.path.join(get_package_share_directory(package), "launch", launch_file)


def build_actions(graph_name: str, argument_values: dict[str, str]):
    """Launch actions (Node / IncludeLaunchDescription) for a graph with resolved arguments."""
    from launch.actions import IncludeLaunchDescription, Shutdown
    from launch.launch_description_sources import AnyLaunchDescriptionSource
    from launch_ros.actions import Node

    resolved = resolve(load_graph(graph_name), argument_values)
    actions = []
    for inc in resolved.includes:
        actions.append(IncludeLaunchDescription(
            AnyLaunchDescriptionSource(_include_path(inc.package, inc.launch)),
            launch_arguments=list(inc.arguments.items())))
    for n in resolved.nodes:
        kwargs = dict(package=n.package, executable=n.executable, name=n.name,
                      namespace=n.namespace.strip("/") or None, output="screen",
                      parameters=[n.parameters] if n.parameters else None,
                      remappings=list(n.remappings.items()) or None,
                      additional_env=n.env or None)
        if n.required:
            kwargs["on_exit"] = Shutdown(reason=f"required node {n.label} exited")
        actions.append(Node(**{k: v for k, v in kwargs.items() if v is not None}))
    return actions


def generate_graph_launch(graph_name: str):
    """LaunchDescription for ``config/graphs/<graph_name>.yaml``."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    graph = load_graph(graph_name)
    declared = [DeclareLaunchArgument(k, default_value=_fmt(v), description=f"graph argument {k}")
                for k, v in graph.arguments.items()]

    def _setup(context, *args, **kwargs):
        values = {k: LaunchConfiguration(k).perform(context) for k in graph.arguments}
        return build_actions(graph_name, values)

    return LaunchDescription([*declared, OpaqueFunction(function=_setup)])
