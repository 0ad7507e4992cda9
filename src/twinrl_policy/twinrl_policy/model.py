"""The visuomotor policy: backbone (registry) + MLP trunk + tanh-squashed Gaussian head.

Batches are dicts of tensors:

* ``third_person`` (B, 3, H, W) and ``wrist`` (B, 3, h, w): float RGB in [0, 1]
  (:func:`images_to_tensor` converts (B, H, W, 3) uint8);
* ``proprio`` (B, 22): raw proprioception (``twinrl_bringup.dataset.PROPRIO_LAYOUT``); the
  model standardises it with its normalisation statistics and, with ``cfg.proprio_rotation``
  "rot6d" (the default), feeds the TCP quaternion as two columns of its rotation matrix
  (:func:`quat_to_rot6d`) instead;
* ``command`` (B, 7): the commanded target relative to the TCP
  (``twinrl_bringup.dataset.COMMAND_LAYOUT``), when ``cfg.command_input`` (the default);
* ``task`` (B,) int64: index into ``cfg.tasks`` (:meth:`VisuomotorPolicy.task_ids`);
* ``instruction`` (B, instruction_dim): only when the config uses an instruction encoder.

The head's distribution lives in the normalised action space y in (-1, 1)^7; environment
actions are ``a = center + half_range * y`` (:class:`~twinrl_policy.normalization.NormStats`),
so they always lie within the per-step limits. For RL the policy is the actor:
:meth:`sample` gives reparameterised actions with log-probabilities, :meth:`log_prob`
scores given actions (tanh and scaling corrections included), :meth:`mode` is the
deterministic action. With ``cfg.action_chunk`` > 1 the head also predicts the next actions
(:meth:`chunk_heads`, :meth:`act_chunk`); the actor is always the current action's distribution.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .backbones import build_backbone
from .config import ACTION_DIM, COMMAND_DIM, COMMAND_SCALE, PROPRIO_DIM, ModelConfig
from .distributions import TanhGaussian
from .normalization import NormStats

QUAT = 17          # proprio[17:21]: TCP orientation (x, y, z, w), PROPRIO_LAYOUT


def quat_to_rot6d(q: torch.Tensor) -> torch.Tensor:
    """(B, 4) quaternions (x, y, z, w) -> (B, 6): the first two columns of their rotation
    matrices. Continuous in the rotation and equal for q and -q (the double cover the w >= 0
    convention cuts through when w ~ 0)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    x, y, z, w = q.unbind(-1)
    col0 = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)], dim=-1)
    col1 = torch.stack([2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w)], dim=-1)
    return torch.cat([col0, col1], dim=-1)


OBJECT_DIM = 4   # object head output: x, y (standardised), sin k*yaw, cos k*yaw

__all__ = ["VisuomotorPolicy", "images_to_tensor", "non_finite_tensors"]


