"""Declarative ROS graph descriptions (``config/graphs/<name>.yaml``).

One description per graph lists its arguments, nodes (package, executable, name, namespace,
parameters, remappings, condition, required) and upstream launch files to include. Both the
``twinrl up`` runner (:mod:`twinrl_bringup.runner`) and the ``launch/*.launch.py`` adapters
(:mod:`twinrl_bringup.launch_adapter`) read it through :func:`resolve`, so the two entry
points cannot disagree about what a graph is.

Substitutions: a string value may contain ``$(arg NAME)``. A value that is exactly one
substitution takes the argument's typed value (``true`` stays a bool); inside a longer
string it is formatted in. Argument overrides (``--set task=insert_hexagon`` or
``task:=insert_hexagon``) are parsed as YAML scalars.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, config_dir, from_dict, load_yaml

_SUBST = re.compile(r"\$\(arg ([A-Za-z_][A-Za-z0-9_]*)\)")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass
class NodeSpec:
    name: str
    package: str
    executable: str
    namespace: str = ""
    required: bool = True
    condition: Any = True
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"node name {self.name!r} is not a valid ROS node name")


@dataclass
class IncludeSpec:
    package: str
    launch: str
    arguments: dict[str, Any] = field(default_factory=dict)
    condition: Any = True
    description: str = ""


@dataclass
class GraphSpec:
    description: str
    nodes: list[NodeSpec]
    arguments: dict[str, Any] = field(default_factory=dict)
    includes: list[IncludeSpec] = field(default_factory=list)
    name: str = ""
    source: str = ""



@dataclass
class ResolvedNode:
    name: str
    package: str
    executable: str
    namespace: str
    required: bool
    parameters: dict[str, Any]
    remappings: dict[str, str]
    env: dict[str, str]

    @property
    def label(self) -> str:
        ns = self.namespace.strip("/")
        return f"{ns}/{self.name}" if ns else self.name


@dataclass
class ResolvedInclude:
    package: str
    launch: str
    arguments: dict[str, str]


@dataclass
class ResolvedGraph:
    name: str
    source: str
    arguments: dict[str, Any]
    nodes: list[ResolvedNode]
    includes: list[ResolvedInclude]


def graphs_dir() -> Path:
    return config_dir() / "graphs"


def list_graphs() -> list[str]:
    return sorted(p.stem for p in graphs_dir().glob("*.yaml"))


def load_graph(name_or_path: str | os.PathLike) -> GraphSpec:
    """Load a graph by name (``sim``) or by path to its YAML file."""
    p = Path(name_or_path)
    if not p.is_file():
        p = graphs_dir() / f"{name_or_path}.yaml"
        if not p.is_file():
            known = ", ".join(list_graphs()) or "none"
            raise ConfigError(p, "", f"no graph named {str(name_or_path)!r} (known graphs: {known})")
    data = load_yaml(p)
    spec = from_dict(data if data is not None else {}, GraphSpec, source=p)
    spec.name = spec.name or p.stem
    spec.source = str(p)
    return spec


def parse_scalar(text: str) -> Any:
    """Parse an override value as a YAML scalar ("3" -> 3, "true" -> True, "a b" -> "a b")."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return "" if value is None else value


