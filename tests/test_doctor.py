"""`twinrl doctor` reports the installation; `twinrl` works from an unsourced shell."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TWINRL = ROOT / ".venv" / "bin" / "twinrl"


def _bare_env():
    """A shell environment that has not sourced the workspace (as a new terminal)."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                         "MUJOCO_GL", "TMPDIR")}
    return {**keep, "PATH": "/usr/bin:/bin"}


def test_doctor_json_from_unsourced_shell():
    res = subprocess.run([str(TWINRL), "doctor", "--json"], env=_bare_env(), capture_output=True, text=True,
                         timeout=180)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("ROS distro", "rclpy", "RMW", "twinrl_msgs", "MuJoCo", "MuJoCo GL", "torch", "open3d", "gsplat"):
        assert name in checks, name
    for name in ("rclpy", "twinrl_msgs", "MuJoCo", "torch"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["RMW"]["detail"].startswith("rmw_")
    assert "CPU" in checks["gsplat"]["detail"] or "CUDA" in checks["gsplat"]["detail"]
    assert report["ok"] is (res.returncode == 0)
    for c in report["checks"]:
        if c["status"] != "ok":
            assert c["fix"], f"{c['name']} is {c['status']} without a fix command"


def test_doctor_names_the_fix_when_messages_are_missing(tmp_path):
    env = {**_bare_env(), "TWINRL_INSTALL_DIR": str(tmp_path)}  # an empty install space
    res = subprocess.run([str(TWINRL), "doctor", "--json"], env=env, capture_output=True, text=True, timeout=180)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    msgs = {c["name"]: c for c in report["checks"]}["twinrl_msgs"]
    assert msgs["status"] == "missing" and "scripts/setup.sh" in msgs["fix"]
    assert res.returncode == 1 and report["ok"] is False


def test_help_lists_plugin_commands():
    res = subprocess.run([str(TWINRL), "--help"], env=_bare_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for cmd in ("up", "doctor", "graph"):
        assert cmd in res.stdout