def images_to_tensor(images) -> torch.Tensor:
    """(B, H, W, 3) or (H, W, 3) uint8 (numpy or tensor) -> (B, 3, H, W) float32 in [0, 1]."""
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images: expected (B, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()


class VisuomotorPolicy(nn.Module):
    def __init__(self, cfg: ModelConfig, norm: NormStats | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        layers, dim = [], self.backbone.feature_dim
        for h in cfg.trunk_hidden:
            layers += [nn.Linear(dim, h), nn.ReLU(inplace=True)]
            dim = h
        self.trunk = nn.Sequential(*layers)
        # one (mean, log_std) per action of the chunk (cfg.action_chunk), the current action first
        self.chunk = int(cfg.action_chunk)
        self.mean_head = nn.Linear(dim, ACTION_DIM * self.chunk)
        self.log_std_head = nn.Linear(dim, ACTION_DIM * self.chunk)
        # (x, y, sin k*yaw, cos k*yaw) of the object, an auxiliary training signal (cfg.object_head)
        self.object_head = nn.Linear(self.backbone.feature_dim, OBJECT_DIM) if cfg.object_head else None
        with torch.no_grad():
            self.mean_head.weight.mul_(0.1)
            self.mean_head.bias.zero_()
            self.log_std_head.weight.mul_(0.1)
            self.log_std_head.bias.fill_(cfg.init_log_std)
        # normalisation lives in the checkpoint's norm_stats, not in the state dict
        for name, size in (("proprio_mean", PROPRIO_DIM), ("proprio_std", PROPRIO_DIM),
                           ("action_center", ACTION_DIM), ("action_half_range", ACTION_DIM)):
            self.register_buffer(name, torch.zeros(size), persistent=False)
        self.register_buffer("command_scale", torch.tensor(COMMAND_SCALE, dtype=torch.float32), persistent=False)
        self.norm = None
        self.set_norm_stats(norm or NormStats.default())

    # ------------------------------------------------------------------ setup
    def set_norm_stats(self, norm: NormStats) -> None:
        self.norm = norm
        self.proprio_mean.copy_(torch.as_tensor(norm.proprio_mean))
        self.proprio_std.copy_(torch.as_tensor(norm.proprio_std))
        self.action_center.copy_(torch.as_tensor(norm.center))
        self.action_half_range.copy_(torch.as_tensor(norm.half_range))

    def task_ids(self, tasks: str | Sequence[str], batch: int | None = None) -> torch.Tensor:
        if isinstance(tasks, str):
            tasks = [tasks] * (batch or 1)
        return torch.tensor([self.cfg.task_index(t) for t in tasks], dtype=torch.long)

    # ------------------------------------------------------------------ forward
    def _check(self, batch: dict) -> None:
        for key, size in (("third_person", self.cfg.third_person_size), ("wrist", self.cfg.wrist_size)):
            x = batch[key]
            if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != tuple(size):
                raise ValueError(f"{key}: expected (B, 3, {size[0]}, {size[1]}), got {tuple(x.shape)}")
        if batch["proprio"].shape[-1] != PROPRIO_DIM:
            raise ValueError(f"proprio: expected (B, {PROPRIO_DIM}), got {tuple(batch['proprio'].shape)}")
        if self.cfg.command_input:
            c = batch.get("command")
            if c is None:
                raise ValueError("command: this policy takes the commanded target (model.command_input); "
                                 "the batch has no 'command'")
            if c.ndim != 2 or c.shape[-1] != COMMAND_DIM:
                raise ValueError(f"command: expected (B, {COMMAND_DIM}), got {tuple(c.shape)}")

    def features(self, batch: dict) -> torch.Tensor:
        """The backbone's features (B, feature_dim) of a checked batch."""
        self._check(batch)
        inputs = dict(batch)
        raw = batch["proprio"].to(torch.float32)
        proprio = (raw - self.proprio_mean) / self.proprio_std
        if self.cfg.proprio_rotation == "rot6d":
            proprio = torch.cat([proprio[:, :QUAT], quat_to_rot6d(raw[:, QUAT:QUAT + 4]), proprio[:, QUAT + 4:]], dim=-1)
        if self.cfg.command_input:
            proprio = torch.cat([proprio, batch["command"].to(torch.float32) / self.command_scale], dim=-1)
        inputs["proprio"] = proprio
        return self.backbone(inputs)

    def chunk_heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussians of the whole action chunk, each (B, chunk, 7)."""
        h = self.trunk(features)
        mean = self.mean_head(h).reshape(-1, self.chunk, ACTION_DIM)
        log_std = self.log_std_head(h).clamp(self.cfg.log_std_min, self.cfg.log_std_max)
        return mean, log_std.reshape(-1, self.chunk, ACTION_DIM)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian of the current action from backbone features."""
        mean, log_std = self.chunk_heads(features)
        return mean[:, 0], log_std[:, 0]

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian of the current action, each (B, 7)."""
        return self.heads(self.features(batch))

    def distribution(self, batch: dict) -> TanhGaussian:
        return TanhGaussian(*self(batch))

    # ------------------------------------------------------------------ actions
    def to_env(self, y: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_half_range * y

    def to_normalized(self, action: torch.Tensor) -> torch.Tensor:
        return ((action - self.action_center) / self.action_half_range).clamp(-1.0, 1.0)

    @property
    def log_scale(self) -> torch.Tensor:
        """log |d a / d y| summed over dimensions (constant per policy)."""
        return self.action_half_range.log().sum()

    def log_prob(self, batch: dict, action: torch.Tensor) -> torch.Tensor:
        """log pi(a|s) of environment actions (B, 7) -> (B,)."""
        return self.distribution(batch).log_prob(self.to_normalized(action)) - self.log_scale

    def sample(self, batch: dict, generator: torch.Generator | None = None):
        """Reparameterised environment actions (B, 7) and their log-probabilities (B,)."""
        y, logp = self.distribution(batch).rsample(generator)
        return self.to_env(y), logp - self.log_scale

    def mode(self, batch: dict) -> torch.Tensor:
        mean, _ = self(batch)
        return self.to_env(torch.tanh(mean))

    @torch.no_grad()
    def act(self, batch: dict, deterministic: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
        if deterministic:
            return self.mode(batch)
        return self.to_env(self.distribution(batch).sample(generator))

    @torch.no_grad()
    def act_chunk(self, batch: dict, deterministic: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The whole predicted action chunk in environment units, (B, chunk, 7)."""
        dist = TanhGaussian(*self.chunk_heads(self.features(batch)))
        return self.to_env(dist.mode() if deterministic else dist.sample(generator))

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of parameters/buffers holding non-finite values."""
    bad = []
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad

