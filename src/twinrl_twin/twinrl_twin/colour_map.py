"""Colour calibration of the twin's cameras against the real ones.

The twin draws its scan's colours as they were averaged over the scan's views; a real camera
sees each surface under its own exposure, white balance and lighting angle (the table seen
from above by the wrist camera is brighter than the same table seen at a slant by the
third-person camera). Those differences are systematic per camera and per colour, so they
are measured where the twin and the real cell show the same moment (the real demos replayed
in the twin, ``twinrl demos pair``) and undone on every twin image.

The map is a 3-D colour lookup table per camera: the twin's RGB is quantised into
``levels``^3 bins, and each bin holds the mean of (real - twin) over the paired pixels that
fell into it, after one pass that drops pixels more than ``outlier`` grey levels from the
first mean (edges where the two images are not aligned to the pixel). Bins with at least
``min_samples`` pixels are "fitted". A twin pixel gets the offset interpolated trilinearly
between the centres of the 8 bins around its colour, over the fitted ones only (weights
renormalised), so the correction changes smoothly across bin edges; a colour with no fitted
bin around it is left as the twin draws it (colours the pairs never showed).

File: ``colour_map.npz`` in the twin directory (``levels``, ``min_samples``, then ``offsets.<camera>``
(levels^3, 3) float32 and ``counts.<camera>`` (levels^3,) int64 per camera). The twin's
renderer applies it when the file is there (``RenderConfig.colour_map``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np


class ColourMapError(ValueError):
    """A colour-map file or its input is unusable; the message names the file or the input."""


@dataclass
class ColourMap:
    levels: int
    min_samples: int = 50
    offsets: dict = field(default_factory=dict)     # camera -> (levels^3, 3) float32, real - twin
    counts: dict = field(default_factory=dict)      # camera -> (levels^3,) int64 fitted pixels
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def cameras(self) -> list[str]:
        return sorted(self.offsets)

    def bins(self, image: np.ndarray) -> np.ndarray:
        q = (image.astype(np.int32) * self.levels) >> 8
        return (q[..., 0] * self.levels + q[..., 1]) * self.levels + q[..., 2]

    def apply(self, camera: str, image: np.ndarray) -> np.ndarray:
        """``image`` (..., 3) uint8 drawn by the twin for ``camera``, corrected; cameras the
        map does not know are returned unchanged. Looks the offset up in a table of the
        interpolated offsets on a 64^3 grid (built once per camera; :meth:`interpolated_offset`
        gives the exact value, at most a quarter of a bin away)."""
        if camera not in self.offsets:
            return image
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
            raise ColourMapError(f"colour map: {camera}: expected (..., 3) uint8 images, got "
                                 f"{image.shape} {image.dtype}")
        table = self._tables.get(camera)
        if table is None:
            g = np.arange(2, 256, 4, dtype=np.uint8)          # centres of the 64 cells per channel
            grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
            table = self._tables[camera] = np.rint(self.interpolated_offset(camera, grid)).astype(np.int16)
        q = image >> 2
        idx = (q[..., 0].astype(np.int32) * 64 + q[..., 1]) * 64 + q[..., 2]
        return np.clip(image + table[idx], 0, 255).astype(np.uint8)

    def interpolated_offset(self, camera: str, colours: np.ndarray) -> np.ndarray:
        """(..., 3) float32 offset for (..., 3) uint8 twin colours (trilinear over fitted bins)."""
        image = np.asarray(colours)
        off = self.offsets[camera]
        L = self.levels
        fitted = (self.counts[camera] >= self.min_samples).astype(np.float32)
        u = (image.astype(np.float32) + 0.5) * (L / 256.0) - 0.5        # bin-centre coordinates
        i0 = np.clip(np.floor(u), 0, L - 1).astype(np.int32)
        i1 = np.minimum(i0 + 1, L - 1)
        f = np.clip(u - i0, 0.0, 1.0)
        acc = np.zeros(image.shape, np.float32)
        wsum = np.zeros(image.shape[:-1], np.float32)
        for corner in range(8):
            w = np.ones(image.shape[:-1], np.float32)
            idx = np.zeros(image.shape[:-1], np.int32)
            for ch in range(3):
                hi = (corner >> ch) & 1
                w *= f[..., ch] if hi else 1.0 - f[..., ch]
                idx = idx * L + (i1[..., ch] if hi else i0[..., ch])
            w *= fitted[idx]
            acc += w[..., None] * off[idx]
            wsum += w
        return (acc / np.maximum(wsum, 1e-6)[..., None]).astype(np.float32)


@dataclass
class FitConfig:
    levels: int = 16            # bins per channel
    min_samples: int = 50       # pixels a bin needs to get an offset
    outlier: float = 30.0       # grey levels; second pass keeps pixels this close to the first mean
    every: int = 1              # use every k-th paired step

    def validate(self) -> None:
        if self.levels not in (4, 8, 16, 32, 64):
            raise ColourMapError(f"colour map: levels must be one of 4, 8, 16, 32, 64, got {self.levels}")
        if self.min_samples < 1 or self.outlier <= 0 or self.every < 1:
            raise ColourMapError("colour map: min_samples and every must be >= 1 and outlier > 0")


def fit_colour_map(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], cfg: Optional[FitConfig] = None) -> ColourMap:
    """``pairs``: (camera, twin images (..., H, W, 3) uint8, real images of the same moments and
    shape). Returns the map of every camera that appears."""
    cfg = cfg or FitConfig()
    cfg.validate()
    cmap = ColourMap(cfg.levels, cfg.min_samples)
    idx, res = {}, {}
    for camera, twin, real in pairs:
        twin, real = np.asarray(twin), np.asarray(real)
        if twin.shape != real.shape or twin.shape[-1:] != (3,) or twin.dtype != np.uint8 or real.dtype != np.uint8:
            raise ColourMapError(f"colour map: {camera}: twin and real images must be uint8 (..., 3) of one "
                                 f"shape, got {twin.shape} {twin.dtype} and {real.shape} {real.dtype}")
        idx.setdefault(camera, []).append(cmap.bins(twin).reshape(-1))
        res.setdefault(camera, []).append((real.astype(np.float32) - twin).reshape(-1, 3))
    if not idx:
        raise ColourMapError("colour map: no paired images to fit")
    n_bins = cfg.levels ** 3
    for camera in idx:
        b, r = np.concatenate(idx[camera]), np.concatenate(res[camera])
        def bin_means(keep):
            counts = np.bincount(b[keep], minlength=n_bins)
            sums = np.stack([np.bincount(b[keep], weights=r[keep, c], minlength=n_bins) for c in range(3)], axis=1)
            return counts, sums / np.maximum(counts, 1)[:, None]

        counts, offsets = bin_means(np.ones(len(b), bool))
        counts, offsets = bin_means(np.abs(r - offsets[b]).max(axis=1) <= cfg.outlier)    # drop misaligned pixels
        offsets[counts < cfg.min_samples] = 0.0
        cmap.offsets[camera] = offsets.astype(np.float32)
        cmap.counts[camera] = counts.astype(np.int64)
    return cmap


def save_colour_map(path, cmap: ColourMap) -> Path:
    """Write atomically (temporary file, rename)."""
    path = Path(path)
    arrays = {"levels": np.array(cmap.levels, np.int64), "min_samples": np.array(cmap.min_samples, np.int64)}
    for c in cmap.cameras:
        arrays[f"offsets.{c}"] = cmap.offsets[c].astype(np.float32)
        arrays[f"counts.{c}"] = cmap.counts[c].astype(np.int64)
    from .scan import atomic_write

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_colour_map(path) -> ColourMap:
    """Read and check a colour map; ColourMapError names the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile / numpy raise many types for corrupt files
        raise ColourMapError(f"{path}: unreadable colour map: {type(exc).__name__}: {exc}") from exc
    if "levels" not in data or data["levels"].shape != () or data["levels"].dtype.kind not in "iu":
        raise ColourMapError(f"{path}: missing or bad 'levels' (one integer)")
    levels = int(data["levels"])
    if levels not in (4, 8, 16, 32, 64):
        raise ColourMapError(f"{path}: levels must be one of 4, 8, 16, 32, 64, got {levels}")
    ms = data.get("min_samples")
    if ms is None or ms.shape != () or ms.dtype.kind not in "iu" or int(ms) < 1:
        raise ColourMapError(f"{path}: missing or bad 'min_samples' (one integer >= 1)")
    cmap = ColourMap(levels, int(ms))
    cams = sorted(k.split(".", 1)[1] for k in data if k.startswith("offsets."))
    if not cams:
        raise ColourMapError(f"{path}: no camera in the colour map")
    for c in cams:
        off, cnt = data[f"offsets.{c}"], data.get(f"counts.{c}")
        if off.shape != (levels ** 3, 3) or off.dtype.kind != "f":
            raise ColourMapError(f"{path}: offsets.{c}: expected ({levels ** 3}, 3) floats, got {off.shape} {off.dtype}")
        if not np.all(np.isfinite(off)) or np.abs(off).max(initial=0) > 255:
            raise ColourMapError(f"{path}: offsets.{c}: values must be finite and within +-255")
        if cnt is None or cnt.shape != (levels ** 3,) or cnt.dtype.kind not in "iu" or (cnt < 0).any():
            raise ColourMapError(f"{path}: counts.{c}: expected ({levels ** 3},) non-negative integers")
        cmap.offsets[c] = off.astype(np.float32)
        cmap.counts[c] = cnt.astype(np.int64)
    return cmap


