"""Headless OpenGL selection for MuJoCo; must run before ``mujoco`` is first imported."""
from __future__ import annotations

import ctypes.util
import os


def select_gl_backend() -> str:
    """Keep a user's MUJOCO_GL; else ``egl`` when libEGL is installed, else ``osmesa``."""
    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        backend = "egl" if ctypes.util.find_library("EGL") else "osmesa"
        os.environ["MUJOCO_GL"] = backend
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend
