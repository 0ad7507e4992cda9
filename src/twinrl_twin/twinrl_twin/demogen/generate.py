"""Many twin demonstrations from one seed demonstration, over ID and OOD cells, in parallel.

Requested demos are slots: ``n_id`` slots spread round-robin over the grid's ID cells and
``n_ood`` over its OOD cells. A slot tries up to ``max_attempts`` configurations of its cell
(seeded, so runs repeat); every failed attempt is counted under its rejection reason, and a
slot whose attempts all fail leaves its cell in ``missing_cells``. Kept demos are written as
dataset episodes (source ``twin``) by the worker that made them.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from twinrl_bringup.config import from_dict, load_config, resolve_config_path

from .path import Candidate, Rejection
from .transfer import check_pace

METHODS = ("affine", "plan")


@dataclass
class MoveItSettings:
    service: str = "/plan_kinematic_path"
    group: str = "fr3_arm"
    ee_link: str = "fr3_hand_tcp"
    planner_id: str = "RRTConnectkConfigDefault"


@dataclass
class PlannerSettings:
    backend: str = "ompl"
    time_limit: float = 1.0
    simplify: bool = True
    moveit: MoveItSettings = field(default_factory=MoveItSettings)

    def validate(self) -> None:
        if self.backend not in ("ompl", "moveit"):
            raise ValueError(f"planner.backend must be ompl or moveit, got {self.backend!r}")
        if not self.time_limit > 0:
            raise ValueError("planner.time_limit must be > 0")


@dataclass
class DemoGenConfig:
    max_attempts: int = 3
    settle_steps: int = 10
    render: bool = True
    in_hand_from_demo: bool = True      # insertion tasks: hold the object in the twin where the seed demo implies
    action_noise: float = 0.0           # m: jitter of the executed path, corrected the step after (execute.jitter_actions)
    grip_quiet_steps: int = 3           # steps before and after a gripper change that action_noise leaves on the path
    wipe_passes: int = 3                # a wipe that left the twin's board unclean goes over its strokes again
    approach_error: float = 0.0         # m: radius of the approach's aim-off, corrected above the object (execute.offset_approach)
    pace: str = "split"                 # affine paths: split each longer step, or walk the seed's runs at its pace (transfer)
    planner: PlannerSettings = field(default_factory=PlannerSettings)

    def validate(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.settle_steps < 0:
            raise ValueError("settle_steps must be >= 0")
        if not (np.isfinite(self.action_noise) and 0.0 <= self.action_noise <= 0.01):
            raise ValueError(f"action_noise must be in [0, 0.01] m, got {self.action_noise!r}")
        if self.wipe_passes < 1:
            raise ValueError(f"wipe_passes must be >= 1, got {self.wipe_passes!r}")
        if self.grip_quiet_steps < 0:
            raise ValueError(f"grip_quiet_steps must be >= 0, got {self.grip_quiet_steps!r}")
        if not (np.isfinite(self.approach_error) and 0.0 <= self.approach_error <= 0.05):
            raise ValueError(f"approach_error must be in [0, 0.05] m, got {self.approach_error!r}")
        check_pace(self.pace)
        self.planner.validate()


def load_demogen_config(path=None, overrides=()) -> DemoGenConfig:
    return load_config(resolve_config_path(path or "demogen"), DemoGenConfig, overrides=overrides)


def plan_slots(grid, n_id: int, n_ood: int, seed: int, max_attempts: int) -> list[dict]:
    """Slot i of a region goes to that region's cell i mod (its cell count)."""
    if n_id < 0 or n_ood < 0 or n_id + n_ood < 1:
        raise ValueError(f"ask for at least one demo (n_id={n_id}, n_ood={n_ood})")
    slots = []
    for region, n in (("id", n_id), ("ood", n_ood)):
        if n == 0:
            continue
        cells = grid.cells(region)
        if not cells:
            raise ValueError(f"the task's grid has no {region} cells")
        for i in range(n):
            index = len(slots)
            slots.append({"index": index, "region": region, "cell": tuple(int(v) for v in cells[i % len(cells)]),
                          "seeds": [int(seed) * 1_000_003 + index * 101 + a for a in range(max_attempts)]})
    return slots


