"""Scan directories: the input of the digital-twin builder (format: docs/scan_format.md).

A scan is what a phone SfM/AR session, a 3DGS tool or ``twinrl twin scan-sim`` leaves behind:
RGB frames with camera intrinsics and camera-to-scan poses, optionally depth, label masks, a
ready Gaussian-splat PLY, object meshes and the robot's URDF with its joint configuration at
scan time. :func:`load_scan` reads one into typed dataclasses and checks it (every error
names the offending file).

Frames and conventions
----------------------
* ``scan`` frame: whatever frame the scanning tool chose. Its relation to the robot base
  ``fr3_link0`` is an unknown similarity (rotation, translation and scale), found later by
  alignment. Lengths in the scan frame are "scan units"; depth maps are in scan units too.
* camera poses are ``T_scan_camera`` (4x4): camera optical frame (OpenCV axes: x right,
  y down, z forward) to scan frame. Files in OpenGL axes (x right, y up, z backward, as
  nerfstudio ``transforms.json``) are converted on load.
* :class:`Similarity` ``scan -> base``: ``p_base = scale * R @ p_scan + t``.

Ground truth of simulated scans (:func:`load_groundtruth`) lives outside the scan directory
(``<scan>/../<scan>.groundtruth.json``) or in ``<scan>/_groundtruth/``; the pipeline itself
never reads it, only tests and benchmarks do.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from twinrl_bringup import transforms as tf
from twinrl_bringup.config import ConfigError, from_dict

__all__ = [
    "ScanError",
    "Intrinsics",
    "Similarity",
    "ScanFrame",
    "RobotAtScan",
    "ScanObject",
    "Scan",
    "ScanGroundTruth",
    "LABEL_BACKGROUND",
    "LABEL_ROBOT",
    "FIRST_OBJECT_LABEL",
    "OPENGL_TO_OPENCV",
    "load_scan",
    "load_mesh",
    "load_groundtruth",
    "groundtruth_path",
    "atomic_write",
    "write_json_atomic",
    "write_png_atomic",
    "write_npy_atomic",
    "backproject",
    "frame_stem",
]

LABEL_BACKGROUND = 0
LABEL_ROBOT = 1
FIRST_OBJECT_LABEL = 2
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])   # right-multiply a camera pose to flip y and z
MESH_SUFFIXES = (".obj", ".ply", ".glb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GROUNDTRUTH_DIR = "_groundtruth"
FORMAT_VERSION = 1


class ScanError(ValueError):
    """A scan file is missing, unreadable or inconsistent. The message starts with the file."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def frame_stem(index: int) -> str:
    """File stem of frame ``index``: ``00007``."""
    return f"{index:05d}"


# -- small value types ---------------------------------------------------------------------------
@dataclass
class Intrinsics:
    """Pinhole intrinsics in pixels (no distortion). Pixel centres at integer coordinates."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def validate(self) -> None:
        for k in ("fx", "fy", "cx", "cy"):
            v = getattr(self, k)
            if not math.isfinite(v):
                raise ValueError(f"{k} must be finite, got {v}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) (u right, v down) and depths (N,) of optical-frame points."""
        p = np.asarray(points_cam, dtype=float).reshape(-1, 3)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy], axis=1)
        return uv, z