def paired_images(real_dir, pairs_dir, cameras=("third_person", "wrist"), every: int = 1):
    """(camera, twin images, real images) per paired episode of ``pairs_dir`` (``twinrl demos
    pair``: the real demos of ``real_dir`` replayed in the twin), steps of both, every k-th."""
    from .demogen.replay import load_pairs

    found = False
    for real, twin in load_pairs(real_dir, pairs_dir):
        for c in cameras:
            if c not in real.observations or c not in twin.observations:
                continue
            if real.observations[c].shape[1:] != twin.observations[c].shape[1:]:
                raise ColourMapError(
                    f"colour map: {c}: real episode {(twin.extra or {}).get('pair_of')} of {real_dir} has "
                    f"{real.observations[c].shape[1:]} images, its twin replay {twin.observations[c].shape[1:]} "
                    "(the twin renders at the first demo's sizes): calibrate on demos of one image size")
            n = min(len(real.observations[c]), len(twin.observations[c]))
            found = True
            yield c, twin.observations[c][:n:every], real.observations[c][:n:every]
    if not found:
        raise ColourMapError(f"colour map: no paired episodes with images in {pairs_dir} for {real_dir}")


def mean_abs_difference(cmap: Optional[ColourMap], pairs) -> dict:
    """camera -> mean |real - twin| per pixel and channel, with ``cmap`` applied (None: raw)."""
    tot, n = {}, {}
    for c, twin, real in pairs:
        t = twin if cmap is None else cmap.apply(c, twin)
        tot[c] = tot.get(c, 0.0) + float(np.abs(t.astype(np.int32) - real).sum())
        n[c] = n.get(c, 0) + t.size
    return {c: tot[c] / n[c] for c in tot}


