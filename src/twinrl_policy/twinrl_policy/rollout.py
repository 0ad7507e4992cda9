"""Run a policy in a Gym-style environment (the sim world, later the twin's envs).

The env contract is the one of ``twinrl_twin.sim.make_env``: ``reset(seed=, options=)``
returns ``(obs, info)``; ``step(action)`` returns ``(obs, reward, terminated, truncated,
info)``; observations hold ``third_person`` and ``wrist`` (H, W, 3) uint8 images and
``proprio`` (22,) and ``command`` (7,, the commanded target relative to the TCP; needed by
policies with ``model.command_input``); ``info["success"]`` and ``info["configuration"]`` describe the episode.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .inference import PolicyRunner

__all__ = ["run_episode"]


def run_episode(env, runner: PolicyRunner, seed: Optional[int] = None, options: Optional[dict] = None,
                max_steps: Optional[int] = None) -> dict:
    """One episode; returns success, steps, return, the configuration and the policy version.

    The episode ends when the env terminates or truncates (or after ``max_steps``). The
    actions come from ``runner`` (its input checks apply: a wrongly sized camera image raises
    ObservationError; a non-finite output raises NonFiniteActionError).
    """
    obs, info = env.reset(seed=seed, options=options)
    runner.reset()
    total, steps, success = 0.0, 0, bool(info.get("success", False))
    while True:
        result = runner.act(obs["third_person"], obs["wrist"], obs["proprio"], command=obs.get("command"),
                            step=steps)
        obs, reward, terminated, truncated, info = env.step(result.action)
        total += float(reward)
        steps += 1
        success = success or bool(info.get("success", False))
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    conf = info.get("configuration", {}) or {}
    return {"success": bool(success), "steps": steps, "return": total, "policy_version": runner.version,
            "configuration": {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, list, tuple)) else v)
                              for k, v in conf.items()}}
