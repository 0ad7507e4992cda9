"""Backbone registry: the observation encoder in front of the tanh-Gaussian head.

A backbone turns one batch of observations into a feature vector per sample. The default,
``conv_small``, trains from scratch on a CPU: a small conv net per camera ending in a spatial
softmax (image keypoints), an MLP over the normalised proprioception, a task embedding and,
optionally, an instruction embedding.

Interface (what a larger pretrained backbone, e.g. a VLA such as Octo, OpenVLA or pi0, must
provide to be plugged in; see docs/policy.md):

* a factory ``factory(cfg: ModelConfig) -> torch.nn.Module`` registered under a name, either
  in code with :func:`register_backbone` or from another package through the entry-point
  group ``twinrl.policy_backbones`` (``name = module:factory``);
* the module has an int attribute ``feature_dim`` and ``forward(batch) -> (B, feature_dim)``
  where ``batch`` holds ``third_person`` (B, 3, H, W) float in [0, 1], ``wrist``
  (B, 3, h, w), ``proprio`` (B, ``cfg.proprio_features``: 24 with the default
  ``proprio_rotation`` rot6d, 22 with quaternion) standardised, with the 7 command values
  scaled by ``COMMAND_SCALE`` appended when ``cfg.command_input``, ``task`` (B,) int64 indices into
  ``cfg.tasks`` and, when ``cfg.instruction_dim > 0``, ``instruction`` (B, instruction_dim);
* its weights live in its ``state_dict`` (they are saved in the policy checkpoint); a factory
  that starts from pretrained weights reads them from a local path given in
  ``cfg.backbone_options`` (nothing is downloaded).

Instruction encoders (``cfg.instruction_encoder``) are a second, smaller registry: a
callable ``encoder(texts: list[str], dim: int) -> np.ndarray (N, dim)`` that turns task
instructions into vectors outside the network (so checkpoints stay self-contained).
"""
from __future__ import annotations

import hashlib
from importlib import metadata
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import COMMAND_DIM, ModelConfig

__all__ = [
    "BACKBONE_GROUP",
    "register_backbone",
    "get_backbone",
    "available_backbones",
    "build_backbone",
    "register_instruction_encoder",
    "get_instruction_encoder",
    "SpatialSoftmax",
    "ConvEncoder",
    "ConvSmallBackbone",
    "hashed_words",
]

BACKBONE_GROUP = "twinrl.policy_backbones"
_BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {}
_INSTRUCTION_ENCODERS: dict[str, Callable] = {}


def register_backbone(name: str, factory: Callable[[ModelConfig], nn.Module] | None = None):
    """Register ``factory`` under ``name`` (usable as a decorator)."""
    def _add(f):
        if name in _BACKBONES and _BACKBONES[name] is not f:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = f
        return f
    return _add(factory) if factory is not None else _add


def _load_entry_points() -> None:
    eps = metadata.entry_points()
    for ep in (eps.select(group=BACKBONE_GROUP) if hasattr(eps, "select") else eps.get(BACKBONE_GROUP, [])):
        if ep.name not in _BACKBONES:
            _BACKBONES[ep.name] = ep.load()


def available_backbones() -> list[str]:
    _load_entry_points()
    return sorted(_BACKBONES)


def get_backbone(name: str) -> Callable[[ModelConfig], nn.Module]:
    if name not in _BACKBONES:
        _load_entry_points()
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (available: {', '.join(sorted(_BACKBONES))}; "
                         f"others register through the entry-point group {BACKBONE_GROUP!r})")
    return _BACKBONES[name]