def _overlay(path: Path, cmap: ColourMap, pairs: list) -> None:
    """One row per camera: twin as drawn | twin calibrated | real, at a few moments."""
    from PIL import Image

    rows = []
    for c, twin, real in pairs:
        k = np.linspace(0, len(twin) - 1, 3).round().astype(int)
        cells = [np.concatenate([twin[i], cmap.apply(c, twin[i]), real[i]], axis=1) for i in k]
        row = np.concatenate(cells, axis=1)
        rows.append(np.asarray(Image.fromarray(row).resize((row.shape[1] * 256 // row.shape[0], 256))))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def calibrate_twin(twin_dir, demos, pairs_out=None, cfg: Optional[FitConfig] = None, progress: bool = True,
                   network=None, arm: bool = False) -> dict:
    """Replay the real ``demos`` in the twin as drawn (any old colour map or appearance network
    left out), fit a colour map on the paired images and write it to the twin directory (with
    ``colour_map.png``: twin | calibrated twin | real). With ``network`` (an
    ``appearance.AppearanceConfig``) fit the appearance network instead (``appearance.pt``,
    ``appearance.png``). ``pairs_out``: keep the pairs there, a new or empty directory
    (default: a temporary one). The twin's cameras render at the real images' sizes. The report's
    ``drawn`` says which correction the twin now draws: an appearance network is drawn instead of
    a colour map (``RenderConfig``), so a colour map fitted next to one is ``"appearance"``.
    With ``arm`` the arm's per-joint tracking is fitted to the demos first
    (:mod:`twinrl_twin.arm_tracking`, stored in twin.json), so that the replays follow the robot's
    path; the report's ``arm_tracking`` holds that fit."""
    import shutil
    import tempfile

    from .appearance import fit_appearance, save_appearance
    from .demogen.replay import camera_overrides_of, episode_paths, pair_demos
    from .twin_assets import APPEARANCE_FILE, COLOUR_MAP_FILE, load_twin

    cfg = cfg or FitConfig()
    cfg.validate()
    if pairs_out is not None and Path(pairs_out).exists() and any(Path(pairs_out).iterdir()):
        raise ColourMapError(f"colour map: {pairs_out} is not empty (pairs would mix with older ones); "
                             "give a new directory")
    twin_dir = Path(twin_dir)
    paths = episode_paths(demos)
    if not paths:
        raise ColourMapError(f"colour map: no episodes in {demos}")
    arm_fit = None
    if arm:
        from .arm_tracking import fit_arm_tracking, write_arm_tracking

        arm_fit = fit_arm_tracking(twin_dir, paths)
        write_arm_tracking(twin_dir, arm_fit)
    assets = load_twin(twin_dir)
    assets.colour_map = assets.appearance = None
    over = camera_overrides_of(paths[0])
    if not all(f"{c}.height" in over for c in ("third_person", "wrist")):
        raise ColourMapError(f"colour map: {paths[0]} has no camera images to calibrate against")
    tmp = None
    if pairs_out is None:
        tmp = tempfile.mkdtemp(prefix="twinrl-calibrate-")
        pairs_out = Path(tmp) / "pairs"
    try:
        info = pair_demos(assets, [str(p) for p in paths], pairs_out, camera_overrides=over, progress=progress)
        real_dirs = sorted({str(p.parent) for p in paths})
        samples = [x for d in real_dirs for x in paired_images(d, pairs_out, every=cfg.every)]
        cmap = fit_colour_map(samples, cfg) if network is None else fit_appearance(samples, network, progress)
        before, after = mean_abs_difference(None, samples), mean_abs_difference(cmap, samples)
        shown = {}
        for c, twin, real in samples:
            shown.setdefault(c, (c, twin, real))
        overlay = twin_dir / ("colour_map.png" if network is None else "appearance.png")
        _overlay(overlay, cmap, list(shown.values()))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if network is not None:
        path = save_appearance(twin_dir / APPEARANCE_FILE, cmap)
        return {"appearance": str(path), "overlay": str(overlay), "pairs": info["count"], "drawn": "appearance",
                "arm_tracking": arm_fit,
                "cameras": {c: {"mean_abs_diff_before": before[c], "mean_abs_diff_after": after[c]}
                            for c in cmap.cameras}}
    path = save_colour_map(twin_dir / COLOUR_MAP_FILE, cmap)
    shadowed = twin_dir / APPEARANCE_FILE
    return {"colour_map": str(path), "overlay": str(overlay), "pairs": info["count"], "arm_tracking": arm_fit,
            "drawn": "appearance" if shadowed.exists() else "colour_map",
            "levels": cmap.levels,
            "cameras": {c: {"bins": int((cmap.counts[c] >= cfg.min_samples).sum()),
                            "pixels": int(cmap.counts[c].sum()), "mean_abs_diff_before": before[c],
                            "mean_abs_diff_after": after[c]} for c in cmap.cameras}}


__all__ = ["ColourMap", "ColourMapError", "FitConfig", "fit_colour_map", "save_colour_map", "load_colour_map",
           "paired_images", "mean_abs_difference", "calibrate_twin"]