@dataclass
class Similarity:
    """``scan -> base`` similarity: ``p_base = scale * rotation @ p_scan + translation``."""

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.scale = float(self.scale)
        self.rotation = np.asarray(self.rotation, dtype=float).reshape(3, 3)
        self.translation = np.asarray(self.translation, dtype=float).reshape(3)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"similarity scale must be positive and finite, got {self.scale}")
        if not (np.all(np.isfinite(self.rotation)) and np.all(np.isfinite(self.translation))):
            raise ValueError("similarity rotation/translation must be finite")
        if abs(np.linalg.det(self.rotation) - 1.0) > 1e-4 or not np.allclose(
                self.rotation @ self.rotation.T, np.eye(3), atol=1e-4):
            raise ValueError("similarity rotation is not a proper rotation matrix")

    @property
    def matrix(self) -> np.ndarray:
        """4x4 ``[[s R, t], [0, 1]]``."""
        M = np.eye(4)
        M[:3, :3] = self.scale * self.rotation
        M[:3, 3] = self.translation
        return M

    @classmethod
    def from_matrix(cls, M) -> "Similarity":
        M = np.asarray(M, dtype=float)
        if M.shape != (4, 4):
            raise ValueError(f"expected a 4x4 similarity matrix, got shape {M.shape}")
        A = M[:3, :3]
        s = float(np.cbrt(np.linalg.det(A)))
        if not s > 0:
            raise ValueError("similarity matrix has a non-positive determinant")
        return cls(s, A / s, M[:3, 3])

    def inverse(self) -> "Similarity":
        Rt = self.rotation.T
        return Similarity(1.0 / self.scale, Rt, -(Rt @ self.translation) / self.scale)

    def apply_points(self, points) -> np.ndarray:
        p = np.asarray(points, dtype=float)
        return self.scale * p @ self.rotation.T + self.translation

    def apply_pose(self, T) -> np.ndarray:
        """A rigid pose in the source frame (position in its units) -> rigid pose in the target
        frame: the position is mapped as a point, the orientation is rotated."""
        T = np.asarray(T, dtype=float)
        out = np.eye(4)
        out[:3, :3] = self.rotation @ T[:3, :3]
        out[:3, 3] = self.apply_points(T[:3, 3])
        return out

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation_xyzw": tf.matrix_to_quat(self.rotation).tolist(),
                "translation": self.translation.tolist(), "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "Similarity":
        try:
            if "matrix" in data:
                return cls.from_matrix(data["matrix"])
            return cls(data["scale"], tf.quat_to_matrix(data["rotation_xyzw"]), data["translation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ScanError(source, f"bad similarity {exc}") from exc


# -- file schemas (loaded with twinrl_bringup.config.from_dict) ----------------------------------
@dataclass
class _FrameEntry:
    image: str = ""
    depth: str = ""
    mask: str = ""
    transform: Optional[list[list[float]]] = None        # 4x4 camera -> scan
    position: Optional[list[float]] = None
    quaternion: Optional[list[float]] = None              # x, y, z, w
    intrinsics: Optional[Intrinsics] = None

    def validate(self) -> None:
        has_T = self.transform is not None
        has_pq = self.position is not None or self.quaternion is not None
        if has_T and has_pq:
            raise ValueError("give either 'transform' or 'position' + 'quaternion', not both")
        if not has_T and not has_pq:
            raise ValueError("no camera pose: needs 'transform' (4x4) or 'position' + 'quaternion' (x, y, z, w)")
        if has_pq and (self.position is None or self.quaternion is None):
            raise ValueError("'position' and 'quaternion' must be given together")
        if has_T:
            T = np.asarray(self.transform, dtype=float)
            if T.shape != (4, 4) and T.shape != (3, 4):
                raise ValueError(f"'transform' must be 4x4 (or 3x4), got shape {T.shape}")
        else:
            if len(self.position) != 3 or len(self.quaternion) != 4:
                raise ValueError("'position' needs 3 values and 'quaternion' 4 (x, y, z, w)")

    def pose(self) -> np.ndarray:
        if self.transform is not None:
            T = np.asarray(self.transform, dtype=float)
            if T.shape == (3, 4):
                T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
            return T
        return tf.pose_to_matrix(self.position, self.quaternion)


@dataclass
class _CamerasFile:
    version: int = FORMAT_VERSION
    axes: str = "opencv"
    intrinsics: Optional[Intrinsics] = None
    depth_scale: Optional[float] = None
    mask_labels: dict[str, str] = field(default_factory=dict)
    frames: list[_FrameEntry] = field(default_factory=list)
    source: str = ""

    def validate(self) -> None:
        if self.axes not in ("opencv", "opengl"):
            raise ValueError(f"axes must be 'opencv' or 'opengl', got {self.axes!r}")
        if self.version > FORMAT_VERSION:
            raise ValueError(f"version {self.version} is newer than this reader ({FORMAT_VERSION})")
        if self.depth_scale is not None and not (self.depth_scale > 0 and math.isfinite(self.depth_scale)):
            raise ValueError(f"depth_scale must be positive, got {self.depth_scale}")
        for k in self.mask_labels:
            if not k.isdigit() or int(k) < FIRST_OBJECT_LABEL or int(k) > 255:
                raise ValueError(f"mask_labels keys are object label ids {FIRST_OBJECT_LABEL}..255, got {k!r}")


@dataclass
class RobotAtScan:
    """``robot.json``: the robot's description and its configuration while it was scanned."""

    urdf: str
    joint_positions: dict[str, float]
    gripper_width: float = 0.0
    base_link: str = "fr3_link0"

    def validate(self) -> None:
        if not self.joint_positions:
            raise ValueError("joint_positions is empty")
        bad = [k for k, v in self.joint_positions.items() if not math.isfinite(v)]
        if bad:
            raise ValueError(f"non-finite joint positions: {bad}")
        if not (0.0 <= self.gripper_width <= 0.2):
            raise ValueError(f"gripper_width must be in [0, 0.2] m, got {self.gripper_width}")

    @property
    def urdf_path(self) -> Path:
        return Path(self.urdf)


# -- loaded scan --------------------------------------------------------------------------------
@dataclass
class ScanFrame:
    """One frame. Images are read on access (:meth:`rgb`, :meth:`depth`, :meth:`mask`)."""

    index: int
    image_path: Path
    intrinsics: Intrinsics
    T_scan_camera: np.ndarray                 # 4x4, OpenCV optical axes
    depth_path: Optional[Path] = None
    mask_path: Optional[Path] = None
    depth_scale: float = 1.0                  # scan units per stored depth unit

    @property
    def name(self) -> str:
        return self.image_path.name

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        return _read_image(self.image_path, "RGB", self.intrinsics)

    def depth(self) -> Optional[np.ndarray]:
        """(H, W) float32 z-depth in scan units, 0 where invalid; None without a depth map."""
        if self.depth_path is None:
            return None
        return _read_depth(self.depth_path, self.intrinsics, self.depth_scale)

    def mask(self) -> Optional[np.ndarray]:
        """(H, W) uint8 label ids (0 background, 1 robot, 2.. objects); None without a mask."""
        if self.mask_path is None:
            return None
        return _read_image(self.mask_path, "L", self.intrinsics)

    def points(self, stride: int = 1) -> dict[str, np.ndarray]:
        """Back-projected depth of this frame in the scan frame: ``points`` (N, 3), ``colors``
        (N, 3) uint8, ``labels`` (N,) uint8 (zeros without a mask) and ``pixels`` (N, 2)."""
        depth = self.depth()
        if depth is None:
            raise ScanError(self.image_path, "frame has no depth map to back-project")
        rgb = self.rgb()
        mask = self.mask()
        pts_cam, pix = backproject(depth, self.intrinsics, stride)
        v, u = pix[:, 1], pix[:, 0]
        return {"points": tf.transform_points(self.T_scan_camera, pts_cam),
                "colors": rgb[v, u], "labels": (mask[v, u] if mask is not None else np.zeros(len(v), np.uint8)),
                "pixels": pix}


@dataclass
class ScanObject:
    """An object mesh (``objects/<name>.*``): metres, in the object's own frame."""

    name: str
    path: Path
    mesh: Any                                  # trimesh.Trimesh
    label: Optional[int] = None                # mask label id, when the masks name it
    T_scan_object: Optional[np.ndarray] = None  # from objects/poses.json (position in scan units)


@dataclass
class Scan:
    root: Path
    frames: list[ScanFrame]
    objects: dict[str, ScanObject] = field(default_factory=dict)
    robot: Optional[RobotAtScan] = None
    splats_path: Optional[Path] = None
    mask_labels: dict[int, str] = field(default_factory=dict)   # object label id -> object name
    source_format: str = "twinrl"              # "twinrl" (cameras.json) or "nerfstudio"

    @property
    def has_depth(self) -> bool:
        return bool(self.frames) and all(f.depth_path is not None for f in self.frames)

    @property
    def has_masks(self) -> bool:
        return bool(self.frames) and all(f.mask_path is not None for f in self.frames)

    def camera_positions(self) -> np.ndarray:
        return np.stack([f.T_scan_camera[:3, 3] for f in self.frames])

    def label_names(self) -> dict[int, str]:
        names = {LABEL_BACKGROUND: "background", LABEL_ROBOT: "robot"}
        names.update(self.mask_labels)
        return names


@dataclass
class ScanGroundTruth:
    """Ground truth of a simulated scan (tests and benchmarks only)."""

    path: Path
    scan_to_base: Similarity
    task: str = ""
    seed: int = 0
    object_poses_base: dict[str, np.ndarray] = field(default_factory=dict)   # name -> 4x4
    camera_poses_base: list[np.ndarray] = field(default_factory=list)        # per frame, 4x4 optical
    joint_positions: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


# -- reading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScanError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScanError(path, f"malformed JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError as exc:
        raise ScanError(path, "image file is missing") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ScanError(path, f"unreadable image: {exc}") from exc


def _check_size(path: Path, size_wh: tuple[int, int], intr: Intrinsics) -> None:
    if tuple(size_wh) != (intr.width, intr.height):
        raise ScanError(path, f"image is {size_wh[0]}x{size_wh[1]} but its intrinsics say "
                              f"{intr.width}x{intr.height}")


def _read_image(path: Path, mode: str, intr: Intrinsics) -> np.ndarray:
    img = _open_image(path)
    _check_size(path, img.size, intr)
    if mode == "L" and img.mode not in ("L", "P", "I", "I;16", "1"):
        raise ScanError(path, f"label mask must be a single-channel image, got mode {img.mode}")
    arr = np.asarray(img.convert(mode) if img.mode != mode and mode == "RGB" else img)
    if mode == "L":
        if arr.ndim != 2:
            raise ScanError(path, f"label mask must be single-channel, got shape {arr.shape}")
        if arr.max(initial=0) > 255:
            raise ScanError(path, f"label ids must be in 0..255, found {int(arr.max())}")
        arr = arr.astype(np.uint8)
    return arr


def _read_depth(path: Path, intr: Intrinsics, scale: float) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ScanError(path, f"unreadable depth array: {exc}") from exc
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise ScanError(path, f"depth must be (H, W), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ScanError(path, f"depth must be numeric, got dtype {arr.dtype}")
        _check_size(path, (arr.shape[1], arr.shape[0]), intr)
        depth = arr.astype(np.float32) * np.float32(scale)
    else:
        img = _open_image(path)
        _check_size(path, img.size, intr)
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ScanError(path, f"depth PNG must be single-channel 16-bit, got shape {arr.shape}")
        depth = arr.astype(np.float32) * np.float32(scale)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def _check_image_header(path: Path, intr: Intrinsics, what: str) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise ScanError(path, f"{what} file is missing")
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ScanError(path, f"unreadable image: {exc}") from exc
    _check_size(path, size, intr)


def _check_depth_header(path: Path, intr: Intrinsics) -> None:
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ScanError(path, f"unreadable depth array: {exc}") from exc
        shape = arr.shape[:2] if arr.ndim == 3 and arr.shape[2] == 1 else arr.shape
        if len(shape) != 2:
            raise ScanError(path, f"depth must be (H, W), got shape {arr.shape}")
        _check_size(path, (shape[1], shape[0]), intr)
    else:
        _check_image_header(path, intr, "depth")


def load_mesh(path: os.PathLike | str):
    """A mesh file (obj, ply, glb, stl, off) as one ``trimesh.Trimesh``; ScanError naming the
    file when it is missing, unreadable or empty."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise ScanError(path, "mesh file is missing")
    try:
        mesh = trimesh.load(path, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many types for bad files
        raise ScanError(path, f"cannot load mesh: {type(exc).__name__}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ScanError(path, "mesh has no triangles")
    if not np.all(np.isfinite(mesh.vertices)):
        raise ScanError(path, "mesh has non-finite vertices")
    return mesh


def _find_optional(directory: Path, stem: str, suffixes: tuple[str, ...]) -> Optional[Path]:
    for s in suffixes:
        p = directory / f"{stem}{s}"
        if p.is_file():
            return p
    return None


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def _convert_pose(T: np.ndarray, axes: str, where: str) -> np.ndarray:
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ScanError(where, "camera pose must be a finite 4x4 matrix")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ScanError(where, f"camera pose bottom row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    # SfM tools sometimes store a scaled rotation; poses must be rigid
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise ScanError(where, "camera pose rotation is not orthonormal (camera-to-scan poses are rigid)")
    if axes == "opengl":
        T = T @ OPENGL_TO_OPENCV
    return T


def _frame_index(name: str, fallback: int) -> int:
    m = re.search(r"(\d+)(?=\.[^.]+$)", name)
    return int(m.group(1)) if m else fallback


def _load_twinrl_cameras(root: Path, path: Path) -> tuple[list[ScanFrame], dict[int, str]]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ScanError(path, "expected a JSON object with 'frames'")
    try:
        cams = from_dict(data, _CamerasFile, str(path))
    except ConfigError as exc:
        raise ScanError(path, f"{exc.key}: {exc.problem}" if exc.key else exc.problem) from exc
    if not cams.frames:
        raise ScanError(path, "no frames listed")
    frames = []
    default_images = sorted(p for p in (root / "frames").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if (root / "frames").is_dir() else []
    for i, entry in enumerate(cams.frames):
        where = f"{path}: frames[{i}]"
        intr = entry.intrinsics or cams.intrinsics
        if intr is None:
            raise ScanError(path, f"frames[{i}]: no intrinsics (neither shared nor per frame)")
        if entry.image:
            image = _resolve(root, entry.image)
        elif i < len(default_images):
            image = default_images[i]
        else:
            image = root / "frames" / f"{frame_stem(i)}.png"
        index = _frame_index(image.name, i)
        stem = image.stem
        depth = _resolve(root, entry.depth) if entry.depth else _find_optional(root / "depth", stem, (".npy", ".png"))
        mask = _resolve(root, entry.mask) if entry.mask else _find_optional(root / "masks", stem, (".png",))
        if cams.depth_scale is not None:
            dscale = cams.depth_scale
        else:
            dscale = 0.001 if depth is not None and depth.suffix == ".png" else 1.0
        frames.append(ScanFrame(index, image, intr, _convert_pose(entry.pose(), cams.axes, where),
                                depth, mask, dscale))
    listed = set()
    for i, f in enumerate(frames):
        key = f.image_path.resolve()
        if key in listed:
            raise ScanError(path, f"frames[{i}]: image {f.image_path.name} is listed twice")
        listed.add(key)
    for img in default_images:
        if img.resolve() not in listed:
            raise ScanError(path, f"no camera pose for frame {img.relative_to(root)} (every image in frames/ "
                                  "needs an entry in 'frames')")
    labels = {int(k): v for k, v in cams.mask_labels.items()}
    return frames, labels


def _ns_intrinsics(d: dict, fallback: Optional[Intrinsics], where: str) -> Optional[Intrinsics]:
    keys = ("fl_x", "fl_y", "cx", "cy", "w", "h")
    if not any(k in d for k in keys):
        return fallback
    base = dataclasses.asdict(fallback) if fallback else {}
    mapping = {"fl_x": "fx", "fl_y": "fy", "cx": "cx", "cy": "cy", "w": "width", "h": "height"}
    for k, v in mapping.items():
        if k in d:
            base[v] = d[k]
    if "fy" not in base and "fx" in base:
        base["fy"] = base["fx"]
    for k in ("width", "height"):
        if isinstance(base.get(k), float) and base[k].is_integer():
            base[k] = int(base[k])
    try:
        return from_dict(base, Intrinsics, where)
    except ConfigError as exc:
        raise ScanError(where, f"intrinsics: {exc.key}: {exc.problem}") from exc


def _load_nerfstudio(root: Path, path: Path) -> tuple[list[ScanFrame], dict[int, str]]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise ScanError(path, "expected a JSON object with a 'frames' list (nerfstudio transforms.json)")
    model = data.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise ScanError(path, f"camera_model {model!r} is not supported (pinhole/OPENCV only)")
    shared = _ns_intrinsics(data, None, str(path))
    scale = float(data.get("depth_unit_scale_factor", 0.001))
    if not data["frames"]:
        raise ScanError(path, "no frames listed")
    frames = []
    for i, fr in enumerate(data["frames"]):
        where = f"{path}: frames[{i}]"
        if not isinstance(fr, dict) or "file_path" not in fr:
            raise ScanError(path, f"frames[{i}]: needs 'file_path'")
        if "transform_matrix" not in fr:
            raise ScanError(path, f"frames[{i}] ({fr['file_path']}): no camera pose ('transform_matrix')")
        intr = _ns_intrinsics(fr, shared, where)
        if intr is None:
            raise ScanError(path, f"frames[{i}]: no intrinsics (fl_x, fl_y, cx, cy, w, h)")
        try:
            T = np.asarray(fr["transform_matrix"], dtype=float)
        except (TypeError, ValueError) as exc:
            raise ScanError(where, f"transform_matrix is not numeric: {exc}") from exc
        if T.shape == (3, 4):
            T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
        image = _resolve(root, fr["file_path"])
        depth = _resolve(root, fr["depth_file_path"]) if fr.get("depth_file_path") else None
        mask = _resolve(root, fr["mask_path"]) if fr.get("mask_path") else None
        dscale = scale if depth is not None and depth.suffix == ".png" else 1.0
        frames.append(ScanFrame(_frame_index(image.name, i), image, intr, _convert_pose(T, "opengl", where),
                                depth, mask, dscale))
    return frames, {}


def load_scan(path: os.PathLike | str, check_images: bool = True) -> Scan:
    """Read and check a scan directory (see docs/scan_format.md).

    With ``check_images`` every image, depth map and mask is opened once to check that it is
    readable and matches its intrinsics (headers only; pixels are read on access).
    """
    root = Path(path)
    if not root.is_dir():
        raise ScanError(root, "scan directory does not exist")
    cameras = root / "cameras.json"
    transforms = root / "transforms.json"
    if cameras.is_file():
        frames, labels = _load_twinrl_cameras(root, cameras)
        fmt = "twinrl"
    elif transforms.is_file():
        frames, labels = _load_nerfstudio(root, transforms)
        fmt = "nerfstudio"
    else:
        raise ScanError(root, "no cameras.json (or nerfstudio transforms.json) in the scan directory")

    if check_images:
        for f in frames:
            _check_image_header(f.image_path, f.intrinsics, "image")
            if f.depth_path is not None:
                _check_depth_header(f.depth_path, f.intrinsics)
            if f.mask_path is not None:
                _check_image_header(f.mask_path, f.intrinsics, "mask")

    robot = None
    robot_file = root / "robot.json"
    if robot_file.is_file():
        data = _read_json(robot_file)
        try:
            robot = from_dict(data, RobotAtScan, str(robot_file))
        except ConfigError as exc:
            raise ScanError(robot_file, f"{exc.key}: {exc.problem}" if exc.key else exc.problem) from exc
        urdf = _resolve(root, robot.urdf)
        if not urdf.is_file():
            raise ScanError(robot_file, f"urdf: file {urdf} does not exist")
        robot.urdf = str(urdf)

    objects: dict[str, ScanObject] = {}
    obj_dir = root / "objects"
    if obj_dir.is_dir():
        name_to_label = {v: k for k, v in labels.items()}
        for p in sorted(obj_dir.iterdir()):
            if p.suffix.lower() not in MESH_SUFFIXES:
                continue
            if p.stem in objects:
                raise ScanError(p, f"two meshes for object {p.stem!r}")
            objects[p.stem] = ScanObject(p.stem, p, load_mesh(p), name_to_label.get(p.stem))
        poses_file = obj_dir / "poses.json"
        if poses_file.is_file():
            poses = _read_json(poses_file)
            if not isinstance(poses, dict):
                raise ScanError(poses_file, "expected an object {name: {position, quaternion}}")
            for name, entry in poses.items():
                if name not in objects:
                    raise ScanError(poses_file, f"{name}: no mesh objects/{name}.(obj|ply|glb)")
                try:
                    fe = from_dict(entry, _FrameEntry, str(poses_file), name)
                except ConfigError as exc:
                    raise ScanError(poses_file, f"{exc.key}: {exc.problem}") from exc
                objects[name].T_scan_object = fe.pose()

    splats = root / "splats.ply"
    return Scan(root=root, frames=frames, objects=objects, robot=robot,
                splats_path=splats if splats.is_file() else None, mask_labels=labels, source_format=fmt)


# -- geometry helpers ---------------------------------------------------------------------------
def backproject(depth: np.ndarray, intr: Intrinsics, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Optical-frame points (N, 3) of the valid (> 0) depth pixels and their pixel coordinates
    (N, 2) as (u, v) integers; every ``stride``-th pixel in each direction."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    depth = np.asarray(depth)
    if depth.shape != (intr.height, intr.width):
        raise ValueError(f"depth is {depth.shape[::-1]} but the intrinsics say {intr.width}x{intr.height}")
    v, u = np.mgrid[0:intr.height:stride, 0:intr.width:stride]
    z = depth[v, u].astype(float)
    ok = np.isfinite(z) & (z > 0)
    u, v, z = u[ok], v[ok], z[ok]
    pts = np.stack([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z], axis=1)
    return pts, np.stack([u, v], axis=1)


# -- ground truth -------------------------------------------------------------------------------
def groundtruth_path(scan_root: os.PathLike | str) -> Path:
    """Where the ground truth of a (simulated) scan is written: next to the scan directory."""
    root = Path(scan_root)
    return root.parent / f"{root.name}.groundtruth.json"


def load_groundtruth(scan_root: os.PathLike | str) -> ScanGroundTruth:
    """Ground truth of a simulated scan, from ``<scan>/../<scan>.groundtruth.json`` or
    ``<scan>/_groundtruth/groundtruth.json``. For tests and benchmarks only."""
    root = Path(scan_root)
    for cand in (groundtruth_path(root), root / GROUNDTRUTH_DIR / "groundtruth.json"):
        if cand.is_file():
            break
    else:
        raise ScanError(root, "no ground truth (neither ../<scan>.groundtruth.json nor _groundtruth/groundtruth.json)")
    data = _read_json(cand)
    if not isinstance(data, dict) or "scan_to_base" not in data:
        raise ScanError(cand, "missing 'scan_to_base'")
    sim = Similarity.from_dict(data["scan_to_base"], str(cand))
    try:
        objects = {k: np.asarray(tf.pose7_to_matrix(v), dtype=float)
                   for k, v in data.get("object_poses_base", {}).items()}
        cams = [np.asarray(T, dtype=float) for T in data.get("camera_poses_base", [])]
    except (TypeError, ValueError) as exc:
        raise ScanError(cand, f"bad pose: {exc}") from exc
    known = {"scan_to_base", "task", "seed", "object_poses_base", "camera_poses_base", "joint_positions"}
    return ScanGroundTruth(cand, sim, str(data.get("task", "")), int(data.get("seed", 0)), objects, cams,
                           {k: float(v) for k, v in data.get("joint_positions", {}).items()},
                           {k: v for k, v in data.items() if k not in known})


# -- atomic writers (used by the scan writers) ---------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: os.PathLike | str, write, durable: bool = True) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temporary file in the same directory,
    which then replaces ``path`` (``os.replace``); on any error the temporary is removed and
    an existing ``path`` is left untouched. The file gets the usual permissions (umask).
    ``durable`` also flushes the data to disk before the rename (fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json_atomic(path: os.PathLike | str, data: Any, durable: bool = True) -> None:
    text = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda fh: fh.write(text), durable)


def write_png_atomic(path: os.PathLike | str, array: np.ndarray, durable: bool = True) -> None:
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == np.uint16:
        img = Image.fromarray(arr)      # 16-bit single channel
    else:
        img = Image.fromarray(arr.astype(np.uint8))
    atomic_write(path, lambda fh: img.save(fh, format="PNG"), durable)


def write_npy_atomic(path: os.PathLike | str, array: np.ndarray, durable: bool = True) -> None:
    atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False), durable)
