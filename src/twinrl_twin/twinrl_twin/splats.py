"""3D Gaussian scenes: the INRIA 3DGS PLY layout, and initialisation from an RGB-D scan.

PLY layout (binary little-endian, one ``vertex`` element, float32 properties in this order,
as written by the reference 3DGS implementation and read by most viewers)::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}
    opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3  [label]

* ``f_dc_c`` is the degree-0 SH coefficient of colour channel ``c``; a colour
  ``rgb in [0, 1]`` has ``f_dc = (rgb - 0.5) / C0`` with ``C0 = 0.28209479177387814``;
* ``f_rest`` is channel-major: ``f_rest[c * (K - 1) + (k - 1)]`` is SH coefficient ``k``
  (``1 <= k < K``, ``K = (degree + 1)^2``) of channel ``c``;
* ``opacity`` is a logit (sigmoid gives the opacity), ``scale_i`` are log standard
  deviations, ``rot`` is a quaternion (w, x, y, z), not necessarily normalised;
* ``label`` (uchar, optional, this project's extension that other tools ignore) is the mask
  label of the Gaussian: 0 background, 1 robot, 2.. objects; label names are stored as PLY
  comments ``twinrl_label <id> <name>``.

Reading checks everything (missing properties, truncated files, NaNs) and raises
:class:`SplatFileError` naming the file; writing is atomic (temporary file + ``os.replace``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import load_config, resolve_config_path

from .scan import atomic_write

__all__ = [
    "C0",
    "SplatFileError",
    "GaussianScene",
    "SplatInitConfig",
    "read_ply",
    "write_ply",
    "rgb_to_sh_dc",
    "sh_dc_to_rgb",
    "sh_basis",
    "rotate_sh",
    "init_from_scan",
    "load_splat_init_config",
]

C0 = 0.28209479177387814
MAX_SH_DEGREE = 3
LABEL_COMMENT = "twinrl_label"


class SplatFileError(ValueError):
    """A splat PLY is unreadable, truncated or inconsistent. The message starts with the file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def rgb_to_sh_dc(rgb) -> np.ndarray:
    """Colours in [0, 1] -> degree-0 SH coefficients."""
    return (np.asarray(rgb, dtype=np.float32) - 0.5) / C0


