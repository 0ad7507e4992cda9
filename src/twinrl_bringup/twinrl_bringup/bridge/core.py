"""fr3_bridge core: everything between an incoming action and the backend, without ROS.

:class:`BridgeCore` owns the commanded Cartesian target and decides, for every action,
whether and how it reaches the backend:

* **e-stop** (latched until released explicitly): every action is rejected and the backend
  holds;
* **mode** (SetControlMode): ``POLICY`` takes policy actions, but a human action always wins
  and keeps the policy out for ``human_override_s`` after the human's last command;
  ``HUMAN`` takes only human actions; ``HOLD`` ignores all actions and holds;
* **envelope** (:class:`twinrl_bringup.safety.SafetyEnvelope`): NaN/inf rejection, per-step
  and velocity limits, workspace box, tilt, gripper range;
* **watchdog**: without a fresh accepted action the backend holds; the check runs every
  :meth:`tick` and fires once less than :meth:`hold_margin` (1.5 tick periods, at least
  30 ms) remains before ``watchdog_timeout``, so the hold starts within ``watchdog_timeout``
  of the last command even when a tick comes late on a loaded host;
* **force stop**: an external TCP force above the threshold latches a stop (cleared by a
  reset or by releasing the e-stop) and holds.

Every rejection is counted by reason; :meth:`status` gives the numbers the node publishes on
``/twinrl/fr3_bridge/status`` and ``/diagnostics``.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from twinrl_bringup.bridge.backend import Backend, CartesianTarget, RobotState
from twinrl_bringup.safety import SafetyEnvelope, SafetyResult

MODE_POLICY = 0
MODE_HUMAN = 1
MODE_HOLD = 2
MODE_NAMES = {MODE_POLICY: "policy", MODE_HUMAN: "human", MODE_HOLD: "hold"}

SOURCE_POLICY = 0
SOURCE_HUMAN = 1
SOURCE_SCRIPTED = 2

log = logging.getLogger("twinrl.fr3_bridge")


@dataclass
class Decision:
    """What happened to one action."""

    accepted: bool
    reason: str = ""                 # rejection / ignore reason or clip summary
    clipped: bool = False
    ignored: bool = False            # dropped by arbitration (not an error)
    intervention: bool = False       # the executed action came from the human
    target: Optional[CartesianTarget] = None


@dataclass
class Counters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0                # NaN/inf, malformed, e-stopped, force-stopped
    clipped: int = 0
    ignored: int = 0                 # arbitration: hold mode, human mode, human override
    interventions: int = 0           # accepted human actions
    watchdog_holds: int = 0
    force_stops: int = 0
    estops: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)


class BridgeCore:
    def __init__(self, backend: Backend, envelope: SafetyEnvelope, *,
                 clock: Callable[[], float] = time.monotonic,
                 human_override_s: float = 0.3,
                 max_target_lead: float = 0.05):
        self.backend = backend
        self.envelope = envelope
        self.clock = clock
        self.human_override_s = human_override_s
        self.max_target_lead = max_target_lead
        self.lock = threading.RLock()
        self.mode = MODE_POLICY
        self.estop = False
        self.force_stopped = False
        self.holding = True
        self.counters = Counters()
        self.last_rejection = ""
        self.last_command_time: Optional[float] = None
        self.last_human_time: Optional[float] = None
        self.last_state: Optional[RobotState] = None
        self.target: Optional[CartesianTarget] = None
        self.last_tick: Optional[float] = None
        self.tick_period = envelope.cfg.control_period / 5.0
        self.resetting = False
        self.last_watchdog_latency: Optional[float] = None   # s from the last command to the hold
        self._log_state: dict[str, tuple[float, int]] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.backend.start()
        self.sync_target()
        self.backend.hold()

    def sync_target(self) -> Optional[CartesianTarget]:
        """Set the target to the measured TCP pose (clipped into the envelope)."""
        with self.lock:
            state = self.backend.read_state()
            self.last_state = state
            if state is None:
                return None
            pos = self.envelope.clip_position(state.tcp_position)
            quat = np.asarray(state.tcp_quaternion, dtype=float)
            gripper = self.target.gripper if self.target is not None else -1.0
            self.target = CartesianTarget(pos, quat / np.linalg.norm(quat), gripper, self.clock())
            return self.target

    # -- actions -------------------------------------------------------------------------------
    def _reject(self, reason: str, key: str) -> Decision:
        self.counters.rejected += 1
        self.counters.reasons[key] += 1
        self.last_rejection = reason
        self._log_rejection(key, reason)
        return Decision(False, reason)

    def _log_rejection(self, key: str, reason: str) -> None:
        """Log a rejection; repeats of one kind at most once a second, with their count."""
        now = time.monotonic()
        last, suppressed = self._log_state.get(key, (-1e9, 0))
        if now - last >= 1.0:
            more = f" (+{suppressed} more of this kind in the last second)" if suppressed else ""
            log.warning("action rejected: %s%s", reason, more)
            self._log_state[key] = (now, 0)
        else:
            self._log_state[key] = (last, suppressed + 1)

    def _ignore(self, reason: str, key: str) -> Decision:
        self.counters.ignored += 1
        self.counters.reasons[key] += 1
        return Decision(False, reason, ignored=True)

    def on_action(self, action7, source: int = SOURCE_POLICY, intervention: bool = False) -> Decision:
        """Arbitrate, check and (if accepted) send one 7-D delta action to the backend."""
        with self.lock:
            now = self.clock()
            self.counters.received += 1
            human = source == SOURCE_HUMAN or intervention
            if self.estop:
                return self._reject("e-stop latched", "estop")
            if self.force_stopped:
                return self._reject("force stop latched (reset or release the e-stop)", "force_stop")
            if self.resetting:
                return self._ignore("reset in progress", "resetting")
            if self.mode == MODE_HOLD:
                return self._ignore("hold mode", "hold_mode")
            if self.mode == MODE_HUMAN and not human:
                return self._ignore("human mode: non-human action ignored", "human_mode")
            if (self.mode == MODE_POLICY and not human and self.last_human_time is not None
                    and now - self.last_human_time < self.human_override_s):
                return self._ignore("human intervention in progress", "human_override")
            if self.target is None and self.sync_target() is None:
                return self._reject("no robot state yet", "no_state")
            self._rebase_if_lagging()
            dt = None
            if self.last_command_time is not None and not self.holding:
                dt = max(now - self.last_command_time, 1e-3)
            res: SafetyResult = self.envelope.apply(action7, self.target.position, self.target.quaternion, dt=dt)
            if not res.accepted:
                key = "non_finite" if "non-finite" in res.reason else "malformed"
                return self._reject(res.reason, key)
            if res.clipped:
                self.counters.clipped += 1
                self.counters.reasons["clipped"] += 1
            self.counters.accepted += 1
            if human:
                self.counters.interventions += 1
                self.last_human_time = now
            self.target = CartesianTarget(res.position, res.quaternion, res.gripper, now)
            self.last_command_time = now
            self.holding = False
            self.backend.command(self.target)
            return Decision(True, res.reason, clipped=res.clipped, intervention=human, target=self.target)

    def _rebase_if_lagging(self) -> None:
        """If the arm lags far behind the target (contact, slow controller), restart from it."""
        s = self.backend.read_state()
        if s is not None:
            self.last_state = s
        if s is None or self.target is None:
            return
        lead = float(np.linalg.norm(np.asarray(self.target.position) - np.asarray(s.tcp_position)))
        if math.isfinite(lead) and lead > self.max_target_lead:
            self.target = CartesianTarget(self.envelope.clip_position(s.tcp_position),
                                          np.asarray(s.tcp_quaternion, dtype=float),
                                          self.target.gripper, self.clock())

    # -- periodic ------------------------------------------------------------------------------
    def tick(self) -> Optional[RobotState]:
        """One loop iteration: read state, force and watchdog checks, advance the backend."""
        with self.lock:
            now = self.clock()
            dt = self.tick_period if self.last_tick is None else max(0.0, now - self.last_tick)
            self.last_tick = now
            state = self.backend.read_state()
            if state is None and not self.holding and not self.resetting:
                self.counters.reasons["state_lost"] += 1
                self.last_rejection = "robot state missing or stale: holding"
                log.error(self.last_rejection)
                self.holding = True
                self.backend.hold()
            if state is not None:
                self.last_state = state
                if not self.force_stopped and self.envelope.force_exceeded(state.external_force):
                    self.force_stopped = True
                    self.counters.force_stops += 1
                    self.counters.reasons["force_stop"] += 1
                    f = np.asarray(state.external_force, dtype=float)
                    self.last_rejection = (f"external force {np.linalg.norm(f):.1f} N above "
                                           f"{self.envelope.cfg.force_threshold:.1f} N: stopped")
                    log.error(self.last_rejection)
                    self._hold()
            if not self.holding and not self.resetting:
                if self.estop or self.force_stopped or self.mode == MODE_HOLD:
                    self._hold()
                else:
                    self._check_watchdog(now)
            self.backend.tick(dt if dt > 0 else self.tick_period)
            return state

    def _check_watchdog(self, now: float) -> None:
        if self.last_command_time is None or (
                now - self.last_command_time + self.hold_margin() > self.envelope.cfg.watchdog_timeout):
            self.counters.watchdog_holds += 1
            self.counters.reasons["watchdog"] += 1
            if self.last_command_time is not None:
                self.last_watchdog_latency = now - self.last_command_time
            self._hold()

    def watchdog_deadline(self) -> Optional[float]:
        """Clock time at which the watchdog must hold (None while holding or resetting).
        A control loop sleeps until the earlier of its next period and this deadline, so the
        hold does not wait for the next polling tick."""
        with self.lock:
            if self.holding or self.resetting or self.last_command_time is None:
                return None
            return self.last_command_time + self.envelope.cfg.watchdog_timeout - self.hold_margin()

    def check_watchdog(self) -> None:
        """Only the watchdog part of :meth:`tick` (no backend step), for deadline wake-ups."""
        with self.lock:
            if not self.holding and not self.resetting:
                self._check_watchdog(self.clock())

    def _hold(self) -> None:
        self.holding = True
        self.backend.hold()
        # the next action starts from where the arm actually is
        self.sync_target()

    def hold_margin(self) -> float:
        """Time before ``watchdog_timeout`` at which the hold is issued: covers one polling
        period where the loop only polls, and thread wake-up jitter on a loaded host."""
        return max(1.5 * self.tick_period, 0.05)

    # -- operator controls ---------------------------------------------------------------------
    def set_estop(self, engaged: bool) -> str:
        with self.lock:
            if engaged:
                if not self.estop:
                    self.counters.estops += 1
                    log.error("e-stop engaged")
                self.estop = True
                self._hold()
                return "e-stop engaged"
            was = self.estop or self.force_stopped
            self.estop = False
            self.force_stopped = False
            self.sync_target()
            return "e-stop released" if was else "e-stop was not engaged"

    def set_mode(self, mode: int) -> tuple[bool, str, int]:
        with self.lock:
            prev = self.mode
            if mode not in MODE_NAMES:
                return False, f"unknown mode {mode} (0 policy, 1 human, 2 hold)", prev
            self.mode = mode
            if mode == MODE_HOLD and not self.holding:
                self._hold()
            return True, f"mode {MODE_NAMES[prev]} -> {MODE_NAMES[mode]}", prev

    def reset(self, configuration: dict) -> tuple[bool, str, dict]:
        with self.lock:
            if self.estop:
                return False, "e-stop latched: release it before a reset", configuration
            if self.resetting:
                return False, "a reset is already in progress", configuration
            self.holding = True
            self.backend.hold()
            self.resetting = True
        try:
            # A backend that moves the arm home itself over seconds (real) needs the state
            # callbacks and ticks to keep running; others (sim) reset under the lock.
            if getattr(self.backend, "reset_runs_unlocked", False):
                applied = self.backend.reset(configuration)
            else:
                with self.lock:
                    applied = self.backend.reset(configuration)
        except Exception as exc:  # backend errors are reported, never crash the bridge
            log.error("reset failed: %s", exc)
            with self.lock:
                self.resetting = False
                self.sync_target()
            return False, f"reset failed: {exc}", configuration
        with self.lock:
            self.resetting = False
            self.force_stopped = False
            self.last_command_time = None
            self.last_human_time = None
            if self.target is not None:
                self.target.gripper = -1.0
            self.sync_target()
        return True, "reset done", applied if applied is not None else configuration

    # -- reporting -----------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            c = self.counters
            return {
                "backend": getattr(self.backend, "name", type(self.backend).__name__),
                "mode": self.mode,
                "estop": self.estop,
                "force_stopped": self.force_stopped,
                "holding": self.holding,
                "commands_received": c.received,
                "commands_accepted": c.accepted,
                "commands_rejected": c.rejected,
                "commands_clipped": c.clipped,
                "commands_ignored": c.ignored,
                "interventions": c.interventions,
                "watchdog_holds": c.watchdog_holds,
                "force_stops": c.force_stops,
                "estops": c.estops,
                "last_rejection": self.last_rejection,
                "watchdog_latency_ms": (None if self.last_watchdog_latency is None
                                        else round(self.last_watchdog_latency * 1000.0, 1)),
                "reasons": dict(c.reasons),
            }
