"""Scripted SpaceMouse operator: timed twist/button segments (the sim world's human).

A script is a list of segments, each held for ``duration`` seconds::

    - {duration: 1.0}                                   # device released
    - {duration: 0.5, linear: [0.5, 0, 0]}              # push forward at half deflection
    - {duration: 0.2, buttons: [1, 0]}                  # press button 0 ...
    - {duration: 0.2}                                   # ... and release it (toggle fires)

Scripts live in ``config/sim_operator.yaml`` under ``scripts:`` (by name) or in a file of
their own holding one list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from twinrl_bringup.config import ConfigError, from_dict, load_yaml, resolve_config_path


@dataclass
class Segment:
    duration: float
    linear: tuple[float, float, float] = (0.0, 0.0, 0.0)
    angular: tuple[float, float, float] = (0.0, 0.0, 0.0)
    buttons: list[int] = field(default_factory=lambda: [0, 0])

    def validate(self) -> None:
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be positive, got {self.duration}")
        if not all(math.isfinite(v) for v in (*self.linear, *self.angular)):
            raise ValueError("linear/angular values must be finite")


class OperatorScript:
    def __init__(self, segments: list[Segment], n_buttons: int = 2):
        if not segments:
            raise ValueError("an operator script needs at least one segment")
        self.segments = segments
        self.n_buttons = max(n_buttons, max(len(s.buttons) for s in segments))
        self.duration = sum(s.duration for s in segments)

    def sample(self, t: float, loop: bool = False):
        """(linear, angular, buttons, finished) at time ``t`` since the script started."""
        if loop:
            t = t % self.duration
        elif t >= self.duration:
            return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), [0] * self.n_buttons, True
        acc = 0.0
        for s in self.segments:
            acc += s.duration
            if t < acc:
                b = list(s.buttons) + [0] * (self.n_buttons - len(s.buttons))
                return tuple(s.linear), tuple(s.angular), b, False
        s = self.segments[-1]
        return tuple(s.linear), tuple(s.angular), list(s.buttons), False


def load_script(name: str) -> OperatorScript:
    """A script by name (``config/sim_operator.yaml: scripts.<name>``) or a YAML file path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        data, source, key = load_yaml(p), p, ""
    else:
        source = resolve_config_path("sim_operator")
        doc = load_yaml(source) or {}
        scripts = doc.get("scripts", {}) if isinstance(doc, dict) else {}
        if name not in scripts:
            raise ConfigError(source, f"scripts.{name}",
                              f"no such operator script (have: {', '.join(sorted(scripts)) or 'none'})")
        data, key = scripts[name], f"scripts.{name}"
    if not isinstance(data, list):
        raise ConfigError(source, key, "expected a list of segments")
    segs = [from_dict(d, Segment, source, f"{key}[{i}]") for i, d in enumerate(data)]
    return OperatorScript(segs)
