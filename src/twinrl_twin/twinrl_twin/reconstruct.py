"""Photometric reconstruction: optimise a Gaussian scene against a scan's RGB frames.

The scene (from ``--init``, the scan's own ``splats.ply``, or :func:`twinrl_twin.splats.init_from_scan`)
is rendered with :mod:`twinrl_twin.splat_render` in the scan's cameras at a reduced resolution
and fitted with Adam to the frames: loss ``(1 - w) * L1 + w * D-SSIM`` (box-filtered SSIM),
parameters means, log-scales, quaternions, opacity logits, the SH DC term and optionally the
higher SH bands. Every ``holdout_every``-th frame is held out and only scored (PSNR before and
after). Optionally Gaussians with low opacity are pruned and those with large accumulated
position gradients are split. Labels follow their Gaussians. The result is written atomically
with :func:`twinrl_twin.splats.write_ply`. See docs/reconstruction.md.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from twinrl_bringup.config import load_config, resolve_config_path

from .scan import Intrinsics, Scan, ScanError, write_png_atomic
from .splat_render import camera_tensors, render
from .splats import GaussianScene, read_ply, write_ply

__all__ = ["ReconstructConfig", "ReconstructResult", "ReconstructError", "load_reconstruct_config",
           "scaled_intrinsics", "select_device", "load_views", "initial_scene", "render_scene", "psnr", "reconstruct",
           "write_preview"]


class ReconstructError(ValueError):
    """Reconstruction cannot run (no frames to train on, non-finite loss, ...)."""


@dataclass
class DensifyConfig:
    enabled: bool = True
    start: int = 50                   # first iteration that may densify/prune
    stop: int = 250                   # no densify/prune from this iteration on
    every: int = 50
    prune_opacity: float = 0.01       # Gaussians below this opacity are removed
    grad_quantile: float = 0.95       # Gaussians above this quantile of mean position-gradient norm are split
    max_gaussians: int = 60000        # no splitting beyond this many

    def validate(self) -> None:
        if self.every < 1 or self.start < 0 or self.stop < self.start:
            raise ValueError("densify: need every >= 1 and 0 <= start <= stop")
        if not 0.0 <= self.prune_opacity < 1.0:
            raise ValueError("densify.prune_opacity must be in [0, 1)")
        if not 0.0 < self.grad_quantile < 1.0:
            raise ValueError("densify.grad_quantile must be in (0, 1)")


@dataclass
class ReconstructConfig:
    """config/reconstruct.yaml."""

    iterations: int = 300
    width: int = 128                  # render/training width (px); height keeps the aspect ratio
    holdout_every: int = 8            # every n-th frame is held out for PSNR (never trained on)
    max_gaussians: int = 30000        # random subset of the initial scene above this
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ssim_weight: float = 0.2
    ssim_window: int = 7
    sh_rest: bool = False             # also optimise the SH bands above DC
    lr_means: float = 0.0016          # x scene extent (camera-path + scene diagonal)
    lr_log_scales: float = 0.005
    lr_quats: float = 0.001
    lr_opacity: float = 0.05
    lr_sh_dc: float = 0.01
    lr_sh_rest: float = 0.0005
    max_elements: int = 2000000       # compositor work per tile group (memory bound)
    seed: int = 0
    device: str = "auto"              # auto (CUDA with gsplat's kernels when available, else CPU) | cpu | cuda
    densify: DensifyConfig = field(default_factory=DensifyConfig)

    def validate(self) -> None:
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if self.width < 8:
            raise ValueError("width must be >= 8 pixels")
        if self.holdout_every < 2:
            raise ValueError("holdout_every must be >= 2 (1 would hold out every frame)")
        if self.max_gaussians < 1:
            raise ValueError("max_gaussians must be >= 1")
        if not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError("background colour components must be in [0, 1]")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError("ssim_weight must be in [0, 1]")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ValueError("ssim_window must be odd and >= 3")
        for k in ("lr_means", "lr_log_scales", "lr_quats", "lr_opacity", "lr_sh_dc", "lr_sh_rest"):
            if not getattr(self, k) >= 0.0:
                raise ValueError(f"{k} must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.max_elements < 1:
            raise ValueError("max_elements must be >= 1")
        self.densify.validate()


def load_reconstruct_config(path: Optional[str] = None, overrides=()) -> ReconstructConfig:
    return load_config(resolve_config_path(path or "reconstruct"), ReconstructConfig, overrides)


@dataclass
class View:
    name: str
    viewmat: torch.Tensor     # (4, 4) scan -> camera
    K: torch.Tensor           # (3, 3) at the reduced resolution
    image: torch.Tensor       # (H, W, 3) float in [0, 1]


@dataclass
class ReconstructResult:
    scene: GaussianScene
    psnr_before: float                     # mean over held-out frames
    psnr_after: float
    loss_first: float                      # training loss, mean of the first / last 10 % iterations
    loss_last: float
    iterations: int
    seconds: float
    gaussians_before: int
    gaussians_after: int
    train_frames: list[str]
    heldout_frames: list[str]
    image_size: tuple[int, int]
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {"psnr_before_db": round(self.psnr_before, 3), "psnr_after_db": round(self.psnr_after, 3),
                "loss_first": round(self.loss_first, 5), "loss_last": round(self.loss_last, 5),
                "iterations": self.iterations, "seconds": round(self.seconds, 2),
                "gaussians_before": self.gaussians_before, "gaussians_after": self.gaussians_after,
                "train_frames": len(self.train_frames), "heldout_frames": self.heldout_frames,
                "image_size": list(self.image_size)}


# -- views ------------------------------------------------------------------------------------------
def scaled_intrinsics(intr: Intrinsics, width: int) -> Intrinsics:
    """Intrinsics of the image resized to ``width`` (pixel centres at integer coordinates)."""
    s = width / intr.width
    height = max(1, int(round(intr.height * s)))
    sy = height / intr.height
    return Intrinsics(intr.fx * s, intr.fy * sy, (intr.cx + 0.5) * s - 0.5, (intr.cy + 0.5) * sy - 0.5,
                      int(width), height)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ReconstructError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def load_views(scan: Scan, width: int, indices, device: torch.device = torch.device("cpu")) -> list[View]:
    from PIL import Image

    views = []
    for i in indices:
        f = scan.frames[i]
        intr = scaled_intrinsics(f.intrinsics, min(width, f.intrinsics.width))
        img = Image.fromarray(f.rgb()).resize((intr.width, intr.height), Image.BOX)
        viewmat, K = camera_tensors(f.T_scan_camera, intr.K, device=device)
        views.append(View(f.name, viewmat, K, torch.as_tensor(np.asarray(img, np.float32) / 255.0, device=device)))
    return views


def split_frames(n: int, holdout_every: int) -> tuple[list[int], list[int]]:
    held = list(range(holdout_every // 2, n, holdout_every))
    train = [i for i in range(n) if i not in set(held)]
    return train, held


# -- scene <-> tensors --------------------------------------------------------------------------------
class _Params:
    """The optimised tensors of a scene (leaf tensors with gradients) plus its labels."""

    def __init__(self, scene: GaussianScene, sh_rest: bool, device: torch.device = torch.device("cpu")):
        def t(a):
            return torch.tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)

        self.means = t(scene.means).requires_grad_()
        self.log_scales = t(scene.log_scales).requires_grad_()
        self.quats = t(scene.quats).requires_grad_()
        self.opacity_logits = t(scene.opacity_logits).requires_grad_()
        self.sh_dc = t(scene.sh[:, :1]).requires_grad_()
        self.sh_rest = t(scene.sh[:, 1:]).requires_grad_(sh_rest)
        self.labels = scene.labels
        self.normals = scene.normals
        self.label_names = dict(scene.label_names)
        self.render_degree = scene.sh_degree if (sh_rest or np.any(scene.sh[:, 1:] != 0)) else 0

    def __len__(self):
        return len(self.means)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"means": self.means, "log_scales": self.log_scales, "quats": self.quats,
                "opacity_logits": self.opacity_logits, "sh_dc": self.sh_dc, "sh_rest": self.sh_rest}

    def select(self, index: torch.Tensor, extra: Optional[dict] = None) -> None:
        """Keep Gaussians ``index`` (with repeats), then overwrite fields given in ``extra``."""
        for name, v in self.tensors().items():
            new = v.detach()[index].clone()
            if extra and name in extra:
                new = extra[name]
            setattr(self, name, new.requires_grad_(v.requires_grad))
        idx = index.cpu().numpy()
        self.labels = None if self.labels is None else self.labels[idx]
        self.normals = None if self.normals is None else self.normals[idx]

    def scene(self) -> GaussianScene:
        sh = torch.cat([self.sh_dc, self.sh_rest], dim=1)
        def a(x):
            return x.detach().cpu().numpy()

        return GaussianScene(a(self.means), a(self.quats), a(self.log_scales), a(self.opacity_logits), a(sh),
                             self.normals, self.labels, self.label_names)


def render_scene(p: _Params, view: View, cfg: ReconstructConfig) -> torch.Tensor:
    H, W = view.image.shape[:2]
    sh = torch.cat([p.sh_dc, p.sh_rest], dim=1)
    out = render(p.means, p.quats, torch.exp(p.log_scales), torch.sigmoid(p.opacity_logits), sh, view.viewmat,
                 view.K, W, H, torch.tensor(cfg.background, dtype=torch.float32, device=p.means.device), p.render_degree,
                 max_elements=cfg.max_elements)
    return out.rgb


# -- losses ----------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.clamp(0, 1) - b) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _ssim(a: torch.Tensor, b: torch.Tensor, window: int) -> torch.Tensor:
    """Mean SSIM with a box window (images (H, W, 3))."""
    import torch.nn.functional as F

    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    pad = window // 2

    def mean(z):
        return F.avg_pool2d(F.pad(z, (pad, pad, pad, pad), mode="replicate"), window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def photometric_loss(img: torch.Tensor, target: torch.Tensor, cfg: ReconstructConfig) -> torch.Tensor:
    loss = (img - target).abs().mean()
    if cfg.ssim_weight > 0:
        loss = (1.0 - cfg.ssim_weight) * loss + cfg.ssim_weight * (1.0 - _ssim(img, target, cfg.ssim_window))
    return loss


# -- initial scene -----------------------------------------------------------------------------------
def initial_scene(scan: Scan, init: Optional[os.PathLike | str] = None, progress: bool = True) -> tuple[GaussianScene, str]:
    """``(scene, source)``: ``init`` if given (a PLY; :class:`~twinrl_twin.splats.SplatFileError`
    naming it when corrupt), else the scan's ``splats.ply``, else back-projected RGB-D."""
    if init is not None:
        return read_ply(init), str(init)
    if scan.splats_path is not None:
        return read_ply(scan.splats_path), str(scan.splats_path)
    from .splats import init_from_scan

    scene, _ = init_from_scan(scan, progress=progress)
    return scene, "RGB-D back-projection"


