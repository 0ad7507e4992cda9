"""Locating the colcon workspace and entering its environment.

``twinrl`` is installed into the venv as an entry point. When it runs from a shell that has
not sourced ``install/setup.bash``, the generated interface libraries (``twinrl_msgs``) are
neither on ``PYTHONPATH`` nor on ``LD_LIBRARY_PATH``. :func:`ensure_environment` then
re-executes the command once with the workspace's environment, the way
``install/setup.bash`` would set it up.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_MARK = "TWINRL_WORKSPACE_ENV"


def source_root() -> Path | None:
    """The repository root when running from a source checkout, else None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "src" / "twinrl_msgs").is_dir() and (parent / "colcon.meta").is_file():
            return parent
    return None


def install_dir() -> Path | None:
    env = os.environ.get("TWINRL_INSTALL_DIR")
    if env:
        return Path(env)
    root = source_root()
    if root is not None and (root / "install").is_dir():
        return root / "install"
    return None


def workspace_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment with the colcon install space's packages prepended (like setup.bash)."""
    env = dict(os.environ if base is None else base)
    inst = install_dir()
    if inst is None:
        return env
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    prefixes = sorted(p for p in inst.iterdir() if p.is_dir() and (p / "share").is_dir())

    def prepend(var: str, items: list[str]) -> None:
        old = [x for x in env.get(var, "").split(os.pathsep) if x]
        env[var] = os.pathsep.join(items + [x for x in old if x not in items])

    prepend("AMENT_PREFIX_PATH", [str(p) for p in prefixes] + ([sys.prefix] if sys.prefix != sys.base_prefix else []))
    prepend("PYTHONPATH", [str(p / "lib" / pyver / "site-packages") for p in prefixes
                           if (p / "lib" / pyver / "site-packages").is_dir()])
    prepend("LD_LIBRARY_PATH", [str(p / "lib") for p in prefixes if (p / "lib").is_dir()])
    prepend("COLCON_PREFIX_PATH", [str(inst)])
    return env


def msgs_importable() -> bool:
    try:
        import twinrl_msgs.msg  # noqa: F401

        from twinrl_msgs.msg import Action

        Action()
        return True
    except Exception:
        return False


def ensure_environment(argv: list[str]) -> None:
    """Re-exec ``python -m twinrl_bringup.cli argv`` inside the workspace env if needed."""
    if os.environ.get(_MARK) or msgs_importable() or install_dir() is None:
        return
    env = workspace_env()
    env[_MARK] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "twinrl_bringup.cli", *argv], env)
