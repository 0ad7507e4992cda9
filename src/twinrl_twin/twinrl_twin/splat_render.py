"""Differentiable RGB rendering of 3D Gaussian splats (one pinhole camera at a time).

Two back ends, chosen by :func:`render` from the device of the Gaussians' tensors:

* **CUDA**: ``gsplat.rasterization`` (the fused CUDA kernels). The only adaptation is the pixel
  convention: this project puts pixel centres at integer coordinates
  (``twinrl_twin.scan.Intrinsics``), gsplat at ``+0.5``, so ``cx`` and ``cy`` are shifted by
  half a pixel before the call.
* **CPU**: gsplat's pure-torch reference helpers (``gsplat.cuda._torch_impl``) for the 3D
  covariances (``_quat_scale_to_covar_preci``), the pinhole projection with its 3.33-sigma
  radii (``_fully_fused_projection``) and the view-dependent colours
  (``_spherical_harmonics``), followed by :func:`composite`: a depth-sorted, front-to-back
  alpha compositor over (Gaussian, pixel) pairs, fully vectorised in torch, processed in bands of
  image rows to bound memory, and differentiable with respect to every Gaussian parameter.

Compositing follows the 3DGS rules: ``alpha = min(0.999, opacity * exp(-sigma))`` with
``sigma = 0.5 * d^T conic d`` (``d``: pixel centre minus projected mean), contributions with
``alpha < 1/255`` are skipped, the colour is ``sum_i c_i alpha_i T_i + T_final * background``
with ``T_i = prod_{j<i} (1 - alpha_j)`` over the Gaussians sorted front to back. (The CUDA
kernels also stop a pixel once ``T < 1e-4``; the CPU path does not, a difference below 1e-4.)
Colours from SH are ``max(0, SH(dir) + 0.5)`` as in gsplat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["MAX_ALPHA", "MIN_ALPHA", "RenderOutput", "camera_tensors", "sh_colors", "project",
           "composite", "render", "render_cpu", "render_cuda"]

MAX_ALPHA = 0.999
MIN_ALPHA = 1.0 / 255.0


@dataclass
class RenderOutput:
    rgb: torch.Tensor        # (H, W, 3)
    alpha: torch.Tensor      # (H, W) accumulated opacity


def camera_tensors(T_world_camera, K, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(viewmat, K)`` tensors: world -> camera (OpenCV optical axes) 4x4 and 3x3 intrinsics."""
    import numpy as np

    T = np.asarray(T_world_camera, dtype=float).reshape(4, 4)
    return (torch.as_tensor(np.linalg.inv(T), dtype=dtype, device=device),
            torch.as_tensor(np.asarray(K, dtype=float).reshape(3, 3), dtype=dtype, device=device))


