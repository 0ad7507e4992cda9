"""Typed configuration of the sim world: tasks (``config/tasks/<task>.yaml``) and cameras
(``config/cameras.yaml``), loaded with the project's one loader (twinrl_bringup.config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from twinrl_bringup.config import load_config, resolve_config_path

TASKS = ("pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard")

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]
RGBA = tuple[float, float, float, float]


@dataclass
class GridConfig:
    """rows x cols cells over an x/y rectangle of the base frame; rows run along x, cols along y.

    The in-distribution region is the band ``id_rows`` x ``id_cols`` (inclusive index ranges),
    or the explicit ``id_cells`` list when given; every other cell is out-of-distribution.
    """

    rows: int
    cols: int
    x_range: Vec2
    y_range: Vec2
    id_rows: tuple[int, int]
    id_cols: tuple[int, int]
    id_cells: Optional[list[tuple[int, int]]] = None
    jitter: float = 0.8                 # fraction of the cell the position is sampled in
    yaw_range: Vec2 = (-0.5, 0.5)       # rad, uniform

    def validate(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError("grid needs at least one row and one column")
        if self.x_range[0] >= self.x_range[1] or self.y_range[0] >= self.y_range[1]:
            raise ValueError("x_range / y_range must be increasing")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.yaw_range[0] > self.yaw_range[1]:
            raise ValueError("yaw_range must be increasing")
        for name, (lo, hi), n in (("id_rows", self.id_rows, self.rows), ("id_cols", self.id_cols, self.cols)):
            if not 0 <= lo <= hi < n:
                raise ValueError(f"{name} {[lo, hi]} must be an increasing index range inside 0..{n - 1}")
        for r, c in self.id_cells or []:
            if not (0 <= r < self.rows and 0 <= c < self.cols):
                raise ValueError(f"id_cells: cell ({r}, {c}) outside the {self.rows}x{self.cols} grid")


@dataclass
class ObjectConfig:
    size: Vec3                          # task-specific extents (m), see the task's docs
    mass: float = 0.1
    friction: float = 1.0
    rgba: RGBA = (0.85, 0.2, 0.15, 1.0)

    def validate(self) -> None:
        if min(self.size) <= 0 or self.mass <= 0:
            raise ValueError("object size and mass must be positive")


@dataclass
class TargetConfig:
    position: Vec3                      # base frame (m)
    yaw: float = 0.0
    size: Vec3 = (0.1, 0.1, 0.01)       # task-specific extents (m)
    clearance: float = 0.002            # insertion tasks: hole minus peg width (m)
    rgba: RGBA = (0.3, 0.35, 0.8, 1.0)


@dataclass
class SuccessConfig:
    xy_tolerance: float = 0.02          # m
    height_tolerance: float = 0.02      # m
    insert_depth: float = 0.015         # m, insertion tasks
    erase_fraction: float = 0.9         # erase_whiteboard


@dataclass
class RewardConfig:
    shaped: bool = False                # add the shaped terms to the sparse success reward
    success: float = 1.0
    distance_weight: float = 0.1


@dataclass
class TaskConfig:
    name: Literal["pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard"]
    description: str
    time_limit: int                     # steps at 10 Hz
    grid: GridConfig
    object: ObjectConfig
    target: TargetConfig
    success: SuccessConfig = field(default_factory=SuccessConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    pattern: Optional[list[str]] = None  # erase_whiteboard: '#' ink cell, '.' clean cell

    def validate(self) -> None:
        if self.time_limit < 1:
            raise ValueError("time_limit must be at least 1 step")
        if self.name == "erase_whiteboard":
            if not self.pattern or len({len(r) for r in self.pattern}) != 1:
                raise ValueError("pattern: erase_whiteboard needs equal-length rows of '#'/'.'")
            if not any("#" in r for r in self.pattern):
                raise ValueError("pattern: needs at least one '#' cell")
            bad = {ch for r in self.pattern for ch in r} - {"#", "."}
            if bad:
                raise ValueError(f"pattern: unexpected characters {sorted(bad)}")


def load_task_config(task: str, overrides=()) -> TaskConfig:
    if task not in TASKS and not str(task).endswith(".yaml"):
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return load_config(resolve_config_path(task, "tasks"), TaskConfig, overrides=overrides)


@dataclass
class CameraConfig:
    width: int
    height: int
    fovy: float                          # vertical field of view (degrees)
    parent: str                          # "world" (base frame) or a body name (fr3_hand)
    position: Vec3                       # in the parent frame
    lookat: Vec3                         # point looked at, in the parent frame
    up: Vec3 = (0.0, 0.0, 1.0)           # rough image-up direction, in the parent frame
    frame_id: str = ""

    def validate(self) -> None:
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"image size {self.width}x{self.height} outside 16..4096")
        if not 1.0 <= self.fovy <= 170.0:
            raise ValueError(f"fovy must be in [1, 170] degrees, got {self.fovy}")


@dataclass
class PerturbationConfig:
    clutter_objects: int = 8
    dark_scale: float = 0.3             # light intensity factor of "dark"
    dynamic_period: float = 2.0         # s, colour cycle of "dynamic_light"


@dataclass
class CamerasConfig:
    third_person: CameraConfig
    wrist: CameraConfig
    perturbations: PerturbationConfig = field(default_factory=PerturbationConfig)


def load_cameras_config(path=None, overrides=()) -> CamerasConfig:
    return load_config(resolve_config_path(path if path is not None else "cameras"), CamerasConfig,
                       overrides=overrides)
