"""Grid evaluation: success rate of a policy per cell of the task's workspace grid.

For every cell of the task grid (``config/tasks/<task>.yaml``: rows along x, cols along y,
ID band vs OOD cells) the policy runs ``rollouts_per_cell`` episodes from object poses
sampled inside the cell (seeded, so two evaluations of the same policy see the same starts).
Results: per-cell success rate and trial counts, the ID, OOD and overall success rates, a
JSON file and a heatmap PNG. With ``perturbation`` (clutter, dark, dynamic_light in the
sim world) the same grid measures robustness. Episodes run in ``workers`` processes (spawned, each with its
own env and policy); ``workers=1`` runs them in this process.

World ``sim`` is the MuJoCo sim world (``twinrl_twin.sim.make_env``), rendering its cameras
at the policy's input sizes; world ``twin`` is a built digital twin (``twin=DIR``, the
kinematic twin env of :mod:`twinrl_twin.twin_env`, rendered from the twin's own assets). Other
worlds plug in through ``env_factory(task, seed, image_sizes, time_limit) -> env`` (same
contract as :mod:`twinrl_policy.rollout`).

:func:`compare_grids` compares two results of the same grid (the paper's twin-vs-real Fig. 13:
does the twin find the same cells hard?): Spearman rank correlation of the per-cell success
rates, their mean absolute difference and the ID / OOD rates of both;
:func:`write_comparison` draws both heatmaps and their difference.
"""
from __future__ import annotations

import functools
import json
import math
import multiprocessing as mp
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

__all__ = ["GridResult", "evaluate_grid", "check_world", "write_heatmap", "sim_env_factory", "twin_env_factory", "WORLDS",
           "load_grid_result", "compare_grids", "write_comparison"]


def _env_overrides(image_sizes: dict, time_limit: Optional[int]) -> tuple[dict, list]:
    """Camera overrides for the policy's image sizes and the task override of the time limit."""
    overrides = {}
    for cam, (h, w) in image_sizes.items():
        overrides[f"{cam}.height"], overrides[f"{cam}.width"] = int(h), int(w)
    return overrides, ([f"time_limit={int(time_limit)}"] if time_limit else [])


def sim_env_factory(task: str, seed: int, image_sizes: dict, time_limit: Optional[int],
                    perturbation: Optional[str] = None):
    from twinrl_twin.sim import make_env

    overrides, task_over = _env_overrides(image_sizes, time_limit)
    return make_env(task, render=True, seed=seed, perturbation=perturbation, camera_overrides=overrides,
                    task_overrides=task_over)


def _twin_env(twin_dir: str, task: str, seed: int, image_sizes: dict, time_limit: Optional[int]):
    from twinrl_twin.twin_env import make_twin_env

    overrides, task_over = _env_overrides(image_sizes, time_limit)
    env = make_twin_env(twin_dir, render=True, seed=seed, camera_overrides=overrides, task_overrides=task_over)
    if env.task != task:
        env.close()
        raise ValueError(f"twin {twin_dir} is a twin of task {env.task!r}, not {task!r}")
    return env


def twin_env_factory(twin) -> Callable:
    """Env factory of a built twin directory (``twinrl twin build``); picklable for workers."""
    from twinrl_twin.twin_assets import TWIN_FILE

    path = Path(twin)
    if not (path / TWIN_FILE).is_file():
        raise ValueError(f"twin {twin}: not a twin directory (no {TWIN_FILE}; build one with `twinrl twin build`)")
    return functools.partial(_twin_env, str(path))


WORLDS: dict[str, Callable] = {"sim": sim_env_factory}


def check_world(world: str, twin=None, perturbation: Optional[str] = None) -> None:
    """Refuse a world request that cannot run: an unknown world, ``twin`` without its
    directory, a perturbation outside the sim world."""
    if world == "twin":
        if twin is None:
            raise ValueError("--world twin needs --twin DIR (evaluate_grid: twin=DIR), a twin built with "
                             "`twinrl twin build`")
        if perturbation:
            raise ValueError(f"perturbation {perturbation!r}: perturbations belong to the sim world, not the twin")
    elif world not in WORLDS:
        raise ValueError(f"world {world!r} is not available for grid evaluation "
                         f"(available: {', '.join(list(WORLDS) + ['twin'])})")


@dataclass
class GridResult:
    task: str
    world: str
    perturbation: Optional[str]
    policy: str
    policy_version: int
    rows: int
    cols: int
    x_range: list
    y_range: list
    region: list                 # rows x cols of "id" / "ood"
    trials: list                 # rows x cols
    successes: list              # rows x cols
    success_rate: list           # rows x cols, None where no trial ran
    id_success_rate: float
    ood_success_rate: float
    average_success_rate: float
    rollouts_per_cell: int
    episodes: list = field(default_factory=list)

    def to_json(self) -> str:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return json.dumps(clean(asdict(self)), indent=2)


# ----------------------------------------------------------------------------- workers
_WORKER: dict = {}


