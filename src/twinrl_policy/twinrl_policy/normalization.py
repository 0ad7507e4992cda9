"""Normalisation statistics: proprioception standardisation and action scaling.

The policy's head produces ``y`` in (-1, 1)^7 (tanh). :class:`NormStats` maps it to an
environment action ``a = center + half_range * y`` per dimension, where the range comes from
the training data (widened by a margin, never narrower than a fraction of the per-step limit)
and never exceeds the envelope's per-step limits (``config.ACTION_LIMITS``), so a policy
cannot ask for more than one step of motion. The gripper always spans [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ACTION_DIM, ACTION_LIMITS, PROPRIO_DIM

__all__ = ["NormStats"]


@dataclass
class NormStats:
    proprio_mean: np.ndarray      # (22,)
    proprio_std: np.ndarray       # (22,), > 0
    action_low: np.ndarray        # (7,)
    action_high: np.ndarray       # (7,), > low

    def __post_init__(self):
        self.proprio_mean = np.asarray(self.proprio_mean, np.float32).reshape(-1)
        self.proprio_std = np.asarray(self.proprio_std, np.float32).reshape(-1)
        self.action_low = np.asarray(self.action_low, np.float32).reshape(-1)
        self.action_high = np.asarray(self.action_high, np.float32).reshape(-1)
        self.validate()

    def validate(self) -> None:
        for name, want in (("proprio_mean", PROPRIO_DIM), ("proprio_std", PROPRIO_DIM),
                           ("action_low", ACTION_DIM), ("action_high", ACTION_DIM)):
            arr = getattr(self, name)
            if arr.shape != (want,):
                raise ValueError(f"norm_stats.{name}: expected {want} values, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"norm_stats.{name}: non-finite values")
        if np.any(self.proprio_std <= 0):
            raise ValueError("norm_stats.proprio_std: must be > 0")
        if np.any(self.action_high <= self.action_low):
            raise ValueError("norm_stats.action_high: must be above action_low in every dimension")
        limits = np.asarray(ACTION_LIMITS, np.float32)
        if np.any(self.action_high > limits + 1e-6) or np.any(self.action_low < -limits - 1e-6):
            raise ValueError(f"norm_stats: action range exceeds the per-step limits {list(ACTION_LIMITS)}")

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.action_high + self.action_low)

    @property
    def half_range(self) -> np.ndarray:
        return 0.5 * (self.action_high - self.action_low)

    # ---------------------------------------------------------------- construction
    @classmethod
    def default(cls) -> "NormStats":
        """Identity proprio scaling and the full per-step limits (an untrained policy)."""
        limits = np.asarray(ACTION_LIMITS, np.float32)
        return cls(np.zeros(PROPRIO_DIM), np.ones(PROPRIO_DIM), -limits, limits)

    @classmethod
    def from_data(cls, proprio: np.ndarray, actions: np.ndarray, margin: float = 0.1,
                  min_range: float = 0.1, min_std: float = 1e-3) -> "NormStats":
        proprio = np.asarray(proprio, np.float64).reshape(-1, PROPRIO_DIM)
        actions = np.asarray(actions, np.float64).reshape(-1, ACTION_DIM)
        if len(proprio) == 0 or len(actions) == 0:
            raise ValueError("cannot compute normalisation statistics from an empty dataset")
        limits = np.asarray(ACTION_LIMITS, np.float64)
        lo, hi = actions.min(0), actions.max(0)
        width = np.maximum(hi - lo, 1e-9)
        lo, hi = lo - margin * width, hi + margin * width
        # at least min_range of the limit wide, centred on the data
        need = np.maximum(min_range * 2.0 * limits - (hi - lo), 0.0)
        lo, hi = lo - need / 2, hi + need / 2
        lo, hi = np.clip(lo, -limits, limits), np.clip(hi, -limits, limits)
        lo[6], hi[6] = -1.0, 1.0  # gripper: the command range itself
        return cls(proprio.mean(0), np.maximum(proprio.std(0), min_std), lo, hi)

    # ---------------------------------------------------------------- mapping
    def normalize_action(self, action):
        """Environment action -> y in [-1, 1] (clipped)."""
        y = (np.asarray(action, np.float32) - self.center) / self.half_range
        return np.clip(y, -1.0, 1.0)

    def denormalize_action(self, y):
        return self.center + self.half_range * np.asarray(y, np.float32)

    def normalize_proprio(self, proprio):
        return (np.asarray(proprio, np.float32) - self.proprio_mean) / self.proprio_std

    def to_dict(self) -> dict:
        return {k: [float(v) for v in getattr(self, k)]
                for k in ("proprio_mean", "proprio_std", "action_low", "action_high")}

    @classmethod
    def from_dict(cls, data: dict) -> "NormStats":
        if not isinstance(data, dict):
            raise ValueError(f"norm_stats: expected a mapping, got {type(data).__name__}")
        want = {"proprio_mean", "proprio_std", "action_low", "action_high"}
        missing, extra = want - set(data), set(data) - want
        if missing or extra:
            raise ValueError(f"norm_stats: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}")
        return cls(**{k: data[k] for k in want})
