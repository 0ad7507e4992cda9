"""Human-in-the-loop intervention: SpaceMouse input -> human actions and task labels.

Plain logic behind the ``intervention`` node (no ROS):

* :class:`SpaceMouseMapper` turns a 6-D device reading (linear x/y/z, angular x/y/z, as
  spacenav's ``/spacenav/twist`` or pyspacemouse give them) into a delta action: axis
  permutation and signs, normalisation by ``full_scale``, a per-axis deadband (rescaled so the
  output starts at 0 at the deadband edge), and scaling to metres / radians per control step;
* :class:`ButtonDecoder` turns button states (``/spacenav/joy``) into events. A "press" lasts
  from the first button down to all buttons up; its event is the label whose button set equals
  the set of buttons held during the press (so a chord such as both buttons = abort never also
  toggles the gripper). Events fire on release;
* :class:`Intervention` combines them: while the device is moved (or for ``linger_s`` after
  it), each control step yields a human action (source HUMAN, intervention flagged) that
  fr3_bridge puts in place of the policy's; the gripper toggles from the last commanded
  gripper state (so taking over mid-grasp does not drop the object).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from twinrl_bringup.config import load_config, resolve_config_path

EVENTS = ("gripper_toggle", "success", "abort", "failure")


@dataclass
class ButtonMap:
    gripper_toggle: list[int] = field(default_factory=lambda: [0])
    success: list[int] = field(default_factory=lambda: [1])
    abort: list[int] = field(default_factory=lambda: [0, 1])
    failure: list[int] = field(default_factory=list)     # optional explicit failure label

    def validate(self) -> None:
        seen = {}
        for name in EVENTS:
            chord = tuple(sorted(set(getattr(self, name))))
            if any(b < 0 for b in chord):
                raise ValueError(f"buttons.{name}: button indices must be >= 0")
            if chord and chord in seen:
                raise ValueError(f"buttons.{name} and buttons.{seen[chord]} use the same buttons {list(chord)}")
            if chord:
                seen[chord] = name


@dataclass
class InterventionConfig:
    input: str = "spacenav"                  # "spacenav" (ROS topics) or "pyspacemouse"
    twist_topic: str = "/spacenav/twist"
    joy_topic: str = "/spacenav/joy"
    action_topic: str = "/twinrl/action"
    task_status_topic: str = "/twinrl/task_status"
    rate: float = 10.0                       # Hz: human actions while active (control rate)
    full_scale: float = 1.0                  # device reading of full deflection
    deadband: float = 0.1                    # fraction of full deflection, per axis
    translation_scale: float = 0.02          # m per step at full deflection
    rotation_scale: float = 0.1              # rad per step at full deflection
    translation_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    translation_signs: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    rotation_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    rotation_signs: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    linger_s: float = 0.3                    # keep control (zero motion) this long after release
    stale_input_s: float = 0.5               # no device message this long: treat as released
    initial_gripper: float = -1.0            # before any commanded gripper is seen (open)
    task: str = ""                           # task name written into TaskStatus labels
    buttons: ButtonMap = field(default_factory=ButtonMap)

    def validate(self) -> None:
        if self.input not in ("spacenav", "pyspacemouse"):
            raise ValueError(f"input must be 'spacenav' or 'pyspacemouse', got {self.input!r}")
        for name in ("rate", "full_scale", "translation_scale", "rotation_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v}")
        if not 0.0 <= self.deadband < 1.0:
            raise ValueError(f"deadband must be in [0, 1), got {self.deadband}")
        for name in ("translation_axes", "rotation_axes"):
            if sorted(getattr(self, name)) != [0, 1, 2]:
                raise ValueError(f"{name} must be a permutation of [0, 1, 2], got {getattr(self, name)}")
        for name in ("translation_signs", "rotation_signs"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} needs 3 values")


def load_intervention_config(path=None, overrides: Sequence = ()) -> InterventionConfig:
    return load_config(resolve_config_path(path if path is not None else "intervention"),
                       InterventionConfig, overrides=overrides)


class SpaceMouseMapper:
    def __init__(self, cfg: InterventionConfig):
        self.cfg = cfg

    def _axis(self, v: np.ndarray) -> np.ndarray:
        db = self.cfg.deadband
        x = np.clip(v / self.cfg.full_scale, -1.0, 1.0)
        mag = np.maximum(np.abs(x) - db, 0.0) / (1.0 - db)
        return np.sign(x) * mag

    def map(self, linear, angular) -> tuple[np.ndarray, np.ndarray, bool]:
        """(delta position m, delta rotation rad, moved?) for one device reading.

        Non-finite readings count as released (zeros) rather than moving the arm.
        """
        lin = np.asarray(linear, dtype=float).reshape(3)
        ang = np.asarray(angular, dtype=float).reshape(3)
        if not (np.all(np.isfinite(lin)) and np.all(np.isfinite(ang))):
            return np.zeros(3), np.zeros(3), False
        c = self.cfg
        lin = lin[c.translation_axes] * np.asarray(c.translation_signs, dtype=float)
        ang = ang[c.rotation_axes] * np.asarray(c.rotation_signs, dtype=float)
        t = self._axis(lin)
        r = self._axis(ang)
        moved = bool(np.any(t != 0.0) or np.any(r != 0.0))
        return t * c.translation_scale, r * c.rotation_scale, moved


class ButtonDecoder:
    def __init__(self, buttons: ButtonMap):
        self.chords = {}
        for name in EVENTS:
            chord = frozenset(getattr(buttons, name))
            if chord:
                self.chords[chord] = name
        self.held: set[int] = set()

    def update(self, pressed: Sequence) -> Optional[str]:
        """Feed one button-state vector; returns an event name on release of a press."""
        down = {i for i, b in enumerate(pressed) if b}
        if down:
            self.held |= down
            return None
        if not self.held:
            return None
        event = self.chords.get(frozenset(self.held))
        self.held = set()
        return event


@dataclass
class HumanCommand:
    action: np.ndarray        # (7,) delta action
    moved: bool               # the device is deflected (not just lingering / a button)


class Intervention:
    """State of the operator's device; ``step(now)`` gives the human action, if any."""

    def __init__(self, cfg: InterventionConfig):
        self.cfg = cfg
        self.mapper = SpaceMouseMapper(cfg)
        self.buttons = ButtonDecoder(cfg.buttons)
        self.gripper = float(cfg.initial_gripper)
        self.dp = np.zeros(3)
        self.dr = np.zeros(3)
        self.moved = False
        self.last_input: Optional[float] = None
        self.last_moved: Optional[float] = None
        self.gripper_pending = False
        self.events: list[str] = []

    def on_twist(self, linear, angular, now: float) -> None:
        self.dp, self.dr, self.moved = self.mapper.map(linear, angular)
        self.last_input = now
        if self.moved:
            self.last_moved = now

    def on_buttons(self, pressed, now: float) -> Optional[str]:
        event = self.buttons.update(pressed)
        if event == "gripper_toggle":
            self.gripper = -1.0 if self.gripper > 0 else 1.0
            self.gripper_pending = True
            self.last_moved = now
        if event:
            self.events.append(event)
        return event

    def on_commanded_gripper(self, g: float) -> None:
        """Follow the gripper the policy commands, so a takeover starts from it."""
        if math.isfinite(g):
            self.gripper = 1.0 if g > 0 else -1.0

    def active(self, now: float) -> bool:
        if self.last_input is not None and now - self.last_input > self.cfg.stale_input_s:
            self.moved = False
        if self.moved or self.gripper_pending:
            return True
        return self.last_moved is not None and now - self.last_moved <= self.cfg.linger_s

    def step(self, now: float) -> Optional[HumanCommand]:
        """The human action for this control step, or None when the policy may act."""
        if not self.active(now):
            return None
        moved = self.moved
        dp, dr = (self.dp, self.dr) if moved else (np.zeros(3), np.zeros(3))
        self.gripper_pending = False
        return HumanCommand(np.concatenate([dp, dr, [self.gripper]]), moved)
