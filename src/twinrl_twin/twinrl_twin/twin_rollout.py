"""Batch rollouts in the twin: N envs in a :class:`twinrl_twin.vec_env.VecEnv`, episodes
spread over the grid cells exactly like ``twinrl sim rollout`` (same plan, same summary)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from .sim.rollout import POLICIES, episode_plan, summarize


def rollout(twin, policy: str = "expert", episodes: int = 10, region: str = "all", seed: int = 0,
            workers: int = 1, num_envs: Optional[int] = None, render: bool = True, progress: bool = True,
            executor=None) -> dict:
    from .twin_assets import load_twin
    from .vec_env import InlineExecutor, ProcessExecutor, TwinEnvSpec, VecEnv

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if episodes < 1 or workers < 1:
        raise ValueError("episodes and workers must be at least 1")
    task = load_twin(twin).task                          # fails early, naming a bad file
    plan = episode_plan(task, episodes, region, seed)
    n = min(episodes, num_envs or workers)
    if executor is None:
        executor = InlineExecutor() if workers == 1 else ProcessExecutor(workers)
    queues = [plan[i::n] for i in range(n)]
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"twin {task} ({policy})", unit="ep")
    results = []
    t0 = time.perf_counter()
    with VecEnv([TwinEnvSpec(str(Path(twin)), seed=q[0]["seed"], render=render) for q in queues], executor) as vec:
        current = [q.pop(0) for q in queues]
        vec.reset(seeds=[c["seed"] for c in current], options=[{"cell": c["cell"]} for c in current])
        active = list(range(n))
        steps = [0] * n
        rets = [0.0] * n
        starts = [time.perf_counter()] * n
        while active:
            if policy == "expert":
                actions = vec.expert_actions(active)
            else:
                actions = np.concatenate([rng.uniform(-0.05, 0.05, (len(active), 3)),
                                          rng.uniform(-0.2, 0.2, (len(active), 3)),
                                          rng.uniform(-1, 1, (len(active), 1))], axis=1)
            _, rew, term, trunc, infos = vec.step(actions, active)
            still = []
            for k, i in enumerate(active):
                steps[i] += 1
                rets[i] += float(rew[k])
                if not (term[k] or trunc[k]):
                    still.append(i)
                    continue
                conf = infos[k]["configuration"]
                item = current[i]
                results.append({"index": item["index"], "row": conf["cell_row"], "col": conf["cell_col"],
                                "region": conf["region"], "seed": item["seed"], "success": bool(infos[k]["success"]),
                                "length": steps[i], "return": rets[i], "seconds": time.perf_counter() - starts[i],
                                "force_stops": 0})
                if bar is not None:
                    bar.update(1)
                if queues[i]:
                    current[i] = queues[i].pop(0)
                    vec.reset(seeds=[current[i]["seed"]], options=[{"cell": current[i]["cell"]}], indices=[i])
                    steps[i], rets[i], starts[i] = 0, 0.0, time.perf_counter()
                    still.append(i)
            active = still
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r["index"])
    summary = summarize(task, policy, region, seed, workers, results, wall, render, None)
    summary["envs"] = n
    summary["twin"] = str(twin)
    return summary
