"""The workspace grid of initial object configurations, split into ID and OOD regions."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .config import GridConfig

REGIONS = ("id", "ood", "all")


class WorkspaceGrid:
    """rows x cols cells over ``x_range`` x ``y_range`` (rows along x, cols along y)."""

    def __init__(self, cfg: GridConfig):
        self.cfg = cfg
        self.rows, self.cols = cfg.rows, cfg.cols
        self.extent = (tuple(cfg.x_range), tuple(cfg.y_range))
        self.cell_size = ((cfg.x_range[1] - cfg.x_range[0]) / cfg.rows,
                          (cfg.y_range[1] - cfg.y_range[0]) / cfg.cols)
        mask = np.zeros((cfg.rows, cfg.cols), dtype=bool)
        if cfg.id_cells:
            for r, c in cfg.id_cells:
                mask[r, c] = True
        else:
            mask[cfg.id_rows[0]:cfg.id_rows[1] + 1, cfg.id_cols[0]:cfg.id_cols[1] + 1] = True
        self.id_mask = mask

    def region_of(self, row: int, col: int) -> str:
        self._check(row, col)
        return "id" if self.id_mask[row, col] else "ood"

    def cells(self, region: str = "all") -> list[tuple[int, int]]:
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        out = []
        for r in range(self.rows):
            for c in range(self.cols):
                if region == "all" or (region == "id") == bool(self.id_mask[r, c]):
                    out.append((r, c))
        return out

    def cell_center(self, row: int, col: int) -> np.ndarray:
        self._check(row, col)
        x = self.cfg.x_range[0] + (row + 0.5) * self.cell_size[0]
        y = self.cfg.y_range[0] + (col + 0.5) * self.cell_size[1]
        return np.array([x, y])

    def cell_of(self, x: float, y: float) -> Optional[tuple[int, int]]:
        r = int(np.floor((x - self.cfg.x_range[0]) / self.cell_size[0]))
        c = int(np.floor((y - self.cfg.y_range[0]) / self.cell_size[1]))
        if 0 <= r < self.rows and 0 <= c < self.cols:
            return r, c
        return None

    def sample(self, rng: np.random.Generator, region: str = "all",
               cell: Optional[tuple[int, int]] = None) -> dict:
        """A cell (given or uniform over the region) and an (x, y, yaw) inside it."""
        if cell is None:
            choices = self.cells(region)
            if not choices:
                raise ValueError(f"the grid has no {region!r} cells")
            cell = choices[int(rng.integers(len(choices)))]
        row, col = int(cell[0]), int(cell[1])
        center = self.cell_center(row, col)
        half = 0.5 * self.cfg.jitter * np.asarray(self.cell_size)
        xy = center + rng.uniform(-half, half)
        yaw = float(rng.uniform(*self.cfg.yaw_range))
        return {"row": row, "col": col, "region": self.region_of(row, col),
                "x": float(xy[0]), "y": float(xy[1]), "yaw": yaw}

    def _check(self, row: int, col: int) -> None:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise ValueError(f"cell ({row}, {col}) outside the {self.rows}x{self.cols} grid")