# ----------------------------------------------------------------------------- worker side
_WORKER: dict = {}


def _init_worker(twin: str, seed_demo: str, method: str, out: str, cfg: dict, render: bool,
                 camera_overrides: Optional[dict]) -> None:
    """Build the twin env, the seed demo's keyframes, the planner and the writer once per worker."""
    from twinrl_bringup.dataset import DatasetWriter

    from ..twin_env import make_twin_env
    from .collision import CollisionChecker
    from .keyframes import extract_keyframes, load_seed_demo
    from .planning import make_planner

    config = from_dict(cfg, DemoGenConfig, "demogen")
    env = make_twin_env(twin, render=render, camera_overrides=camera_overrides)
    demo = load_seed_demo(seed_demo)
    if demo.task != env.task:
        raise ValueError(f"seed demo {seed_demo} is a {demo.task!r} demo, the twin {twin} is for {env.task!r}")
    _WORKER.clear()
    _WORKER.update(env=env, demo=demo, keyframes=extract_keyframes(demo), method=method,
                   planner=make_planner(method, env, asdict(config.planner)), checker=CollisionChecker(env),
                   writer=DatasetWriter(out), config=config)


def _run_slot(slot: dict) -> dict:
    from .execute import generate_candidate

    w = _WORKER
    env, config = w["env"], w["config"]
    attempts = []
    t0 = time.perf_counter()
    for s in slot["seeds"]:
        env.reset(seed=s, options={"cell": slot["cell"]})
        configuration = dict(env.configuration)
        result = generate_candidate(env, w["demo"], w["keyframes"], configuration, method=w["method"],
                                    planner=w["planner"], collision_check=w["checker"].check,
                                    max_extra_steps=config.settle_steps,
                                    in_hand_from_demo=config.in_hand_from_demo,
                                    action_noise=config.action_noise, rng=np.random.default_rng([int(s), 0xD7]),
                                    approach_error=config.approach_error,
                                    grip_quiet_steps=config.grip_quiet_steps, wipe_passes=config.wipe_passes,
                                    pace=config.pace)
        if isinstance(result, Candidate):
            ep = result.episode
            ep.extra = dict(ep.extra or {}, slot=slot["index"], attempt=len(attempts) + 1)
            path = w["writer"].write_episode(ep)
            return {"index": slot["index"], "region": slot["region"], "cell": list(slot["cell"]), "ok": True,
                    "file": str(path), "episode_id": ep.episode_id, "length": int(ep.length),
                    "rejections": attempts, "seconds": time.perf_counter() - t0}
        assert isinstance(result, Rejection)
        attempts.append({"reason": result.reason, "detail": result.detail[:300], "seed": s})
    return {"index": slot["index"], "region": slot["region"], "cell": list(slot["cell"]), "ok": False,
            "file": "", "episode_id": "", "length": 0, "rejections": attempts, "seconds": time.perf_counter() - t0}


def _close_worker() -> None:
    env = _WORKER.get("env")
    if env is not None:
        env.close()
    _WORKER.clear()