def sh_colors(means: torch.Tensor, sh: torch.Tensor, viewmat: torch.Tensor, degree: Optional[int] = None) -> torch.Tensor:
    """(N, 3) colours ``max(0, SH(d) + 0.5)`` seen from the camera of ``viewmat``; ``sh`` is
    (N, K, 3) with the DC term first; ``degree`` limits the bands used (default: all)."""
    k = sh.shape[1]
    full = int(round(math.sqrt(k))) - 1
    degree = full if degree is None else min(int(degree), full)
    if degree == 0:
        return torch.clamp_min(sh[:, 0] * 0.28209479177387814 + 0.5, 0.0)
    from gsplat.cuda._torch_impl import _spherical_harmonics

    R, t = viewmat[:3, :3], viewmat[:3, 3]
    campos = -R.T @ t
    return torch.clamp_min(_spherical_harmonics(degree, means - campos, sh) + 0.5, 0.0)


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
            width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01):
    """Pinhole projection of the Gaussians (gsplat's torch reference): ``radii`` (N, 2) int
    (0 = culled), ``means2d`` (N, 2), ``depths`` (N,), ``conics`` (N, 3) (inverse 2D
    covariance ``a, b, c``). ``quats`` are (w, x, y, z), normalised inside."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height, eps2d=eps2d, near_plane=near_plane)
    return radii[0], means2d[0], depths[0], conics[0]


def composite(means2d: torch.Tensor, conics: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor,
              opacities: torch.Tensor, colors: torch.Tensor, width: int, height: int,
              background: Optional[torch.Tensor] = None, max_elements: int = 2_000_000) -> RenderOutput:
    """Front-to-back alpha compositing of projected Gaussians, vectorised over (Gaussian, pixel) pairs.

    Every visible Gaussian is paired with the pixels of its 3.33-sigma box (outside it alpha is
    below 1/255, so nothing is lost); pairs below the 1/255 cut-off are dropped before any
    gradient is recorded; the rest are sorted by pixel, then by depth, and composited with a
    segmented cumulative sum of ``log(1 - alpha)`` (float64) per pixel. Pairs are processed in
    bands of whole image rows of at most ``max_elements`` pairs each, which bounds memory
    whatever the image size. Pixel centres are at integer coordinates."""
    dtype, device = means2d.dtype, means2d.device
    bg = torch.zeros(3, dtype=dtype, device=device) if background is None else background.to(dtype)
    n_pix = width * height
    with torch.no_grad():
        m2 = means2d.detach()
        r = radii.to(dtype)
        x0 = torch.ceil(m2[:, 0] - r[:, 0]).clamp(min=0)
        x1 = torch.floor(m2[:, 0] + r[:, 0]).clamp(max=width - 1)
        y0 = torch.ceil(m2[:, 1] - r[:, 1]).clamp(min=0)
        y1 = torch.floor(m2[:, 1] + r[:, 1]).clamp(max=height - 1)
        visible = (radii[:, 0] > 0) & (radii[:, 1] > 0) & (depths > 0) & (x1 >= x0) & (y1 >= y0)
        ids = torch.nonzero(visible).squeeze(1)
        ids = ids[torch.argsort(depths.detach()[ids], stable=True)]            # front to back
        M = len(ids)
        x0, y0 = x0[ids].long(), y0[ids].long()
        nx, ny = x1[ids].long() - x0 + 1, y1[ids].long() - y0 + 1
        counts = nx * ny
        rank = torch.repeat_interleave(torch.arange(M, device=device), counts)
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(rank), device=device) - first[rank]
        px = x0[rank] + local % nx[rank]
        py = y0[rank] + local // nx[rank]
        g = ids[rank]
        alpha0 = _pair_alpha(m2[g], conics.detach()[g], opacities.detach()[g], px, py)
        keep = alpha0 >= MIN_ALPHA
        pix = py[keep] * width + px[keep]
        rank = rank[keep]
        order = torch.argsort(pix * max(M, 1) + rank)
        pix, g = pix[order], ids[rank[order]]
        # bands of whole rows, each with at most max_elements pairs (at least one row)
        row_first = torch.searchsorted(pix, torch.arange(height + 1, device=device) * width).tolist()
        cuts, lo = [0], 0
        for row in range(1, height + 1):
            if row_first[row] - row_first[lo] > max_elements and row - 1 > lo:
                cuts.append(row_first[row - 1])
                lo = row - 1
        cuts.append(len(pix))
    rgb = torch.zeros(n_pix, 3, dtype=dtype, device=device)
    trans_final = torch.ones(n_pix, dtype=dtype, device=device)
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b <= a:
            continue
        p, gi = pix[a:b], g[a:b]
        alpha = _pair_alpha(means2d[gi], conics[gi], opacities[gi], p % width, p // width)
        log_t = torch.log1p(-alpha).double()
        with torch.no_grad():
            uniq, seg_counts = torch.unique_consecutive(p, return_counts=True)
            ends = torch.cumsum(seg_counts, 0)
            seg = torch.repeat_interleave(torch.arange(len(uniq), device=device), seg_counts)
        cum = torch.cumsum(log_t, 0)
        before = torch.cat([cum.new_zeros(1), cum])[ends - seg_counts]           # sum before each pixel
        trans = torch.exp(cum - log_t - before[seg]).to(dtype)                   # exclusive product
        rgb = rgb.index_add(0, p, (alpha * trans)[:, None] * colors[gi])
        trans_final = trans_final.index_put((uniq,), torch.exp(cum[ends - 1] - before).to(dtype))
    out = rgb + trans_final[:, None] * bg
    return RenderOutput(out.reshape(height, width, 3), (1.0 - trans_final).reshape(height, width))


def _pair_alpha(means2d, conics, opacities, px, py) -> torch.Tensor:
    """``min(0.999, o * exp(-sigma))`` per (Gaussian, pixel) pair, 0 where ``sigma < 0``."""
    dx = px.to(means2d.dtype) - means2d[:, 0]
    dy = py.to(means2d.dtype) - means2d[:, 1]
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
    alpha = torch.clamp(opacities * torch.exp(-sigma), max=MAX_ALPHA)
    return torch.where(sigma >= 0, alpha, torch.zeros((), dtype=alpha.dtype, device=alpha.device))


def render_cpu(means, quats, scales, opacities, sh, viewmat, K, width: int, height: int,
               background: Optional[torch.Tensor] = None, sh_degree: Optional[int] = None,
               eps2d: float = 0.3, max_elements: int = 2_000_000) -> RenderOutput:
    """Pure-torch renderer (any device; used on CPU): projection + SH + :func:`composite`."""
    radii, means2d, depths, conics = project(means, quats, scales, viewmat, K, width, height, eps2d)
    colors = sh_colors(means, sh, viewmat, sh_degree)
    return composite(means2d, conics, radii, depths, opacities, colors, width, height, background, max_elements)


def render_cuda(means, quats, scales, opacities, sh, viewmat, K, width: int, height: int,
                background: Optional[torch.Tensor] = None, sh_degree: Optional[int] = None,
                eps2d: float = 0.3) -> RenderOutput:   # pragma: no cover - needs a CUDA device
    """``gsplat.rasterization`` on CUDA tensors (same conventions as :func:`render_cpu`)."""
    from gsplat import rasterization

    k = sh.shape[1]
    full = int(round(math.sqrt(k))) - 1
    degree = full if sh_degree is None else min(int(sh_degree), full)
    Kg = K.clone()
    Kg[0, 2] += 0.5                       # gsplat: pixel centres at +0.5
    Kg[1, 2] += 0.5
    bg = None if background is None else background.to(means.dtype)[None]
    renders, alphas, _ = rasterization(means, quats, scales, opacities, sh, viewmat[None], Kg[None], width, height,
                                       sh_degree=degree, backgrounds=bg, eps2d=eps2d, packed=False,
                                       render_mode="RGB")
    return RenderOutput(renders[0], alphas[0, ..., 0])


def render(means, quats, scales, opacities, sh, viewmat, K, width: int, height: int,
           background: Optional[torch.Tensor] = None, sh_degree: Optional[int] = None,
           eps2d: float = 0.3, max_elements: int = 2_000_000) -> RenderOutput:
    """Render one view: ``means`` (N, 3), ``quats`` (N, 4) (w, x, y, z), ``scales`` (N, 3)
    (standard deviations), ``opacities`` (N,) in [0, 1], ``sh`` (N, K, 3), ``viewmat`` (4, 4)
    world -> camera (OpenCV axes), ``K`` (3, 3). CUDA tensors use gsplat's kernels, others the
    pure-torch path."""
    if means.is_cuda:
        return render_cuda(means, quats, scales, opacities, sh, viewmat, K, width, height, background, sh_degree,
                           eps2d)
    return render_cpu(means, quats, scales, opacities, sh, viewmat, K, width, height, background, sh_degree, eps2d,
                      max_elements)
