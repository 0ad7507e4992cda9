"""Backend registry of fr3_bridge: a name -> ``module:Class`` table, imported lazily.

Only the selected backend is imported, so the sim backend's MuJoCo or the real backend's
franka_ros2 interfaces are never needed by a graph that does not use them. A name that is
not in the table may be given directly as ``package.module:Class``.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

BACKENDS: dict[str, str] = {
    "sim": "twinrl_twin.sim.backend:SimBackend",
    "real": "twinrl_bringup.bridge.real_backend:RealBackend",
    "franky": "twinrl_bringup.bridge.franky_backend:FrankyBackend",
}


class BackendError(RuntimeError):
    """The requested backend cannot be found, imported or built."""


def backend_class(name: str) -> type:
    spec = BACKENDS.get(name, name)
    if ":" not in spec:
        known = ", ".join(sorted(BACKENDS))
        raise BackendError(f"unknown fr3_bridge backend {name!r} (known: {known}, or module:Class)")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r}: cannot import {module_name} ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise BackendError(f"backend {name!r}: {module_name} has no {attr}") from exc


def create_backend(name: str, **options: Any):
    """Build backend ``name``, passing only the keyword options its constructor accepts."""
    cls = backend_class(name)
    try:
        sig = inspect.signature(cls)
        params = sig.parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            kwargs = dict(options)
        else:
            kwargs = {k: v for k, v in options.items() if k in sig.parameters}
    except (TypeError, ValueError):
        kwargs = dict(options)
    return cls(**kwargs)
