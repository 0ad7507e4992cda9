"""config/twinrl.rviz parses and every topic it shows is published by the real graph."""
import time

import pytest
import yaml

from twinrl_bringup.config import config_dir
from twinrl_bringup.graph import find_executable, load_graph, resolve

# Topics published by upstream parts of the real graph that cannot run from PyPI (their
# launch files / executables), keyed by (package, launch file or executable).
UPSTREAM_PUBLISHES = {
    ("franka_bringup", "example.launch.py"): {"/robot_description", "/tf", "/tf_static", "/joint_states",
                                               "/franka_robot_state_broadcaster/robot_state"},
    ("realsense2_camera", "rs_launch.py"): set(),          # raw streams go through image_adapter
}


def rviz_doc():
    return yaml.safe_load((config_dir() / "twinrl.rviz").read_text())


def rviz_topics(node, out=None):
    out = set() if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("Topic", "Description Topic") and isinstance(v, dict) and v.get("Value"):
                out.add(v["Value"])
            else:
                rviz_topics(v, out)
    elif isinstance(node, list):
        for v in node:
            rviz_topics(v, out)
    return out


def test_rviz_file_parses_and_shows_what_we_need():
    doc = rviz_doc()
    vm = doc["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "fr3_link0"
    classes = [d["Class"] for d in vm["Displays"]]
    for needed in ("rviz_default_plugins/RobotModel", "rviz_default_plugins/TF",
                   "rviz_default_plugins/MarkerArray"):
        assert needed in classes
    images = {d["Topic"]["Value"] for d in vm["Displays"] if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {"/twinrl/camera/third_person/image_raw", "/twinrl/camera/wrist/image_raw",
                      "/twinrl/twin/overlay"}


def test_graph_camera_arguments_match_camera_config():
    from twinrl_bringup.image_adapter import load_cameras_config

    g = load_graph("real")
    cams = load_cameras_config().cameras
    w, h, fps = (int(v) for v in g.arguments["color_profile"].split(","))
    for name, arg in (("third_person", "third_person_serial"), ("wrist", "wrist_serial")):
        c = cams[name]
        assert (c.width, c.height, c.fps) == (w, h, fps)
        assert str(g.arguments[arg]) == c.serial_no
    r = resolve(g)
    rs = [i for i in r.includes if i.package == "realsense2_camera"]
    assert {i.arguments["camera_name"] for i in rs} == {c.camera_name for c in cams.values()}
    for i in rs:
        c = next(c for c in cams.values() if c.camera_name == i.arguments["camera_name"])
        assert c.input_topic == f"/{i.arguments['camera_namespace']}/{c.camera_name}/color/image_raw"


@pytest.mark.ros
def test_every_rviz_topic_is_published_by_the_real_graph(rclpy_context, spawn_node, ros_env, tiny_twins):
    import rclpy

    graph = resolve(load_graph("real"), {"use_alignment": True, "use_cameras": True, "use_franka": True,
                                         "twin_dir": str(tiny_twins("pick_and_place"))})
    expected_upstream = set()
    for inc in graph.includes:
        expected_upstream |= UPSTREAM_PUBLISHES.get((inc.package, inc.launch), set())
    procs = []
    for n in graph.nodes:
        if (n.package, n.executable) in UPSTREAM_PUBLISHES:
            expected_upstream |= UPSTREAM_PUBLISHES[(n.package, n.executable)]
            continue
        if not n.package.startswith("twinrl") or n.executable == "episode_manager":
            continue           # spacenav driver (not needed for rviz); episode manager shows nothing
        find_executable(n.package, n.executable, ros_env)
        procs.append(spawn_node(n.package, n.executable, name=n.name, namespace=n.namespace,
                                parameters=n.parameters, remappings=n.remappings))
    probe = rclpy.create_node("rviz_probe", context=rclpy_context)
    wanted = rviz_topics(rviz_doc())
    ours = wanted - expected_upstream
    live = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = {name for name, _ in probe.get_topic_names_and_types()}
        if ours <= live:
            break
        time.sleep(0.3)
    missing = sorted(t for t in wanted if t not in live and t not in expected_upstream)
    logs = "\n".join(p.output()[-800:] for p in procs)
    assert not missing, f"rviz topics nobody in the real graph publishes: {missing}\n{logs}"
    assert {"/twinrl/markers", "/twinrl/tcp_pose", "/twinrl/camera/wrist/image_raw"} <= live
    probe.destroy_node()