def build_backbone(cfg: ModelConfig) -> nn.Module:
    module = get_backbone(cfg.backbone)(cfg)
    dim = getattr(module, "feature_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise TypeError(f"backbone {cfg.backbone!r} must expose an int feature_dim >= 1, got {dim!r}")
    return module


def register_instruction_encoder(name: str, encoder: Callable | None = None):
    def _add(f):
        _INSTRUCTION_ENCODERS[name] = f
        return f
    return _add(encoder) if encoder is not None else _add


def get_instruction_encoder(name: str) -> Callable:
    if name not in _INSTRUCTION_ENCODERS:
        raise ValueError(f"unknown instruction encoder {name!r} "
                         f"(available: {', '.join(sorted(_INSTRUCTION_ENCODERS))})")
    return _INSTRUCTION_ENCODERS[name]


@register_instruction_encoder("hashed_words")
def hashed_words(texts: list[str], dim: int) -> np.ndarray:
    """Signed feature hashing of lower-cased words and word pairs, L2-normalised.

    Deterministic across processes and machines (sha1 of the token), needs no weights.
    """
    out = np.zeros((len(texts), dim), np.float32)
    for i, text in enumerate(texts):
        words = str(text).lower().replace(",", " ").replace(".", " ").split()
        tokens = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        for tok in tokens:
            h = int.from_bytes(hashlib.sha1(tok.encode()).digest()[:8], "little")
            out[i, h % dim] += 1.0 if (h >> 63) & 1 else -1.0
        n = np.linalg.norm(out[i])
        if n > 0:
            out[i] /= n
    return out


# ----------------------------------------------------------------------------- conv_small
class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature maps -> (B, 2C) expected image coordinates in [-1, 1]."""

    def __init__(self, height: int, width: int):
        super().__init__()
        ys = torch.linspace(-1.0, 1.0, height)
        xs = torch.linspace(-1.0, 1.0, width)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("grid_x", gx.reshape(-1), persistent=False)
        self.register_buffer("grid_y", gy.reshape(-1), persistent=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = torch.softmax(x.reshape(b, c, h * w) / self.log_temperature.exp(), dim=-1)
        ex = (attn * self.grid_x).sum(-1)
        ey = (attn * self.grid_y).sum(-1)
        return torch.cat([ex, ey], dim=-1)


class ConvEncoder(nn.Module):
    """Small conv net for one camera, read out two ways and projected to ``out_dim``:

    * spatial-softmax keypoints of the last layer, each channel normalised on its own (sharp
      attention: where things are);
    * the last layer's channels averaged over the image (what things look like, e.g. colour,
      which per-channel normalisation would remove; inner layers normalise over channel
      groups for the same reason).
    """

    def __init__(self, size: tuple[int, int], convs, out_dim: int):
        super().__init__()
        layers, ch = [], 3
        h, w = size
        for i, (out_ch, k, s) in enumerate(convs):
            layers.append(nn.Conv2d(ch, out_ch, k, stride=s, padding=k // 2))
            if i < len(convs) - 1:
                layers += [nn.GroupNorm(max(1, out_ch // 8), out_ch), nn.ReLU(inplace=True)]
            ch = out_ch
            h = (h + 2 * (k // 2) - k) // s + 1
            w = (w + 2 * (k // 2) - k) // s + 1
            if h < 1 or w < 1:
                raise ValueError(f"conv stack reduces a {size[0]}x{size[1]} image to nothing; use fewer or "
                                 f"smaller strides")
        self.convs = nn.Sequential(*layers)
        self.keypoint_norm = nn.GroupNorm(ch, ch)
        self.keypoints = SpatialSoftmax(h, w)
        self.proj = nn.Sequential(nn.Linear(3 * ch, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True))
        self.size = tuple(size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feat = self.convs(img * 2.0 - 1.0)  # [0, 1] -> roughly zero-centred
        return self.proj(torch.cat([self.keypoints(self.keypoint_norm(feat)), feat.mean(dim=(2, 3))], dim=-1))


class ConvSmallBackbone(nn.Module):
    """Default backbone: two conv encoders, proprio MLP, task and instruction embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.third_person = ConvEncoder(cfg.third_person_size, cfg.third_person_convs, cfg.image_feature_dim)
        self.wrist = ConvEncoder(cfg.wrist_size, cfg.wrist_convs, cfg.image_feature_dim)
        proprio_in = cfg.proprio_features + (COMMAND_DIM if cfg.command_input else 0)
        self.proprio = nn.Sequential(nn.Linear(proprio_in, cfg.proprio_hidden), nn.ReLU(inplace=True),
                                     nn.Linear(cfg.proprio_hidden, cfg.proprio_hidden), nn.ReLU(inplace=True))
        self.task = nn.Embedding(len(cfg.tasks), cfg.task_embedding_dim)
        self.instruction_dim = cfg.instruction_dim
        self.instruction = (nn.Linear(cfg.instruction_dim, cfg.task_embedding_dim)
                            if cfg.instruction_dim > 0 else None)
        self.feature_dim = (2 * cfg.image_feature_dim + cfg.proprio_hidden + cfg.task_embedding_dim
                            + (cfg.task_embedding_dim if self.instruction is not None else 0))

    def forward(self, batch: dict) -> torch.Tensor:
        parts = [self.third_person(batch["third_person"]), self.wrist(batch["wrist"]),
                 self.proprio(batch["proprio"]), self.task(batch["task"])]
        if self.instruction is not None:
            parts.append(self.instruction(batch["instruction"]))
        return torch.cat(parts, dim=-1)


register_backbone("conv_small", ConvSmallBackbone)
