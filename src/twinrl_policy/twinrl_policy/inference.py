"""Policy inference without ROS: input checks, one action per observation, hot reload.

:class:`PolicyRunner` holds a verified checkpoint and turns one observation (third-person and
wrist RGB images, 22-D proprioception, task) into one 7-D action within the per-step limits.

* Bad input raises :class:`ObservationError` naming what is wrong (image size or encoding,
  proprioception shape or NaN, unknown task); nothing is computed.
* A non-finite network output raises :class:`NonFiniteActionError`: no action is returned,
  so a caller can never publish NaN.
* Policies that predict action chunks (``model.action_chunk`` > 1) are run with temporal
  ensembling: the action for a step averages what the last chunks predicted for it (weights
  ``exp(-model.chunk_ensemble_decay * age)``). :meth:`PolicyRunner.reset` forgets those
  predictions (a new episode); ``act(..., step=0)`` or a step number that goes back does too.
* :meth:`PolicyRunner.reload` swaps in a new checkpoint only when its version is greater
  than the current one, the file's sha256 matches the announced digest and the checkpoint
  verifies (twinrl_policy.checkpoint); on any failure it raises :class:`ReloadError` and the
  old weights stay in use. Reload and act may run in different threads.

Message-level helpers (:func:`decode_image`, :func:`proprio_from_joint_state`) work on plain
fields so they are testable without ROS.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .checkpoint import CheckpointError, PolicyCheckpoint, file_sha256, load_checkpoint
from .config import COMMAND_DIM, PROPRIO_DIM
from .model import VisuomotorPolicy, images_to_tensor

__all__ = [
    "ObservationError",
    "NonFiniteActionError",
    "ReloadError",
    "InferenceResult",
    "PolicyRunner",
    "decode_image",
    "proprio_from_joint_state",
    "ErrorThrottle",
    "ARM_JOINTS",
    "FINGER_JOINTS",
]

ARM_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("fr3_finger_joint1", "fr3_finger_joint2")


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the bad part."""


class NonFiniteActionError(RuntimeError):
    """The network produced NaN/inf; no action must be sent."""


class ReloadError(RuntimeError):
    """A new policy version was not loaded; the previous weights are still in use."""


@dataclass
class InferenceResult:
    action: np.ndarray      # (7,) float64, within the per-step limits
    latency_ms: float       # preprocessing + forward pass
    version: int


def decode_image(name: str, height: int, width: int, encoding: str, step: int, data,
                 expected_hw: Sequence[int]) -> np.ndarray:
    """sensor_msgs/Image fields -> (H, W, 3) uint8 RGB; ObservationError on anything else."""
    enc = str(encoding).lower()
    if enc not in ("rgb8", "bgr8"):
        raise ObservationError(f"{name}: unsupported encoding {encoding!r} (expected rgb8)")
    H, W = int(expected_hw[0]), int(expected_hw[1])
    if (int(height), int(width)) != (H, W):
        raise ObservationError(f"{name}: image is {height}x{width} (HxW), the policy expects {H}x{W}")
    step = int(step) or W * 3
    buf = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray))
                        else data, dtype=np.uint8)
    if step < W * 3 or buf.size < step * H:
        raise ObservationError(f"{name}: {buf.size} data bytes with step {step} do not hold a {H}x{W} rgb8 image")
    img = buf[: step * H].reshape(H, step)[:, : W * 3].reshape(H, W, 3)
    if enc == "bgr8":
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def proprio_from_joint_state(names: Sequence[str], positions: Sequence[float], velocities: Sequence[float],
                             tcp_position: Sequence[float], tcp_quaternion: Sequence[float],
                             gripper_width: Optional[float] = None) -> np.ndarray:
    """(22,) proprioception from a JointState and a TCP pose (quaternion x, y, z, w).

    Arm joints are picked by name (fr3_joint1..7) when present, else the first seven entries;
    the gripper width is ``gripper_width`` if given, else the sum of the finger joints
    (fr3_finger_joint1/2), else 0.
    """
    names = list(names)
    pos = np.asarray(positions, np.float64)
    vel = np.asarray(velocities, np.float64) if len(velocities) else np.zeros_like(pos)
    if len(vel) != len(pos):
        raise ObservationError(f"joint_states: {len(pos)} positions but {len(vel)} velocities")
    if all(j in names for j in ARM_JOINTS):
        idx = [names.index(j) for j in ARM_JOINTS]
    elif len(pos) >= 7:
        idx = list(range(7))
    else:
        raise ObservationError(f"joint_states: need 7 arm joints, got {len(pos)} ({', '.join(names)})")
    if gripper_width is None:
        fingers = [names.index(j) for j in FINGER_JOINTS if j in names]
        gripper_width = float(pos[fingers].sum()) if fingers else 0.0
    q = np.asarray(tcp_quaternion, np.float64).reshape(4)
    vec = np.concatenate([pos[idx], vel[idx], np.asarray(tcp_position, np.float64).reshape(3), q,
                          [float(gripper_width)]]).astype(np.float32)
    return vec