# ----------------------------------------------------------------------------- driver
def generate(twin, seed_demo, out, n_id: int, n_ood: int, method: str = "affine", workers: int = 1,
             seed: int = 0, config: Optional[DemoGenConfig] = None, camera_overrides: Optional[dict] = None,
             progress: bool = True, on_result: Optional[Callable[[dict, dict], None]] = None,
             cancelled: Callable[[], bool] = lambda: False) -> dict:
    """Generate ``n_id`` + ``n_ood`` twin demos from ``seed_demo`` into ``out``; returns the summary
    (generated, rejected, rejections by reason, cells, wall time, demos per minute).
    ``on_result(slot_result, counts)`` is called as slots finish (the ROS action's feedback)."""
    from ..sim.config import load_task_config
    from ..sim.grid import WorkspaceGrid
    from ..twin_assets import load_twin
    from .keyframes import load_seed_demo

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    config = config or load_demogen_config()
    config.validate()
    task = load_twin(twin).task                      # a bad twin fails here, naming the file
    demo = load_seed_demo(seed_demo)                 # a bad seed demo too
    if demo.task != task:
        raise ValueError(f"seed demo {seed_demo} is a {demo.task!r} demo, the twin {twin} is for {task!r}")
    grid = WorkspaceGrid(load_task_config(task).grid)
    slots = plan_slots(grid, n_id, n_ood, seed, config.max_attempts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    init_args = (str(twin), str(seed_demo), method, str(out), asdict(config), bool(config.render), camera_overrides)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(slots), desc=f"twin demos {task} ({method})", unit="demo")
    results: list[dict] = []
    counts = {"generated": 0, "rejected": 0, "total": len(slots)}
    t0 = time.perf_counter()

    def done(res: dict) -> None:
        results.append(res)
        counts["generated"] += int(res["ok"])
        counts["rejected"] += len(res["rejections"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(kept=counts["generated"], rejected=counts["rejected"])
        if on_result is not None:
            on_result(res, dict(counts))

    cancel = False
    n_workers = min(workers, len(slots))
    if n_workers == 1:
        _init_worker(*init_args)
        try:
            for slot in slots:
                if cancelled():
                    cancel = True
                    break
                done(_run_slot(slot))
        finally:
            _close_worker()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=init_args) as pool:
            futures = [pool.submit(_run_slot, slot) for slot in slots]
            for fut in as_completed(futures):
                done(fut.result())
                if cancelled() and not cancel:
                    cancel = True
                    for f in futures:
                        f.cancel()
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r["index"])
    return summarize(task, method, str(twin), str(seed_demo), str(out), slots, results, wall, n_workers, cancel)


def summarize(task, method, twin, seed_demo, out, slots, results, wall, workers, cancelled=False) -> dict:
    reasons = Counter(a["reason"] for r in results for a in r["rejections"])
    kept = [r for r in results if r["ok"]]
    examples: dict = {}
    for r in results:
        for a in r["rejections"]:
            examples.setdefault(a["reason"], a["detail"])
    cells = {reg: sorted({tuple(r["cell"]) for r in kept if r["region"] == reg}) for reg in ("id", "ood")}
    asked = {reg: sorted({tuple(s["cell"]) for s in slots if s["region"] == reg}) for reg in ("id", "ood")}
    n_attempts = sum(len(r["rejections"]) + int(r["ok"]) for r in results)
    return {
        "task": task, "method": method, "twin": twin, "seed_demo": seed_demo, "out": out,
        "requested": len(slots), "requested_id": sum(s["region"] == "id" for s in slots),
        "requested_ood": sum(s["region"] == "ood" for s in slots),
        "generated": len(kept), "generated_id": sum(r["region"] == "id" for r in kept),
        "generated_ood": sum(r["region"] == "ood" for r in kept),
        "attempts": n_attempts, "rejected": int(sum(reasons.values())), "rejections": dict(reasons),
        "rejection_examples": examples,
        "candidate_success_rate": len(kept) / n_attempts if n_attempts else 0.0,
        "cells": {k: [list(c) for c in v] for k, v in cells.items()},
        "missing_cells": {reg: [list(c) for c in asked[reg] if tuple(c) not in set(cells[reg])] for reg in asked},
        "mean_length": float(np.mean([r["length"] for r in kept])) if kept else 0.0,
        "wall_time_s": wall, "demos_per_minute": 60.0 * len(kept) / wall if wall > 0 else 0.0,
        "workers": workers, "cpus": os.cpu_count(), "cancelled": bool(cancelled),
        "files": [r["file"] for r in kept],
    }
