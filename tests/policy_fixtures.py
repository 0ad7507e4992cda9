"""Shared helpers (no tests) for the policy, checkpoint and SFT tests: tiny synthetic
demonstration datasets and policy configs.

The demonstrations follow a simple learnable rule: a bright square's horizontal position in
the third-person image sets dx, the wrist image's colour (red vs blue) sets the gripper, the
TCP's y position sets dy. Images are small so training takes seconds on one core.
"""
from __future__ import annotations

import numpy as np

from twinrl_bringup.dataset import DatasetWriter, EpisodeData
from twinrl_policy.config import ModelConfig, SFTConfig

TP, WR = (32, 32), (16, 16)


def tiny_model_config(**kw) -> ModelConfig:
    base = dict(third_person_size=TP, wrist_size=WR,
                third_person_convs=[(8, 3, 2), (16, 3, 2)], wrist_convs=[(8, 3, 2), (16, 3, 1)],
                image_feature_dim=16, proprio_hidden=16, task_embedding_dim=4, trunk_hidden=[64, 64],
                command_input=False)     # the rule below does not use it; tests of the input set it
    base.update(kw)
    return ModelConfig(**base)


def tiny_sft_config(**kw) -> SFTConfig:
    base = dict(steps=200, batch_size=32, learning_rate=3e-3, log_every=10, save_every=50,
                shift_pixels=8, brightness=0.1, contrast=0.1, saturation=0.1, num_threads=1)
    base.update(kw)
    return SFTConfig(**base)


def rule_observation(rng: np.random.Generator, n: int):
    """n observations and the rule's actions."""
    u = rng.uniform(-1.0, 1.0, n)
    grip = rng.choice([-1.0, 1.0], n)
    tp = rng.integers(0, 60, (n, *TP, 3), dtype=np.uint8)
    for i in range(n):
        c = int(round((u[i] + 1) / 2 * (TP[1] - 9))) + 4
        tp[i, 12:20, c - 4:c + 4] = 255
    wr = rng.integers(0, 40, (n, *WR, 3), dtype=np.uint8)
    wr[grip > 0, :, :, 0] += 200
    wr[grip < 0, :, :, 2] += 200
    proprio = rng.normal(0, 0.1, (n, 22)).astype(np.float32)
    proprio[:, 14:17] = rng.uniform([0.3, -0.3, 0.1], [0.7, 0.3, 0.4], (n, 3))
    proprio[:, 17:21] = [1.0, 0.0, 0.0, 0.0]
    actions = np.zeros((n, 7), np.float32)
    actions[:, 0] = 0.04 * u
    actions[:, 1] = -0.1 * proprio[:, 15]
    actions[:, 6] = grip
    return {"third_person": tp, "wrist": wr, "proprio": proprio}, actions


def write_rule_dataset(root, episodes: int, steps: int, source: str, task: str = "pick_and_place",
                       seed: int = 0):
    rng = np.random.default_rng(seed)
    w = DatasetWriter(root)
    for e in range(episodes):
        obs, act = rule_observation(rng, steps + 1)
        w.write_episode(EpisodeData(
            # fixed ids: the loader orders episodes by file name, so random ids would change the
            # training data order (and the trained policy) from run to run
            episode_id=f"{task}-{source}-seed{seed}-{e:03d}",
            task=task, observations=obs, actions=act[:steps], rewards=np.zeros(steps, np.float32),
            terminated=np.zeros(steps, bool), truncated=np.eye(1, steps, steps - 1, dtype=bool)[0],
            success=np.zeros(steps, bool), source=np.full(steps, {"twin": 1, "real": 0, "demo": 2}[source]),
            episode_source=source))
    return root