class ErrorThrottle:
    """Rate-limits repeated error messages per key: at most one every ``period`` seconds."""

    def __init__(self, period: float = 2.0):
        self.period = float(period)
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, key: str, now: Optional[float] = None) -> Optional[int]:
        """None when the message should be suppressed, else how many were suppressed since."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self.suppressed.pop(key, 0)


class PolicyRunner:
    def __init__(self, checkpoint, task: Optional[str] = None, deterministic: bool = True,
                 num_threads: int = 1, seed: int = 0):
        if num_threads > 0:
            torch.set_num_threads(int(num_threads))
        self.deterministic = bool(deterministic)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._lock = threading.Lock()
        ckpt = checkpoint if isinstance(checkpoint, PolicyCheckpoint) else load_checkpoint(checkpoint)
        self.path = None if isinstance(checkpoint, PolicyCheckpoint) else Path(checkpoint)
        if task is None or task == "":
            if len(ckpt.tasks) != 1:
                raise ValueError(f"the checkpoint knows several tasks ({', '.join(ckpt.tasks)}); choose one")
            task = ckpt.tasks[0]
        ckpt.model_config.task_index(task)
        self.task = task
        self._policy, self._ckpt, self._version = ckpt.build_policy(), ckpt, ckpt.version
        self._plans: list[np.ndarray] = []     # recent action chunks, newest first (temporal ensembling)
        self._last_step: Optional[int] = None

    def reset(self) -> None:
        """Forget the action chunks predicted so far (call at the start of an episode)."""
        with self._lock:
            self._plans = []
            self._last_step = None

    @property
    def version(self) -> int:
        return self._version

    @property
    def checkpoint(self) -> PolicyCheckpoint:
        return self._ckpt

    @property
    def policy(self) -> VisuomotorPolicy:
        return self._policy

    def image_size(self, key: str) -> tuple[int, int]:
        cfg = self._ckpt.model_config
        return tuple(cfg.third_person_size if key == "third_person" else cfg.wrist_size)

    # ------------------------------------------------------------------ inference
    def _check(self, cfg, third_person, wrist, proprio) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = []
        for name, img, size in (("third_person", third_person, cfg.third_person_size),
                                ("wrist", wrist, cfg.wrist_size)):
            img = np.asarray(img)
            if img.dtype != np.uint8:
                raise ObservationError(f"{name}: expected uint8 RGB, got {img.dtype}")
            if img.shape != (size[0], size[1], 3):
                raise ObservationError(f"{name}: image shape {img.shape}, the policy expects "
                                       f"({size[0]}, {size[1]}, 3)")
            out.append(img)
        p = np.asarray(proprio, np.float32).reshape(-1)
        if p.shape != (PROPRIO_DIM,):
            raise ObservationError(f"proprio: expected {PROPRIO_DIM} values, got {p.size}")
        if not np.all(np.isfinite(p)):
            raise ObservationError(f"proprio: non-finite values at {np.flatnonzero(~np.isfinite(p)).tolist()}")
        return out[0], out[1], p

    @property
    def needs_command(self) -> bool:
        """Whether the current policy takes the commanded target (``model.command_input``)."""
        return bool(self._ckpt.model_config.command_input)

    @staticmethod
    def _check_command(command) -> np.ndarray:
        if command is None:
            raise ObservationError("command: this policy takes the commanded target relative to the TCP "
                                   "(model.command_input); none was given")
        c = np.asarray(command, np.float32).reshape(-1)
        if c.shape != (COMMAND_DIM,):
            raise ObservationError(f"command: expected {COMMAND_DIM} values, got {c.size}")
        if not np.all(np.isfinite(c)):
            raise ObservationError(f"command: non-finite values at {np.flatnonzero(~np.isfinite(c)).tolist()}")
        return c

    def _ensemble(self, chunk: np.ndarray, step: Optional[int], decay: float) -> np.ndarray:
        """Add a new (H, 7) chunk and return the temporally ensembled current action."""
        with self._lock:
            if step is not None:
                if self._last_step is not None and step <= self._last_step:
                    self._plans = []                 # a new episode (or a repeated step)
                self._last_step = int(step)
            plans = [chunk] + self._plans
            self._plans = [p[1:] for p in plans if len(p) > 1]    # what each plan says for the next step
        ages = np.arange(len(plans), dtype=np.float64)
        w = np.exp(-decay * (ages - ages.max() if decay < 0 else ages))
        return (w[:, None] * np.stack([p[0] for p in plans])).sum(0) / w.sum()

    def act(self, third_person, wrist, proprio, task: Optional[str] = None, command=None,
            step: Optional[int] = None) -> InferenceResult:
        """One action. ``command``: the commanded target relative to the TCP (7 values,
        ``twinrl_bringup.dataset.COMMAND_LAYOUT``), needed when the policy takes it. ``step``:
        the episode's step number, when known: a chunking policy starts a new plan when it is
        not greater than the last one."""
        t0 = time.perf_counter()
        with self._lock:
            policy, ckpt, version = self._policy, self._ckpt, self._version
        task = task or self.task
        try:
            task_index = ckpt.model_config.task_index(task)
        except ValueError as exc:
            raise ObservationError(f"task: {exc}") from None
        tp, wr, p = self._check(ckpt.model_config, third_person, wrist, proprio)
        batch = {"third_person": images_to_tensor(tp), "wrist": images_to_tensor(wr),
                 "proprio": torch.from_numpy(p).unsqueeze(0),
                 "task": torch.tensor([task_index], dtype=torch.long)}
        if ckpt.model_config.command_input:
            batch["command"] = torch.from_numpy(self._check_command(command)).unsqueeze(0)
        with torch.inference_mode():
            if policy.chunk == 1:
                a = policy.act(batch, deterministic=self.deterministic, generator=self.generator)[0]
                a = a.numpy().astype(np.float64)
            else:
                chunk = policy.act_chunk(batch, deterministic=self.deterministic, generator=self.generator)[0]
                chunk = chunk.numpy().astype(np.float64)
                if not np.all(np.isfinite(chunk)):  # never let a NaN plan into the ensemble
                    raise NonFiniteActionError(f"policy version {version} produced a non-finite action chunk")
                a = self._ensemble(chunk, step, ckpt.model_config.chunk_ensemble_decay)
        if not np.all(np.isfinite(a)):
            raise NonFiniteActionError(f"policy version {version} produced a non-finite action {a.tolist()}")
        a = np.clip(a, ckpt.norm_stats.action_low, ckpt.norm_stats.action_high)
        return InferenceResult(a, (time.perf_counter() - t0) * 1e3, version)

    # ------------------------------------------------------------------ reload
    def reload(self, path, version: int, sha256: str = "") -> PolicyCheckpoint:
        """Load checkpoint ``path`` (or ``file://`` URI) announced as ``version`` with digest ``sha256``."""
        path = str(path)
        if path.startswith("file://"):
            path = path[len("file://"):]
        path = Path(path)
        if int(version) <= self.version:
            raise ReloadError(f"ignoring policy version {version} from {path}: not newer than the "
                              f"current version {self.version}")
        if sha256:
            try:
                actual = file_sha256(path)
            except OSError as exc:
                raise ReloadError(f"cannot read {path}: {exc.strerror or exc}; keeping version {self.version}") from None
            if actual != sha256.lower():
                raise ReloadError(f"{path}: sha256 {actual} does not match the announced {sha256}; "
                                  f"keeping version {self.version}")
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise ReloadError(f"rejected checkpoint: {exc}; keeping version {self.version}") from None
        if self.task not in ckpt.tasks:
            raise ReloadError(f"{path}: the new policy does not know task {self.task!r} "
                              f"(it knows {', '.join(ckpt.tasks)}); keeping version {self.version}")
        if ckpt.version not in (0, int(version)):  # 0: the file does not carry a version
            raise ReloadError(f"{path}: file holds version {ckpt.version}, announced {version}; "
                              f"keeping version {self.version}")
        policy = ckpt.build_policy()
        with self._lock:
            self._policy, self._ckpt, self.path, self._version = policy, ckpt, path, int(version)
            self._plans, self._last_step = [], None     # the old policy's plans are not the new one's
        return ckpt