def _scene_extent(scene: GaussianScene, scan: Scan) -> float:
    pts = np.concatenate([scene.means.astype(float), scan.camera_positions()])
    lo, hi = np.percentile(pts, [2, 98], axis=0)
    return max(float(np.linalg.norm(hi - lo)), 1e-6)


def _mean_psnr(p: _Params, views: list[View], cfg: ReconstructConfig) -> tuple[float, list[torch.Tensor]]:
    imgs = []
    with torch.no_grad():
        for v in views:
            imgs.append(render_scene(p, v, cfg))
    return float(np.mean([psnr(i, v.image) for i, v in zip(imgs, views)])), imgs


def _make_optimizer(p: _Params, cfg: ReconstructConfig, extent: float) -> torch.optim.Adam:
    groups = [{"params": [p.means], "lr": cfg.lr_means * extent},
              {"params": [p.log_scales], "lr": cfg.lr_log_scales},
              {"params": [p.quats], "lr": cfg.lr_quats},
              {"params": [p.opacity_logits], "lr": cfg.lr_opacity},
              {"params": [p.sh_dc], "lr": cfg.lr_sh_dc}]
    if p.sh_rest.requires_grad and p.sh_rest.shape[1] > 0:
        groups.append({"params": [p.sh_rest], "lr": cfg.lr_sh_rest})
    return torch.optim.Adam(groups, eps=1e-15)


