"""``twinrl doctor``: what this installation can do, and the command that fixes what is missing.

Checks run in order of dependency; each yields a status (ok / missing / warn), a detail and,
when not ok, the fix. Exit status 1 when a required component is missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

SETUP = "bash scripts/setup.sh"


@dataclass
class Check:
    name: str
    status: str        # "ok", "missing", "warn"
    detail: str
    fix: str = ""
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_ros() -> list[Check]:
    out = []
    distro = os.environ.get("ROS_DISTRO")
    wheel = _version("ros-kilted-rclpy")
    if distro:
        out.append(Check("ROS distro", "ok", f"{distro} (from ROS_DISTRO)"))
    elif wheel:
        out.append(Check("ROS distro", "ok", f"kilted (PyPI wheels, ros-kilted-rclpy {wheel})"))
    else:
        out.append(Check("ROS distro", "missing", "no ROS 2 found", SETUP))
    try:
        import rclpy  # noqa: F401
        from rclpy.utilities import get_rmw_implementation_identifier

        out.append(Check("rclpy", "ok", f"imports ({os.path.dirname(rclpy.__file__)})"))
        try:
            rmw = get_rmw_implementation_identifier()
            out.append(Check("RMW", "ok", rmw))
        except Exception as exc:
            out.append(Check("RMW", "missing", f"no RMW implementation loads ({exc})",
                             ".venv/bin/pip install ros-kilted-rmw-fastrtps-cpp"))
    except Exception as exc:
        out.append(Check("rclpy", "missing", f"import failed: {exc}", SETUP))
        out.append(Check("RMW", "missing", "needs rclpy", SETUP))
    domain = os.environ.get("ROS_DOMAIN_ID", "0 (default)")
    out.append(Check("ROS_DOMAIN_ID", "ok", domain, required=False))
    try:
        from twinrl_msgs.msg import Action, Observation  # noqa: F401
        from twinrl_msgs.action import RunEpisode  # noqa: F401

        Action()
        out.append(Check("twinrl_msgs", "ok", "imports (messages, services, actions)"))
    except Exception as exc:
        out.append(Check("twinrl_msgs", "missing", f"import failed: {exc}",
                         f"{SETUP}  (builds the interfaces with colcon), then . scripts/env.sh"))
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401

        out.append(Check("ros2 launch", "ok", "launch and launch_ros import", required=False))
    except Exception:
        out.append(Check("ros2 launch", "warn", "launch/launch_ros not installed (PyPI ROS has none): use "
                         "`twinrl up GRAPH`", "on a full ROS 2 install: apt install ros-$ROS_DISTRO-launch-ros",
                         required=False))
    return out


_GL_PROBE = r"""
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><light pos="0 0 1"/><geom type="box" size=".1 .1 .1"/></worldbody></mujoco>')
r = mujoco.Renderer(m, 32, 32)
d = mujoco.MjData(m); mujoco.mj_forward(m, d); r.update_scene(d); img = r.render()
print(int(img.sum() > 0))
"""


def check_mujoco() -> list[Check]:
    ver = _version("mujoco")
    if not ver:
        return [Check("MuJoCo", "missing", "not installed", ".venv/bin/pip install -c constraints.txt mujoco")]
    out = [Check("MuJoCo", "ok", ver)]
    backend = os.environ.get("MUJOCO_GL", "")
    env = dict(os.environ)
    tried = [backend] if backend else ["egl", "osmesa"]
    for b in tried:
        env["MUJOCO_GL"] = b
        env["PYOPENGL_PLATFORM"] = b
        try:
            res = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True,
                                 text=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        if res.returncode == 0 and res.stdout.strip().endswith("1"):
            out.append(Check("MuJoCo GL", "ok", f"offscreen rendering works with MUJOCO_GL={b}"))
            return out
    out.append(Check("MuJoCo GL", "missing", f"offscreen rendering failed (tried MUJOCO_GL={', '.join(tried)})",
                     "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6; export MUJOCO_GL=egl"))
    return out


def check_learning() -> list[Check]:
    out = []
    try:
        import torch

        cuda = torch.cuda.is_available()
        detail = f"{torch.__version__}, " + (f"CUDA {torch.version.cuda} ({torch.cuda.get_device_name(0)})"
                                             if cuda else "CPU")
        status = "ok" if torch.__version__.split("+")[0] == "2.13.0" or cuda else "warn"
        out.append(Check("torch", status, detail, "" if status == "ok" else
                         ".venv/bin/pip install -c constraints.txt torch==2.13.0"))
    except Exception as exc:
        cuda = False
        out.append(Check("torch", "missing", f"import failed: {exc}",
                         ".venv/bin/pip install -c constraints.txt torch==2.13.0"))
    try:
        import open3d

        out.append(Check("open3d", "ok", open3d.__version__))
    except Exception as exc:
        fix = ("apt-get install libusb-1.0-0" if "libusb" in str(exc)
               else ".venv/bin/pip install -c constraints.txt open3d")
        out.append(Check("open3d", "missing", f"import failed: {exc}", fix))
    try:
        import gsplat

        if cuda:
            mode = "CUDA rasterization (gsplat.rasterization)"
        else:
            from gsplat.cuda import _torch_impl  # noqa: F401

            mode = "CPU: pure-torch projection helpers + the project's tiled compositor"
        out.append(Check("gsplat", "ok", f"{gsplat.__version__}; {mode}"))
    except Exception as exc:
        out.append(Check("gsplat", "missing", f"import failed: {exc}",
                         ".venv/bin/pip install -c constraints.txt gsplat"))
    for mod, dist, req in (("trimesh", "trimesh", True), ("plyfile", "plyfile", True),
                           ("pinocchio", "pin", False), ("ompl", "ompl", False)):
        try:
            __import__(mod)
            out.append(Check(dist, "ok", _version(dist) or "imports", required=req))
        except Exception as exc:
            out.append(Check(dist, "missing" if req else "warn", f"import failed: {exc}",
                             f".venv/bin/pip install -c constraints.txt {dist}", required=req))
    return out


def run_checks() -> list[Check]:
    return check_ros() + check_mujoco() + check_learning()


def _cmd_doctor(args) -> int:
    checks = run_checks()
    bad = [c for c in checks if c.status == "missing" and c.required]
    if args.json:
        print(json.dumps({"ok": not bad, "checks": [asdict(c) for c in checks]}))
        return 1 if bad else 0
    marks = {"ok": "ok  ", "missing": "MISS", "warn": "warn"}
    for c in checks:
        print(f"[{marks[c.status]}] {c.name:14s} {c.detail}")
        if c.fix and c.status != "ok":
            print(f"       fix: {c.fix}")
    print("\nall required components present" if not bad else
          f"\nmissing: {', '.join(c.name for c in bad)}")
    return 1 if bad else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="report what this installation has and how to fix what is missing")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=_cmd_doctor)