def sh_dc_to_rgb(dc) -> np.ndarray:
    return np.asarray(dc, dtype=np.float32) * C0 + 0.5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class GaussianScene:
    """N Gaussians. ``quats`` are (w, x, y, z) like the PLY; ``sh`` is (N, K, 3), K = (d+1)^2,
    with ``sh[:, 0]`` the DC term; ``labels`` (N,) uint8 mask labels or None."""

    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    normals: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    label_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        self.means = np.asarray(self.means, dtype=np.float32).reshape(-1, 3)
        n = len(self.means)
        self.quats = np.asarray(self.quats, dtype=np.float32).reshape(n, 4)
        self.log_scales = np.asarray(self.log_scales, dtype=np.float32).reshape(n, 3)
        self.opacity_logits = np.asarray(self.opacity_logits, dtype=np.float32).reshape(n)
        self.sh = np.asarray(self.sh, dtype=np.float32)
        if self.sh.ndim == 2 and self.sh.shape[1] == 3:
            self.sh = self.sh[:, None, :]
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"sh must be (N, K, 3) with N={n}, got {self.sh.shape}")
        k = self.sh.shape[1]
        deg = int(round(math.sqrt(k))) - 1
        if (deg + 1) ** 2 != k or deg > MAX_SH_DEGREE:
            raise ValueError(f"sh has {k} coefficients per channel; expected (d+1)^2 with d <= {MAX_SH_DEGREE}")
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float32).reshape(n, 3)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,):
                raise ValueError(f"labels must be (N,) with N={n}, got {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() > 255):
                raise ValueError("labels must be in 0..255")
            self.labels = labels.astype(np.uint8)
        self.label_names = {int(k): str(v) for k, v in dict(self.label_names).items()}

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    def colors(self) -> np.ndarray:
        """View-independent colour (N, 3) in [0, 1] from the DC term."""
        return np.clip(sh_dc_to_rgb(self.sh[:, 0]), 0.0, 1.0)

    def opacities(self) -> np.ndarray:
        return _sigmoid(self.opacity_logits.astype(np.float64)).astype(np.float32)

    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    def check_finite(self, source: str = "<scene>") -> None:
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
            arr = getattr(self, name)
            bad = ~np.isfinite(arr.reshape(len(self), -1)).all(axis=1) if len(self) else np.zeros(0, bool)
            if bad.any():
                raise SplatFileError(source, f"{name} has non-finite values (first at Gaussian {int(np.argmax(bad))}, "
                                             f"{int(bad.sum())} Gaussians affected)")
        norms = np.linalg.norm(self.quats, axis=1)
        if len(self) and (norms < 1e-12).any():
            raise SplatFileError(source, f"zero quaternion at Gaussian {int(np.argmax(norms < 1e-12))}")

    def subset(self, index) -> "GaussianScene":
        return GaussianScene(self.means[index], self.quats[index], self.log_scales[index],
                             self.opacity_logits[index], self.sh[index],
                             None if self.normals is None else self.normals[index],
                             None if self.labels is None else self.labels[index], dict(self.label_names))

    def select_label(self, label: int) -> "GaussianScene":
        if self.labels is None:
            raise ValueError("this scene has no labels")
        return self.subset(np.flatnonzero(self.labels == label))

    def transformed(self, sim) -> "GaussianScene":
        """The scene mapped by a similarity (``twinrl_twin.scan.Similarity``, e.g. scan -> base):
        means, orientations, scales and the view-dependent SH bands all follow."""
        R = np.asarray(sim.rotation, dtype=float)
        means = sim.apply_points(self.means.astype(float))
        q = self.quats.astype(float)
        q_xyzw = q[:, [1, 2, 3, 0]] / np.linalg.norm(q, axis=1, keepdims=True)
        rot = (tf.Rotation.from_matrix(R) * tf.Rotation.from_quat(q_xyzw)).as_quat() if len(q) else q_xyzw
        quats = rot[:, [3, 0, 1, 2]] if len(q) else q
        normals = None if self.normals is None else self.normals @ R.T
        return GaussianScene(means, quats, self.log_scales + np.float32(math.log(sim.scale)), self.opacity_logits,
                             rotate_sh(self.sh, R), normals, self.labels, dict(self.label_names))

    @staticmethod
    def concatenate(scenes: list["GaussianScene"]) -> "GaussianScene":
        if not scenes:
            raise ValueError("nothing to concatenate")
        deg = max(s.sh_degree for s in scenes)
        k = (deg + 1) ** 2

        def pad(sh):
            out = np.zeros((len(sh), k, 3), np.float32)
            out[:, :sh.shape[1]] = sh
            return out

        has_labels = all(s.labels is not None for s in scenes)
        has_normals = all(s.normals is not None for s in scenes)
        names: dict[int, str] = {}
        for s in scenes:
            names.update(s.label_names)
        return GaussianScene(np.concatenate([s.means for s in scenes]), np.concatenate([s.quats for s in scenes]),
                             np.concatenate([s.log_scales for s in scenes]),
                             np.concatenate([s.opacity_logits for s in scenes]),
                             np.concatenate([pad(s.sh) for s in scenes]),
                             np.concatenate([s.normals for s in scenes]) if has_normals else None,
                             np.concatenate([s.labels for s in scenes]) if has_labels else None, names)


# -- spherical harmonics ------------------------------------------------------------------------
def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis (M, (degree+1)^2) of unit directions (M, 3) in the 3DGS sign convention."""
    d = np.asarray(dirs, dtype=float).reshape(-1, 3)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    cols = [np.full_like(x, C0)]
    if degree >= 1:
        c1 = 0.4886025119029199
        cols += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                 0.31539156525252005 * (2 * zz - xx - yy), -1.0925484305920792 * x * z,
                 0.5462742152960396 * (xx - yy)]
    if degree >= 3:
        cols += [-0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
                 -0.4570457994644658 * y * (4 * zz - xx - yy), 0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
                 -0.4570457994644658 * x * (4 * zz - xx - yy), 1.445305721320277 * z * (xx - yy),
                 -0.5900435899266435 * x * (xx - 3 * yy)]
    if degree > MAX_SH_DEGREE:
        raise ValueError(f"SH degree {degree} > {MAX_SH_DEGREE}")
    return np.stack(cols, axis=1)


def rotate_sh(sh: np.ndarray, R: np.ndarray) -> np.ndarray:
    """SH coefficients (N, K, 3) of colour fields rotated by ``R``: the result evaluated along
    ``R @ d`` equals the input evaluated along ``d``. Each band is rotated by the matrix that
    maps its basis functions, fitted on a fixed set of directions (exact for bands <= 3)."""
    sh = np.asarray(sh, dtype=np.float32)
    k = sh.shape[1]
    deg = int(round(math.sqrt(k))) - 1
    if deg == 0 or np.allclose(R, np.eye(3)):
        return sh.copy()
    rng = np.random.default_rng(12345)
    dirs = rng.standard_normal((64, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    A = sh_basis(dirs, deg)                     # Y(d)
    B = sh_basis(dirs @ np.asarray(R, float), deg)   # Y(R^T d) (rows: (R^T d_i)^T = d_i^T R)
    out = sh.copy()
    for band in range(1, deg + 1):
        sl = slice(band * band, (band + 1) * (band + 1))
        X, *_ = np.linalg.lstsq(A[:, sl], B[:, sl], rcond=None)   # Y_l(R^T d) = Y_l(d) X
        out[:, sl] = np.einsum("kj,njc->nkc", X, sh[:, sl]).astype(np.float32)
    return out


# -- PLY I/O ------------------------------------------------------------------------------------
_BASE = ["x", "y", "z"]
_DC = [f"f_dc_{i}" for i in range(3)]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def read_ply(path: os.PathLike | str) -> GaussianScene:
    """Read an INRIA-layout 3DGS PLY; :class:`SplatFileError` naming the file on any problem."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise SplatFileError(path, "file does not exist")
    try:
        with open(path, "rb") as fh:
            ply = PlyData.read(fh, mmap=False)
            if "vertex" not in ply:
                raise SplatFileError(path, "no 'vertex' element (not a Gaussian-splat PLY)")
            v = ply["vertex"].data
            names = set(v.dtype.names or ())
            missing = [p for p in _BASE + _DC + _TAIL if p not in names]
            if missing:
                raise SplatFileError(path, f"missing properties {missing} (needs the INRIA 3DGS layout)")
            rest_names = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
            m = len(rest_names)
            if rest_names != [f"f_rest_{i}" for i in range(m)]:
                raise SplatFileError(path, "f_rest_* properties are not numbered 0..M-1")
            if m % 3:
                raise SplatFileError(path, f"{m} f_rest properties is not a multiple of 3 colour channels")
            k = m // 3 + 1
            deg = int(round(math.sqrt(k))) - 1
            if (deg + 1) ** 2 != k or deg > MAX_SH_DEGREE:
                raise SplatFileError(path, f"{m} f_rest properties do not match an SH degree <= {MAX_SH_DEGREE}")
            n = len(v)

            def col(name):
                return np.asarray(v[name], dtype=np.float32)

            means = np.stack([col(p) for p in _BASE], axis=1)
            normals = np.stack([col(p) for p in ("nx", "ny", "nz")], axis=1) \
                if {"nx", "ny", "nz"} <= names else None
            sh = np.zeros((n, k, 3), np.float32)
            sh[:, 0] = np.stack([col(p) for p in _DC], axis=1)
            for c in range(3):
                for j in range(1, k):
                    sh[:, j, c] = col(f"f_rest_{c * (k - 1) + j - 1}")
            opacity = col("opacity")
            scales = np.stack([col(f"scale_{i}") for i in range(3)], axis=1)
            quats = np.stack([col(f"rot_{i}") for i in range(4)], axis=1)
            labels = np.asarray(v["label"]) if "label" in names else None
    except SplatFileError:
        raise
    except Exception as exc:  # plyfile raises several types for truncated/corrupt data
        raise SplatFileError(path, f"corrupt or truncated PLY: {type(exc).__name__}: {exc}") from exc
    label_names = {}
    for c in ply.comments:
        parts = c.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == LABEL_COMMENT and parts[1].isdigit():
            label_names[int(parts[1])] = parts[2]
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() > 255):
        raise SplatFileError(path, "label values outside 0..255")
    scene = GaussianScene(means, quats, scales, opacity, sh, normals, labels, label_names)
    scene.check_finite(str(path))
    return scene