def _densify(p: _Params, grad_sum: torch.Tensor, grad_count: torch.Tensor, cfg: ReconstructConfig,
             gen: torch.Generator) -> tuple[int, int]:
    """Prune transparent Gaussians, split those with large mean position gradients.
    Returns ``(pruned, split)``."""
    d = cfg.densify
    with torch.no_grad():
        opac = torch.sigmoid(p.opacity_logits)
        keep = opac >= d.prune_opacity
        if keep.sum() == 0:                  # never remove everything
            keep = opac >= opac.max()
        mean_grad = grad_sum / grad_count.clamp(min=1)
        mean_grad[~keep] = 0.0
        room = max(0, d.max_gaussians - int(keep.sum()))
        seen = grad_count > 0
        split = torch.zeros_like(keep)
        if room > 0 and seen.any():
            thr = torch.quantile(mean_grad[seen & keep], d.grad_quantile)
            split = keep & seen & (mean_grad > thr)
            cand = torch.nonzero(split).squeeze(1)
            if len(cand) > room:
                split[cand[torch.argsort(mean_grad[cand], descending=True)[room:]]] = False
        stay = torch.nonzero(keep & ~split).squeeze(1)
        parent = torch.nonzero(split).squeeze(1)
        index = torch.cat([stay, parent, parent])
        means = p.means.detach()[index].clone()
        log_scales = p.log_scales.detach()[index].clone()
        if len(parent):
            from gsplat.cuda._torch_impl import _quat_to_rotmat

            n_new = 2 * len(parent)
            q = p.quats.detach()[torch.cat([parent, parent])]
            s = torch.exp(p.log_scales.detach()[torch.cat([parent, parent])])
            noise = torch.randn(n_new, 3, generator=gen).to(s.device)
            offset = (_quat_to_rotmat(q) @ (noise * s)[..., None])[..., 0]
            means[len(stay):] += offset
            log_scales[len(stay):] -= math.log(1.6)
        p.select(index, {"means": means, "log_scales": log_scales})
    return int((~keep).sum()), int(len(parent))