def _init_worker(checkpoint, task, world, deterministic, time_limit, env_factory, perturbation=None):
    import torch

    from .inference import PolicyRunner

    torch.set_num_threads(1)
    runner = PolicyRunner(checkpoint, task=task, deterministic=deterministic, num_threads=1)
    sizes = {"third_person": runner.image_size("third_person"), "wrist": runner.image_size("wrist")}
    factory = env_factory or WORLDS[world]
    extra = {"perturbation": perturbation} if perturbation else {}
    _WORKER.update(runner=runner, env=factory(task, 0, sizes, time_limit, **extra))


def _run_job(job):
    from .rollout import run_episode

    row, col, k, seed = job
    ep = run_episode(_WORKER["env"], _WORKER["runner"], seed=seed, options={"cell": (row, col)})
    return {"row": row, "col": col, "rollout": k, "seed": seed, "success": ep["success"], "steps": ep["steps"],
            "return": ep["return"]}


def _job_seed(seed: int, row: int, col: int, k: int) -> int:
    return zlib.crc32(f"{seed}/{row}/{col}/{k}".encode()) & 0x7FFFFFFF


def _grid_of(task: str, world: str, env_factory):
    if env_factory is None and world in ("sim", "twin"):     # both use config/tasks/<task>.yaml's grid
        from twinrl_twin.sim.config import load_task_config
        from twinrl_twin.sim.grid import WorkspaceGrid

        return WorkspaceGrid(load_task_config(task).grid)
    env = (env_factory or WORLDS[world])(task, 0, {"third_person": (8, 8), "wrist": (8, 8)}, 1)
    try:
        return env.grid
    finally:
        close = getattr(env, "close", None)
        if close:
            close()


def evaluate_grid(checkpoint, task: str, rollouts_per_cell: int, world: str = "sim", workers: int = 1,
                  seed: int = 0, deterministic: bool = True, time_limit: Optional[int] = None,
                  region: str = "all", progress: bool = True, env_factory: Optional[Callable] = None,
                  perturbation: Optional[str] = None, twin=None) -> GridResult:
    """Evaluate ``checkpoint`` on every cell (see module doc). ``perturbation`` (robustness
    evaluation, sim world: clutter, dark, dynamic_light) is passed to the env factory.
    ``world="twin"`` needs ``twin``, the twin's directory."""
    from .checkpoint import load_checkpoint

    if rollouts_per_cell < 1:
        raise ValueError(f"rollouts_per_cell must be >= 1, got {rollouts_per_cell}")
    if env_factory is None:
        check_world(world, twin, perturbation)
    ckpt = load_checkpoint(checkpoint)  # fail early, naming the file
    ckpt.model_config.task_index(task)
    grid = _grid_of(task, world, env_factory)
    if env_factory is None and world == "twin":
        env_factory = twin_env_factory(twin)
    jobs = [(r, c, k, _job_seed(seed, r, c, k)) for r, c in grid.cells(region) for k in range(rollouts_per_cell)]
    args = (str(checkpoint), task, world, deterministic, time_limit, env_factory, perturbation)
    episodes = []
    bar = tqdm(total=len(jobs), desc=f"eval {task} ({world})", unit="ep", disable=not progress)
    try:
        if workers <= 1:
            _init_worker(*args)
            for job in jobs:
                episodes.append(_run_job(job))
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
                for ep in pool.imap_unordered(_run_job, jobs):
                    episodes.append(ep)
                    bar.update(1)
    finally:
        bar.close()
        env = _WORKER.pop("env", None)
        _WORKER.pop("runner", None)
        if env is not None and hasattr(env, "close"):
            env.close()
    episodes.sort(key=lambda e: (e["row"], e["col"], e["rollout"]))
    trials = np.zeros((grid.rows, grid.cols), int)
    succ = np.zeros((grid.rows, grid.cols), int)
    for e in episodes:
        trials[e["row"], e["col"]] += 1
        succ[e["row"], e["col"]] += int(e["success"])
    regions = [[grid.region_of(r, c) for c in range(grid.cols)] for r in range(grid.rows)]
    idm = np.array([[x == "id" for x in row] for row in regions])

    def rate(mask):
        n = int(trials[mask].sum())
        return float(succ[mask].sum() / n) if n else float("nan")

    sr = [[(float(succ[r, c] / trials[r, c]) if trials[r, c] else None) for c in range(grid.cols)]
          for r in range(grid.rows)]
    return GridResult(task=task, world=world, perturbation=perturbation, policy=str(checkpoint), policy_version=ckpt.version,
                      rows=grid.rows, cols=grid.cols, x_range=list(grid.extent[0]), y_range=list(grid.extent[1]),
                      region=regions, trials=trials.tolist(), successes=succ.tolist(), success_rate=sr,
                      id_success_rate=rate(idm), ood_success_rate=rate(~idm),
                      average_success_rate=rate(np.ones_like(idm)), rollouts_per_cell=rollouts_per_cell,
                      episodes=episodes)