def _subst(value: Any, args: dict[str, Any], source: str, key: str) -> Any:
    if isinstance(value, str):
        whole = _SUBST.fullmatch(value.strip())
        for m in _SUBST.finditer(value):
            if m.group(1) not in args:
                raise ConfigError(source, key, f"unknown argument $(arg {m.group(1)}) "
                                  f"(declared arguments: {', '.join(sorted(args)) or 'none'})")
        if whole:
            return args[whole.group(1)]
        return _SUBST.sub(lambda m: _fmt(args[m.group(1)]), value)
    if isinstance(value, list):
        return [_subst(v, args, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _subst(v, args, source, f"{key}.{k}") for k, v in value.items()}
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def evaluate_condition(value: Any, source: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(source, key, f"condition must evaluate to true/false, got {value!r}")


def resolve(graph: GraphSpec, overrides: dict[str, Any] | None = None) -> ResolvedGraph:
    """Apply argument overrides and substitutions; drop nodes whose condition is false."""
    args = dict(graph.arguments)
    for k, v in (overrides or {}).items():
        if k not in args:
            raise ConfigError(graph.source, f"arguments.{k}",
                              f"unknown argument (declared: {', '.join(sorted(args)) or 'none'})")
        value = parse_scalar(v) if isinstance(v, str) else v
        default = args[k]
        # Keep the declared type where the override is compatible (rate_hz=5 for a float).
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(default, str) and isinstance(v, str):
            value = v  # a string argument stays the string given ("007", "{a: 1}", "true")
        args[k] = value
    nodes = []
    for i, n in enumerate(graph.nodes):
        key = f"nodes[{i}]({n.name})"
        if not evaluate_condition(_subst(n.condition, args, graph.source, f"{key}.condition"),
                                  graph.source, f"{key}.condition"):
            continue
        params = _subst(n.parameters, args, graph.source, f"{key}.parameters")
        for pk, pv in params.items():
            if pv is None or (isinstance(pv, list) and any(isinstance(x, (dict, list)) for x in pv)):
                raise ConfigError(graph.source, f"{key}.parameters.{pk}",
                                  "ROS parameters must be scalars or flat lists")
        nodes.append(ResolvedNode(
            name=n.name, package=n.package, executable=n.executable,
            namespace=str(_subst(n.namespace, args, graph.source, f"{key}.namespace")),
            required=n.required, parameters=params,
            remappings={str(_subst(a, args, graph.source, f"{key}.remappings")):
                        str(_subst(b, args, graph.source, f"{key}.remappings"))
                        for a, b in n.remappings.items()},
            env={k: _fmt(_subst(v, args, graph.source, f"{key}.env.{k}")) for k, v in n.env.items()},
        ))
    labels = [n.label for n in nodes]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(graph.source, "nodes", f"duplicate node names: {', '.join(dup)}")
    includes = []
    for i, inc in enumerate(graph.includes):
        key = f"includes[{i}]({inc.package}/{inc.launch})"
        if not evaluate_condition(_subst(inc.condition, args, graph.source, f"{key}.condition"),
                                  graph.source, f"{key}.condition"):
            continue
        includes.append(ResolvedInclude(
            package=inc.package, launch=inc.launch,
            arguments={k: _fmt(_subst(v, args, graph.source, f"{key}.arguments.{k}"))
                       for k, v in inc.arguments.items()}))
    return ResolvedGraph(graph.name, graph.source, args, nodes, includes)


# Where upstream packages come from on a full ROS install (apt), for error messages.
UPSTREAM_HINTS = {
    "realsense2_camera": "apt install ros-$ROS_DISTRO-realsense2-camera",
    "spacenav": "apt install ros-$ROS_DISTRO-spacenav",
    "franka_bringup": "build franka_ros2 (github.com/frankarobotics/franka_ros2) in your workspace",
    "robot_state_publisher": "apt install ros-$ROS_DISTRO-robot-state-publisher",
    "rviz2": "apt install ros-$ROS_DISTRO-rviz2",
    "moveit_ros_move_group": "apt install ros-$ROS_DISTRO-moveit",
}


def prefixes(env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    return [Path(p) for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]


def find_executable(package: str, executable: str, env: dict[str, str] | None = None) -> str:
    """Path of ``lib/<package>/<executable>`` in the ament prefixes (like ``ros2 run``)."""
    found_pkg = False
    for prefix in prefixes(env):
        marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / package
        cand = prefix / "lib" / package / executable
        if marker.exists() or (prefix / "lib" / package).is_dir():
            found_pkg = True
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    if found_pkg:
        raise FileNotFoundError(f"package {package!r} has no executable {executable!r} "
                                f"(rebuild the workspace: bash scripts/setup.sh)")
    hint = UPSTREAM_HINTS.get(package, "bash scripts/setup.sh" if package.startswith("twinrl") else
                              f"install ROS package {package}")
    raise FileNotFoundError(f"ROS package {package!r} not found in AMENT_PREFIX_PATH ({hint})")


def params_document(node: ResolvedNode) -> dict:
    """A ROS 2 parameter file document for one node."""
    ns = "/" + node.namespace.strip("/") if node.namespace.strip("/") else ""
    return {f"{ns}/{node.name}": {"ros__parameters": node.parameters}}


def node_command(node: ResolvedNode, executable_path: str, params_file: str | None) -> list[str]:
    """argv for one node: the executable with ROS arguments (name, namespace, params, remaps)."""
    cmd = [executable_path, "--ros-args", "-r", f"__node:={node.name}"]
    if node.namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{node.namespace.strip('/')}"]
    if params_file and node.parameters:
        cmd += ["--params-file", params_file]
    for a, b in node.remappings.items():
        cmd += ["-r", f"{a}:={b}"]
    return cmd


# ------------------------------------------------------------------ CLI: twinrl graph
def _cmd_graph(args) -> int:
    if args.action == "list":
        for name in list_graphs():
            g = load_graph(name)
            print(f"{name:12s} {g.description}")
        return 0
    graph = load_graph(args.name)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    r = resolve(graph, overrides)
    out = {
        "graph": r.name, "source": r.source, "arguments": r.arguments,
        "nodes": [{"name": n.label, "package": n.package, "executable": n.executable,
                   "required": n.required, "parameters": n.parameters, "remappings": n.remappings}
                  for n in r.nodes],
        "includes": [{"package": i.package, "launch": i.launch, "arguments": i.arguments}
                     for i in r.includes],
    }
    print(yaml.safe_dump(out, sort_keys=False), end="")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("graph", help="list graphs or show a resolved graph description")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("name", nargs="?", help="graph name (config/graphs/NAME.yaml) for show")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a graph argument")
    p.set_defaults(func=_cmd_graph)
