"""Differentiable soft silhouettes (alpha masks) of 3D Gaussians under a similarity transform.

The Gaussians' 3D covariances and their pinhole projection come from gsplat's pure-torch
reference implementation (``gsplat.cuda._torch_impl``: ``_quat_scale_to_covar_preci``,
``_fully_fused_projection``), which runs on CPU. Compositing is specialised to masks: the
accumulated opacity of a pixel is ``1 - prod_i (1 - alpha_i)``, a product that does not depend
on the order of the Gaussians, so no depth sort is needed. Each Gaussian is splatted onto a
square patch of pixels around its projected centre (radius ``patch_radius`` pixels, enough
for the 3.33-sigma footprint of the small Gaussians a scan yields at mask resolution) and the
per-pixel ``log(1 - alpha)`` terms are summed with ``index_add_``; everything is
differentiable with respect to the transform (translation, rotation vector, log-scale).

Pixel centres are at integer coordinates (as in ``twinrl_twin.scan.Intrinsics``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["rotvec_to_matrix", "GaussianSilhouette"]

_MAX_ALPHA = 0.99


def rotvec_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable at zero (3,) -> (3, 3)."""
    theta2 = (w * w).sum()
    theta = torch.sqrt(theta2 + 1e-24)
    K = torch.zeros(3, 3, dtype=w.dtype)
    K = K.index_put((torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 2, 0, 2, 0, 1])),
                    torch.stack([-w[2], w[1], w[2], -w[0], -w[1], w[0]]))
    small = theta2 < 1e-12
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-24))
    return torch.eye(3, dtype=w.dtype) + a * K + b * (K @ K)


class GaussianSilhouette:
    """Soft masks of a fixed set of Gaussians (source frame) seen through a similarity
    ``p -> s * R @ (p - pivot) + pivot + t`` in pinhole cameras of the target frame."""

    def __init__(self, means, quats_wxyz, scales, opacities, patch_radius: int = 4, eps2d: float = 0.3,
                 dtype=torch.float32):
        from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

        means = np.asarray(means, dtype=float).reshape(-1, 3)
        n = len(means)
        if n == 0:
            raise ValueError("no Gaussians to render")
        if patch_radius < 1:
            raise ValueError(f"patch_radius must be >= 1 pixel, got {patch_radius}")
        self.dtype = dtype
        self.means = torch.as_tensor(means, dtype=dtype)
        q = torch.as_tensor(np.asarray(quats_wxyz, dtype=float).reshape(n, 4), dtype=dtype)
        s = torch.as_tensor(np.asarray(scales, dtype=float).reshape(n, 3), dtype=dtype)
        covars, _ = _quat_scale_to_covar_preci(q, s, compute_covar=True, compute_preci=False)
        self.covars = covars
        op = np.broadcast_to(np.asarray(opacities, dtype=float), (n,))
        self.opacities = torch.as_tensor(np.clip(op, 0.0, _MAX_ALPHA), dtype=dtype)
        self.patch_radius = int(patch_radius)
        self.eps2d = float(eps2d)
        r = torch.arange(-self.patch_radius, self.patch_radius + 1)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self._offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)      # (P, 2) integer

    def __len__(self) -> int:
        return len(self.means)

    def transform(self, log_scale: torch.Tensor, rotvec: torch.Tensor, translation: torch.Tensor,
                  pivot: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and covariances after the similarity."""
        R = rotvec_to_matrix(rotvec)
        s = torch.exp(log_scale)
        pivot = torch.zeros(3, dtype=self.dtype) if pivot is None else pivot
        means = s * (self.means - pivot) @ R.T + pivot + translation
        covars = (s * s) * (R @ self.covars @ R.T)
        return means, covars

    def render(self, log_scale: torch.Tensor, rotvec: torch.Tensor, translation: torch.Tensor,
               viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               pivot: Optional[torch.Tensor] = None, opacity_logit: Optional[torch.Tensor] = None,
               log_size: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(C, H, W) accumulated opacity in [0, 1). ``viewmats``: (C, 4, 4) world -> camera
        (OpenCV optical axes); ``Ks``: (C, 3, 3). ``opacity_logit`` (scalar) replaces every
        Gaussian's opacity by ``sigmoid(opacity_logit)``; ``log_size`` (scalar) multiplies every
        Gaussian's extent by ``exp(log_size)``: the edge response of the mask, which can be
        estimated along with the transform."""
        from gsplat.cuda._torch_impl import _fully_fused_projection

        means, covars = self.transform(log_scale, rotvec, translation, pivot)
        if log_size is not None:
            covars = covars * torch.exp(2.0 * log_size)
        opacities = self.opacities if opacity_logit is None else torch.sigmoid(opacity_logit).expand(len(self))
        radii, means2d, depths, conics, _ = _fully_fused_projection(
            means, covars, viewmats.to(self.dtype), Ks.to(self.dtype), width, height, eps2d=self.eps2d)
        C, N = means2d.shape[:2]
        P = len(self._offsets)
        centre = torch.round(means2d.detach()).long()                            # (C, N, 2)
        pix = centre[:, :, None, :] + self._offsets[None, None]                   # (C, N, P, 2)
        d = pix.to(self.dtype) - means2d[:, :, None, :]
        a, b, c = conics[..., 0:1], conics[..., 1:2], conics[..., 2:3]            # (C, N, 1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp(opacities[None, :, None] * torch.exp(-sigma.clamp(min=0.0)), max=_MAX_ALPHA)
        valid = ((radii[..., 0] > 0) & (radii[..., 1] > 0))[:, :, None] \
            & (pix[..., 0] >= 0) & (pix[..., 0] < width) & (pix[..., 1] >= 0) & (pix[..., 1] < height)
        log_t = torch.where(valid, torch.log1p(-alpha), torch.zeros((), dtype=self.dtype))
        cam = torch.arange(C)[:, None, None].expand(C, N, P)
        flat = (cam * height + pix[..., 1].clamp(0, height - 1)) * width + pix[..., 0].clamp(0, width - 1)
        acc = torch.zeros(C * height * width, dtype=self.dtype).index_add_(0, flat.reshape(-1), log_t.reshape(-1))
        return 1.0 - torch.exp(acc).reshape(C, height, width)