# -- main entry --------------------------------------------------------------------------------------
def reconstruct(scan: Scan, scene: GaussianScene, cfg: Optional[ReconstructConfig] = None,
                progress: bool = True) -> ReconstructResult:
    """Optimise ``scene`` (scan frame) against ``scan``'s RGB frames; the input is not modified."""
    from tqdm import tqdm

    cfg = cfg or load_reconstruct_config()
    t0 = time.monotonic()
    if len(scene) == 0:
        raise ReconstructError("the initial scene has no Gaussians")
    n = len(scan.frames)
    train_idx, held_idx = split_frames(n, cfg.holdout_every)
    if not train_idx:
        raise ScanError(scan.root, f"{n} frame(s): nothing left to train on after holding out every "
                                   f"{cfg.holdout_every}-th frame")
    if not held_idx:
        raise ScanError(scan.root, f"{n} frame(s): too few to hold out every {cfg.holdout_every}-th frame "
                                   f"for scoring (lower holdout_every)")
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(scene) > cfg.max_gaussians:
        scene = scene.subset(np.sort(rng.choice(len(scene), cfg.max_gaussians, replace=False)))
    n_before = len(scene)
    device = select_device(cfg.device)
    train = load_views(scan, cfg.width, train_idx, device)
    held = load_views(scan, cfg.width, held_idx, device)
    p = _Params(scene, cfg.sh_rest, device)
    extent = _scene_extent(scene, scan)
    psnr_before, _ = _mean_psnr(p, held, cfg)
    opt = _make_optimizer(p, cfg, extent)
    grad_sum = torch.zeros(len(p), device=device)
    grad_count = torch.zeros(len(p), device=device)
    losses: list[float] = []
    order: list[int] = []
    bar = tqdm(range(cfg.iterations), desc="reconstruct", unit="it", disable=not progress)
    for it in bar:
        if not order:
            order = list(rng.permutation(len(train)))
        view = train[order.pop()]
        img = render_scene(p, view, cfg)
        loss = photometric_loss(img, view.image, cfg)
        if not torch.isfinite(loss):
            raise ReconstructError(f"non-finite loss at iteration {it} (view {view.name}); lower the learning rates")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g = p.means.grad
            if g is not None:
                gn = g.norm(dim=1)
                grad_sum += gn
                grad_count += (gn > 0).float()
        opt.step()
        losses.append(float(loss.detach()))
        d = cfg.densify
        if d.enabled and d.start <= it + 1 < d.stop and (it + 1) % d.every == 0:
            pruned, split = _densify(p, grad_sum, grad_count, cfg, gen)
            opt = _make_optimizer(p, cfg, extent)
            grad_sum = torch.zeros(len(p), device=device)
            grad_count = torch.zeros(len(p), device=device)
            bar.write(f"iteration {it + 1}: pruned {pruned}, split {split}, now {len(p)} Gaussians")
        if progress and it % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", n=len(p))
    bar.close()
    with torch.no_grad():
        p.quats.div_(p.quats.norm(dim=1, keepdim=True).clamp(min=1e-12))
    psnr_after, _ = _mean_psnr(p, held, cfg)
    k = max(1, len(losses) // 10)
    return ReconstructResult(
        p.scene(), psnr_before, psnr_after, float(np.mean(losses[:k])) if losses else float("nan"),
        float(np.mean(losses[-k:])) if losses else float("nan"), cfg.iterations, time.monotonic() - t0,
        n_before, len(p), [train_v.name for train_v in train], [v.name for v in held],
        (int(held[0].image.shape[1]), int(held[0].image.shape[0])), losses)


def write_preview(path: os.PathLike | str, scan: Scan, before: GaussianScene, after: GaussianScene,
                  cfg: ReconstructConfig, frame: Optional[int] = None) -> Path:
    """PNG of a held-out frame: scan image | initial render | optimised render."""
    _, held = split_frames(len(scan.frames), cfg.holdout_every)
    idx = held[0] if frame is None else frame
    device = select_device(cfg.device)
    view = load_views(scan, cfg.width, [idx], device)[0]
    with torch.no_grad():
        imgs = [view.image] + [render_scene(_Params(s, False, device), view, cfg).clamp(0, 1) for s in (before, after)]
    row = torch.cat(imgs, dim=1).cpu().numpy()
    write_png_atomic(path, (row * 255.0 + 0.5).astype(np.uint8))
    return Path(path)


def reconstruct_to_file(scan: Scan, out: os.PathLike | str, init: Optional[os.PathLike | str] = None,
                        cfg: Optional[ReconstructConfig] = None, preview: Optional[os.PathLike | str] = None,
                        progress: bool = True) -> tuple[ReconstructResult, str]:
    """Load the initial scene, optimise, write ``out`` atomically (nothing is written when
    anything fails) and optionally a preview PNG. Returns ``(result, init source)``."""
    cfg = cfg or load_reconstruct_config()
    scene, source = initial_scene(scan, init, progress)
    result = reconstruct(scan, scene, cfg, progress)
    write_ply(out, result.scene)
    if preview is not None:
        write_preview(preview, scan, scene, result.scene, cfg)
    return result, source