def write_ply(path: os.PathLike | str, scene: GaussianScene) -> Path:
    """Write ``scene`` atomically (a crash leaves either the old file or none, never half)."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    scene.check_finite(str(path))
    n, k = len(scene), scene.sh.shape[1]
    rest = [f"f_rest_{i}" for i in range(3 * (k - 1))]
    props = _BASE + ["nx", "ny", "nz"] + _DC + rest + _TAIL
    dtype = [(p, "<f4") for p in props]
    if scene.labels is not None:
        dtype.append(("label", "u1"))
    arr = np.empty(n, dtype=dtype)
    for i, p in enumerate(_BASE):
        arr[p] = scene.means[:, i]
    normals = scene.normals if scene.normals is not None else np.zeros((n, 3), np.float32)
    for i, p in enumerate(("nx", "ny", "nz")):
        arr[p] = normals[:, i]
    for c in range(3):
        arr[f"f_dc_{c}"] = scene.sh[:, 0, c]
        for j in range(1, k):
            arr[f"f_rest_{c * (k - 1) + j - 1}"] = scene.sh[:, j, c]
    arr["opacity"] = scene.opacity_logits
    for i in range(3):
        arr[f"scale_{i}"] = scene.log_scales[:, i]
    for i in range(4):
        arr[f"rot_{i}"] = scene.quats[:, i]
    if scene.labels is not None:
        arr["label"] = scene.labels
    comments = [f"{LABEL_COMMENT} {lab} {name}" for lab, name in sorted(scene.label_names.items())
                if "\n" not in name]
    ply = PlyData([PlyElement.describe(arr, "vertex")], text=False, byte_order="<", comments=comments)
    atomic_write(path, ply.write)
    return path


# -- initialisation from a scan -----------------------------------------------------------------
@dataclass
class SplatInitConfig:
    """Section ``splat_init`` of config/scan.yaml."""

    frame_stride: int = 2
    pixel_stride: int = 2
    voxel_size: float = 0.0                # scan units; 0 = automatic
    voxels_per_extent: float = 250.0
    foreground_voxel_fraction: float = 0.35   # robot/object labels use a finer voxel (x this)
    sh_degree: int = 3
    initial_opacity: float = 0.1
    neighbours: int = 3
    min_scale_fraction: float = 0.1
    max_scale_fraction: float = 3.0
    max_points: int = 300000

    def validate(self) -> None:
        if self.frame_stride < 1 or self.pixel_stride < 1:
            raise ValueError("frame_stride and pixel_stride must be >= 1")
        if self.voxel_size < 0 or self.voxels_per_extent <= 0:
            raise ValueError("voxel_size must be >= 0 and voxels_per_extent > 0")
        if not 0.0 < self.foreground_voxel_fraction <= 1.0:
            raise ValueError("foreground_voxel_fraction must be in (0, 1]")
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}")
        if not 0.0 < self.initial_opacity < 1.0:
            raise ValueError("initial_opacity must be in (0, 1)")
        if self.neighbours < 1 or self.max_points < 1:
            raise ValueError("neighbours and max_points must be >= 1")
        if not 0 < self.min_scale_fraction <= self.max_scale_fraction:
            raise ValueError("need 0 < min_scale_fraction <= max_scale_fraction")


def load_splat_init_config(path: Optional[str] = None, overrides=()) -> SplatInitConfig:
    return load_config(resolve_config_path(path or "scan"), SplatInitConfig, overrides, section="splat_init")


def init_from_scan(scan, cfg: Optional[SplatInitConfig] = None, progress: bool = True,
                   seed: int = 0) -> tuple[GaussianScene, float]:
    """Initial Gaussians (scan frame) from the back-projected depth of ``scan``'s frames,
    voxel-downsampled per mask label with open3d: colours -> SH DC, isotropic scales from
    nearest-neighbour distances, labels from the masks. Background uses ``voxel_size``, robot
    and objects a finer voxel (``foreground_voxel_fraction``). Returns ``(scene, voxel_size)``."""
    import open3d as o3d
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    from .scan import ScanError

    cfg = cfg or load_splat_init_config()
    frames = scan.frames[::cfg.frame_stride]
    if not frames or not all(f.depth_path is not None for f in frames):
        raise ScanError(scan.root, "Gaussian initialisation needs depth maps for the frames (depth/NNNNN.*)")
    pts, cols, labs = [], [], []
    for f in tqdm(frames, desc="back-project", unit="frame", disable=not progress):
        p = f.points(cfg.pixel_stride)
        pts.append(p["points"])
        cols.append(p["colors"])
        labs.append(p["labels"])
    points = np.concatenate(pts)
    colors = np.concatenate(cols).astype(np.float64) / 255.0
    labels = np.concatenate(labs)
    if len(points) == 0:
        raise ScanError(scan.root, "no valid depth pixels in any frame")
    voxel = cfg.voxel_size
    if voxel <= 0:
        lo, hi = np.percentile(points, [1, 99], axis=0)
        voxel = float(np.linalg.norm(hi - lo)) / cfg.voxels_per_extent
        voxel = max(voxel, 1e-9)
    out_p, out_c, out_l, out_v = [], [], [], []
    for lab in np.unique(labels):
        sel = labels == lab
        v = voxel if lab == 0 else voxel * cfg.foreground_voxel_fraction
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[sel]))
        pc.colors = o3d.utility.Vector3dVector(colors[sel])
        down = pc.voxel_down_sample(v)
        out_p.append(np.asarray(down.points))
        out_c.append(np.asarray(down.colors))
        out_l.append(np.full(len(down.points), lab, np.uint8))
        out_v.append(np.full(len(down.points), v))
    means = np.concatenate(out_p)
    rgb = np.concatenate(out_c)
    lab = np.concatenate(out_l)
    vox = np.concatenate(out_v)
    if len(means) > cfg.max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(means), cfg.max_points, replace=False))
        means, rgb, lab, vox = means[keep], rgb[keep], lab[keep], vox[keep]
    kq = min(cfg.neighbours + 1, len(means))
    if kq > 1:
        dist, _ = cKDTree(means).query(means, k=kq)
        nn = dist[:, 1:].mean(axis=1)
    else:
        nn = vox.copy()
    nn = np.clip(nn, cfg.min_scale_fraction * vox, cfg.max_scale_fraction * vox)
    n = len(means)
    k = (cfg.sh_degree + 1) ** 2
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    quats = np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (n, 1))
    logit = math.log(cfg.initial_opacity / (1.0 - cfg.initial_opacity))
    scene = GaussianScene(means, quats, np.repeat(np.log(nn)[:, None], 3, axis=1), np.full(n, logit), sh,
                          None, lab, scan.label_names())
    return scene, voxel
