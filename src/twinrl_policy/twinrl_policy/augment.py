"""Image augmentation for training (torch, batched, seeded by a torch.Generator).

* :func:`random_shift`: pad by ``pad`` pixels (edge replicate) and crop back at a random
  offset per sample (DrQ-style random shift/crop);
* :func:`color_jitter`: random brightness, contrast and saturation per sample.

Inputs and outputs are (B, 3, H, W) float tensors in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_shift", "color_jitter", "augment_images"]


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    if pad <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)[None, :])          # (B, H)
    cols = (ox[:, None] + torch.arange(w)[None, :])          # (B, W)
    bidx = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _factors(b: int, strength: float, generator) -> torch.Tensor:
    return 1.0 + (torch.rand(b, 1, 1, 1, generator=generator) * 2.0 - 1.0) * strength


def color_jitter(images: torch.Tensor, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    b = images.shape[0]
    out = images
    if brightness > 0:
        out = out * _factors(b, brightness, generator)
    if contrast > 0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * _factors(b, contrast, generator) + mean
    if saturation > 0:
        gray = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
        out = (out - gray) * _factors(b, saturation, generator) + gray
    return out.clamp(0.0, 1.0)


def augment_images(images: torch.Tensor, shift: int, brightness: float, contrast: float, saturation: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(random_shift(images, shift, generator), brightness, contrast, saturation, generator)
