"""Learned appearance correction of the twin's cameras: a small image-to-image network per camera.

The colour map (``twinrl_twin.colour_map``) corrects each colour by one offset, wherever it is
in the image. What it cannot correct is where the twin draws *differently*, not just in
another colour: the far field's horizon band (a panorama of the scan against the real cell's
edge), the robot's shading, a mesh's outline, the hand seen from the wrist. Those differences
are fixed in the image (the cameras are fixed to the cell or to the hand) or local (edges), so
a small convolutional network sees them: per camera, a stack of 3x3 convolutions (dilated, so
it sees about 70 px around a pixel at the defaults) over the twin's image and two channels of
pixel coordinates, whose output is added to the image (``real ~ twin + f(twin, x, y)``). It is
trained with an L1 loss on the same pairs as the colour map: the real demos replayed in the
twin (``twinrl demos pair``), every moment of which has a real and a twin image.

The network is fully convolutional and local, so a correction learned where the real demos
took the arm (ID placements) applies where the twin demos take it (OOD placements). It is
trained for the image size of the pairs, and it corrects only images of that size.

File: ``appearance.pt`` in the twin directory (``torch.save`` of plain tensors and numbers,
read with ``weights_only=True``): format version, config, per camera the image size and the
network's weights. The twin's renderer applies it when the file is there
(``RenderConfig.appearance``), instead of the colour map. ``twinrl twin calibrate --network``
fits and writes it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

FORMAT_VERSION = 1


class AppearanceError(ValueError):
    """An appearance-network file or its input is unusable; the message names the file or input."""


@dataclass
class AppearanceConfig:
    channels: int = 16                          # feature channels of every hidden layer
    dilations: list = field(default_factory=lambda: [1, 2, 4, 8, 1])   # one 3x3 layer per entry
    steps: int = 1500                           # optimiser steps per camera
    batch_size: int = 16                        # paired images per step
    learning_rate: float = 2e-3
    seed: int = 0

    def validate(self) -> None:
        if not (1 <= int(self.channels) <= 128):
            raise AppearanceError(f"appearance: channels must be within 1..128, got {self.channels}")
        if not self.dilations or any(int(d) < 1 or int(d) > 32 for d in self.dilations):
            raise AppearanceError(f"appearance: dilations must be 1..32 per layer, at least one, got {self.dilations}")
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise AppearanceError("appearance: steps and batch_size must be >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise AppearanceError(f"appearance: learning_rate must be > 0, got {self.learning_rate}")


@contextlib.contextmanager
def flush_denormals():
    """Denormal floats flushed to zero while the networks train or correct: in these small
    convolutions' weights and gradients they made both 10x slower in some processes (what else
    is loaded decides). Only for that while: scipy's cKDTree crashed (segmentation fault) on
    data with many equal points in a process left in flush-to-zero mode."""
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _net(cfg: AppearanceConfig):
    import torch.nn as nn

    layers, cin = [], 5                          # RGB + (x, y)
    for d in cfg.dilations:
        layers += [nn.Conv2d(cin, int(cfg.channels), 3, padding=int(d), dilation=int(d)), nn.ReLU()]
        cin = int(cfg.channels)
    layers.append(nn.Conv2d(cin, 3, 1))
    return nn.Sequential(*layers)


def _forward(net, x):
    """x (B, 3, H, W) float in [0, 1] -> corrected, same shape."""
    import torch

    b, _, h, w = x.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    coords = torch.stack([xx, yy]).expand(b, 2, h, w)
    return (x + net(torch.cat([x, coords], 1))).clamp(0.0, 1.0)


def _to_tensor(images: np.ndarray):
    import torch

    return torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class AppearanceModel:
    config: AppearanceConfig
    nets: dict = field(default_factory=dict)     # camera -> torch module
    sizes: dict = field(default_factory=dict)    # camera -> (height, width) it was trained for
    # torch threads while correcting (the previous count is restored after): one, because the
    # renderer runs in env workers beside others, where two threads per process made a 128 px
    # image take 270 ms instead of 11 (CPU oversubscribed); 0 = leave torch's setting
    threads: int = 1

    @property
    def cameras(self) -> list[str]:
        return sorted(self.nets)

    def apply(self, camera: str, image: np.ndarray, chunk: int = 64) -> np.ndarray:
        """``image`` (H, W, 3) or (N, H, W, 3) uint8 drawn by the twin for ``camera``, corrected;
        cameras the model does not know are returned unchanged."""
        import torch

        if camera not in self.nets:
            return image
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise AppearanceError(f"appearance: {camera}: expected (H, W, 3) or (N, H, W, 3) uint8 images, got "
                                  f"{image.shape} {image.dtype}")
        if tuple(image.shape[-3:-1]) != tuple(self.sizes[camera]):
            h, w = self.sizes[camera]
            raise AppearanceError(f"appearance: {camera}: the network was trained for {h}x{w} images, got "
                                  f"{image.shape[-3]}x{image.shape[-2]} (calibrate again at this size)")
        batch = image[None] if image.ndim == 3 else image
        out = np.empty_like(batch)
        net = self.nets[camera]
        before = torch.get_num_threads()
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad(), flush_denormals():
                for s in range(0, len(batch), chunk):
                    y = _forward(net, _to_tensor(batch[s:s + chunk]))
                    out[s:s + chunk] = y.mul_(255.0).round_().byte().permute(0, 2, 3, 1).numpy()
        finally:
            torch.set_num_threads(before)
        return out[0] if image.ndim == 3 else out


def fit_appearance(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], cfg: Optional[AppearanceConfig] = None,
                   progress: bool = True) -> AppearanceModel:
    """``pairs``: (camera, twin images (N, H, W, 3) uint8, real images of the same moments and
    shape), as ``colour_map.paired_images`` gives them. One network per camera, trained with an
    L1 loss on random batches of the pairs."""
    import torch

    cfg = cfg or AppearanceConfig()
    cfg.validate()
    data: dict = {}
    for camera, twin, real in pairs:
        twin, real = np.asarray(twin), np.asarray(real)
        if twin.shape != real.shape or twin.ndim != 4 or twin.shape[-1] != 3 or twin.dtype != np.uint8 \
                or real.dtype != np.uint8:
            raise AppearanceError(f"appearance: {camera}: twin and real images must be uint8 (N, H, W, 3) of one "
                                  f"shape, got {twin.shape} {twin.dtype} and {real.shape} {real.dtype}")
        if camera in data and data[camera][0][0].shape[1:] != twin.shape[1:]:
            raise AppearanceError(f"appearance: {camera}: pairs of two image sizes, {data[camera][0][0].shape[1:3]} "
                                  f"and {twin.shape[1:3]}")
        data.setdefault(camera, ([], []))
        data[camera][0].append(twin)
        data[camera][1].append(real)
    if not data:
        raise AppearanceError("appearance: no paired images to fit")
    model = AppearanceModel(cfg)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(cfg.steps) * len(data), desc="appearance network", unit="step")
    try:
        with flush_denormals():
            for camera in sorted(data):
                twin, real = np.concatenate(data[camera][0]), np.concatenate(data[camera][1])
                torch.manual_seed(int(cfg.seed))
                net = _net(cfg)
                opt = torch.optim.Adam(net.parameters(), lr=float(cfg.learning_rate))
                for _ in range(int(cfg.steps)):
                    idx = torch.randint(0, len(twin), (int(cfg.batch_size),), generator=gen).numpy()
                    loss = (_forward(net, _to_tensor(twin[idx])) - _to_tensor(real[idx])).abs().mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(camera=camera, l1=f"{float(loss) * 255:.1f}")
                model.nets[camera] = net.eval()
                model.sizes[camera] = tuple(int(v) for v in twin.shape[1:3])
    finally:
        if bar is not None:
            bar.close()
    return model


def save_appearance(path, model: AppearanceModel) -> Path:
    """Write atomically (temporary file, rename)."""
    import torch

    path = Path(path)
    blob = {"format_version": FORMAT_VERSION, "config": asdict(model.config),
            "cameras": {c: {"size": list(model.sizes[c]),
                            "state": {k: v.detach().clone() for k, v in model.nets[c].state_dict().items()}}
                        for c in model.cameras}}
    from .scan import atomic_write

    return atomic_write(path, lambda fh: torch.save(blob, fh))


def load_appearance(path) -> AppearanceModel:
    """Read and check an appearance network; AppearanceError names the file and what is wrong."""
    import torch

    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch / pickle / zipfile raise many types for corrupt files
        raise AppearanceError(f"{path}: unreadable appearance network: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        got = blob.get("format_version") if isinstance(blob, dict) else type(blob).__name__
        raise AppearanceError(f"{path}: not an appearance network of format {FORMAT_VERSION} (got {got!r})")
    try:
        cfg = AppearanceConfig(**blob["config"])
        cfg.validate()
    except (KeyError, TypeError, ValueError) as exc:
        raise AppearanceError(f"{path}: bad config: {exc}") from exc
    cams = blob.get("cameras")
    if not isinstance(cams, dict) or not cams:
        raise AppearanceError(f"{path}: no camera in the appearance network")
    model = AppearanceModel(cfg)
    for c, entry in cams.items():
        try:
            size = tuple(int(v) for v in entry["size"])
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size {size}")
            net = _net(cfg)
            net.load_state_dict(entry["state"], strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise AppearanceError(f"{path}: camera {c}: {type(exc).__name__}: {exc}") from exc
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            raise AppearanceError(f"{path}: camera {c}: non-finite weights")
        model.nets[c], model.sizes[c] = net.eval(), size
    return model


__all__ = ["AppearanceConfig", "AppearanceError", "AppearanceModel", "fit_appearance", "load_appearance",
           "save_appearance"]