def _save_figure(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_heatmap(result: GridResult, path) -> Path:
    """Heatmap of the per-cell success rate (rows along x, cols along y), ID cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    sr = np.array([[np.nan if v is None else v for v in row] for row in result.success_rate], float)
    fig, ax = plt.subplots(figsize=(1.1 * result.cols + 2.0, 1.1 * result.rows + 1.4))
    im = ax.imshow(sr, vmin=0.0, vmax=1.0, cmap="RdYlGn", origin="lower")
    for r in range(result.rows):
        for c in range(result.cols):
            n = result.trials[r][c]
            text = "-" if not n else f"{sr[r, c]:.2f}\n{result.successes[r][c]}/{n}"
            ax.text(c, r, text, ha="center", va="center", fontsize=8)
            if result.region[r][c] == "id":
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2.5, ec="navy"))
    ax.set_xticks(range(result.cols))
    ax.set_yticks(range(result.rows))
    ax.set_xlabel(f"col (y {result.y_range[0]:.2f} .. {result.y_range[1]:.2f} m)")
    ax.set_ylabel(f"row (x {result.x_range[0]:.2f} .. {result.x_range[1]:.2f} m)")

    def pct(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"
    world = result.world + (f", {result.perturbation}" if result.perturbation else "")
    ax.set_title(f"{result.task} ({world}), policy v{result.policy_version}\n"
                 f"ID {pct(result.id_success_rate)}  OOD {pct(result.ood_success_rate)}  "
                 f"avg {pct(result.average_success_rate)}  (ID cells outlined)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="success rate")
    return _save_figure(fig, path)


# ----------------------------------------------------------------------------- comparison
def load_grid_result(path) -> GridResult:
    """A :class:`GridResult` from its JSON file (``to_json``); errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return GridResult(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a grid evaluation result ({exc})") from None


def _rates(result: GridResult) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in result.success_rate], float)


def compare_grids(a: GridResult, b: GridResult) -> dict:
    """Per-cell agreement of two evaluations of one task's grid (e.g. sim/real vs twin):
    ``spearman`` (rank correlation of the cells' success rates over the cells evaluated in
    both; NaN when either is constant), ``mean_abs_diff``, the cell count and both worlds'
    ID / OOD / average rates."""
    from scipy.stats import spearmanr

    if (a.task, a.rows, a.cols) != (b.task, b.rows, b.cols):
        raise ValueError(f"grids differ: {a.task} {a.rows}x{a.cols} ({a.world}) vs {b.task} {b.rows}x{b.cols} ({b.world})")
    ra, rb = _rates(a), _rates(b)
    both = np.isfinite(ra) & np.isfinite(rb)
    x, y = ra[both], rb[both]
    rho = float("nan")
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        rho = float(spearmanr(x, y).statistic)
    return {"task": a.task, "worlds": [a.world, b.world], "policies": [a.policy, b.policy], "cells": int(both.sum()),
            "spearman": rho, "mean_abs_diff": float(np.abs(x - y).mean()) if len(x) else float("nan"),
            "id_success_rate": [a.id_success_rate, b.id_success_rate],
            "ood_success_rate": [a.ood_success_rate, b.ood_success_rate],
            "average_success_rate": [a.average_success_rate, b.average_success_rate]}


def write_comparison(a: GridResult, b: GridResult, path, comparison: Optional[dict] = None) -> Path:
    """Both heatmaps side by side and the difference (b - a) per cell, titled with the rank
    correlation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    comparison = comparison or compare_grids(a, b)
    ra, rb = _rates(a), _rates(b)

    def f(v):
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"
    fig, axes = plt.subplots(1, 3, figsize=(3 * (0.9 * a.cols + 1.6), 0.9 * a.rows + 1.8))
    panels = [(ra, f"{a.world}: ID {f(a.id_success_rate)} OOD {f(a.ood_success_rate)}", "RdYlGn", 0.0, 1.0),
              (rb, f"{b.world}: ID {f(b.id_success_rate)} OOD {f(b.ood_success_rate)}", "RdYlGn", 0.0, 1.0),
              (rb - ra, f"{b.world} - {a.world}", "coolwarm", -1.0, 1.0)]
    for ax, (m, title, cmap, lo, hi) in zip(axes, panels):
        im = ax.imshow(m, vmin=lo, vmax=hi, cmap=cmap, origin="lower")
        for r in range(a.rows):
            for c in range(a.cols):
                ax.text(c, r, "-" if not np.isfinite(m[r, c]) else f"{m[r, c]:.2f}", ha="center", va="center",
                        fontsize=7)
                if a.region[r][c] == "id":
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2, ec="navy"))
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(a.cols))
        ax.set_yticks(range(a.rows))
        ax.set_xlabel("col (y)")
        ax.set_ylabel("row (x)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{a.task}: {a.world} vs {b.world}, cell rank correlation {f(comparison['spearman'])} over "
                 f"{comparison['cells']} cells", fontsize=10)
    return _save_figure(fig, path)
