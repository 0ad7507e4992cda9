"""Batch rollouts of a policy in the sim world, spread evenly over the grid cells of a region,
optionally across worker processes. Used by ``twinrl sim rollout`` and the tests."""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Optional

import numpy as np

POLICIES = ("expert", "random")


def episode_plan(task: str, episodes: int, region: str, seed: int) -> list[dict]:
    """Episode i runs in cell i mod (number of region cells), seeded from ``seed`` and i."""
    from .config import load_task_config
    from .grid import WorkspaceGrid

    grid = WorkspaceGrid(load_task_config(task).grid)
    cells = grid.cells(region)
    if not cells:
        raise ValueError(f"task {task!r} has no {region!r} cells")
    return [{"index": i, "cell": cells[i % len(cells)], "seed": int(seed) * 100_003 + i} for i in range(episodes)]


def _run_chunk(args) -> list[dict]:
    task, policy, plan, render, perturbation, queue = args
    from .env import make_env

    env = make_env(task, render=render, perturbation=perturbation, seed=plan[0]["seed"] if plan else 0)
    rng = np.random.default_rng(plan[0]["seed"] if plan else 0)
    expert = env.expert() if policy == "expert" else None
    out = []
    try:
        for item in plan:
            t0 = time.perf_counter()
            obs, info = env.reset(seed=item["seed"], options={"cell": item["cell"]})
            if expert is not None:
                expert.reset()
            steps = 0
            ret = 0.0
            while True:
                if expert is not None:
                    action = expert.act(obs, info)
                else:
                    action = np.concatenate([rng.uniform(-0.05, 0.05, 3), rng.uniform(-0.2, 0.2, 3),
                                             rng.uniform(-1, 1, 1)])
                obs, reward, terminated, truncated, info = env.step(action)
                steps += 1
                ret += reward
                if terminated or truncated:
                    break
            conf = info["configuration"]
            out.append({"index": item["index"], "row": conf["cell_row"], "col": conf["cell_col"],
                        "region": conf["region"], "seed": item["seed"], "success": bool(info["success"]),
                        "length": steps, "return": ret, "seconds": time.perf_counter() - t0,
                        "force_stops": int(info["force_stops"])})
            if queue is not None:
                queue.put(1)
    finally:
        env.close()
    return out


def rollout(task: str, policy: str = "expert", episodes: int = 10, region: str = "all", seed: int = 0,
            workers: int = 1, render: bool = False, perturbation: Optional[str] = None,
            progress: bool = True) -> dict:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    plan = episode_plan(task, episodes, region, seed)
    workers = min(workers, episodes)
    chunks = [plan[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"{task} ({policy})", unit="ep")
    if workers == 1:
        class _Q:
            def put(self, n):
                if bar is not None:
                    bar.update(n)

        results = _run_chunk((task, policy, chunks[0], render, perturbation, _Q()))
    else:
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            queue = manager.Queue()
            with ctx.Pool(workers) as pool:
                pending = pool.map_async(_run_chunk, [(task, policy, c, render, perturbation, queue) for c in chunks])
                done = 0
                while done < episodes:
                    try:
                        queue.get(timeout=1.0)
                    except Exception:
                        if pending.ready():
                            break
                        continue
                    done += 1
                    if bar is not None:
                        bar.update(1)
                results = [r for chunk in pending.get() for r in chunk]
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r["index"])
    return summarize(task, policy, region, seed, workers, results, wall, render, perturbation)


def summarize(task, policy, region, seed, workers, results, wall, render=False, perturbation=None) -> dict:
    cells: dict = {}
    for r in results:
        c = cells.setdefault((r["row"], r["col"]), {"row": r["row"], "col": r["col"], "region": r["region"],
                                                    "episodes": 0, "successes": 0})
        c["episodes"] += 1
        c["successes"] += int(r["success"])
    steps = sum(r["length"] for r in results)
    by_region = {}
    for reg in ("id", "ood"):
        rs = [r for r in results if r["region"] == reg]
        by_region[reg] = {"episodes": len(rs), "successes": sum(r["success"] for r in rs),
                          "success_rate": (sum(r["success"] for r in rs) / len(rs)) if rs else None}
    return {
        "task": task,
        "policy": policy,
        "region": region,
        "seed": seed,
        "workers": workers,
        "render": render,
        "perturbation": perturbation,
        "episodes": len(results),
        "successes": sum(r["success"] for r in results),
        "success_rate": sum(r["success"] for r in results) / max(1, len(results)),
        "mean_length": steps / max(1, len(results)),
        "env_steps": steps,
        "wall_s": wall,
        "env_steps_per_s": steps / wall if wall > 0 else 0.0,
        "force_stops": sum(r["force_stops"] for r in results),
        "regions": by_region,
        "per_cell": sorted(cells.values(), key=lambda c: (c["row"], c["col"])),
        "failures": [{k: r[k] for k in ("index", "row", "col", "seed", "length")} for r in results if not r["success"]],
    }
