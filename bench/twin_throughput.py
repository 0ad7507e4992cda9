#!/usr/bin/env python3
"""Twin vs sim throughput: env steps/s with both camera images (256x256 third-person,
128x128 wrist), for 1..K worker processes, the kinematic twin next to the MuJoCo sim world,
both driven by the same scripted expert through the same VecEnv/ProcessExecutor harness.

    python bench/twin_throughput.py [--task pick_and_place] [--twin DIR] [--workers 2]
                                    [--steps 150] [--envs-per-worker 1] [--json]

Without --twin a simulated scan of the task is made and a twin is built from it (ground-truth
alignment) in a temporary directory. Per-core figures divide by min(workers, CPU cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path



class SimWithExpert:
    """The sim env with the twin env's ``expert_action`` hook, so one harness drives both."""

    def __init__(self, task: str, seed: int):
        from twinrl_twin.sim import make_env

        self.env = make_env(task, render=True, seed=seed)
        self.expert = self.env.expert()
        self.last = (None, None)

    def reset(self, seed=None, options=None):
        self.expert.reset()
        self.last = self.env.reset(seed=seed, options=options)
        return self.last

    def step(self, action):
        out = self.env.step(action)
        self.last = (out[0], out[4])
        return out

    def expert_action(self):
        return self.expert.act(*self.last)

    def close(self):
        self.env.close()


class SimSpec:
    def __init__(self, task: str, seed: int):
        self.task, self.seed = task, seed

    def __call__(self):
        return SimWithExpert(self.task, self.seed)


def measure(factories, workers: int, steps: int) -> dict:
    from twinrl_twin.vec_env import ProcessExecutor, VecEnv

    n = len(factories)
    with VecEnv(factories, ProcessExecutor(workers)) as vec:
        obs, _ = vec.reset(seeds=list(range(n)))
        shapes = {k: list(obs[k].shape[1:]) for k in ("third_person", "wrist")}
        for _ in range(3):                                   # warm-up
            vec.step(vec.expert_actions())
        t0 = time.perf_counter()
        done_steps = 0
        for _ in range(steps):
            _, _, term, trunc, _ = vec.step(vec.expert_actions())
            done_steps += n
            ended = [i for i in range(n) if term[i] or trunc[i]]
            if ended:
                vec.reset(indices=ended)
        wall = time.perf_counter() - t0
    return {"envs": n, "workers": workers, "steps": done_steps, "wall_s": wall,
            "steps_per_s": done_steps / wall, "images": shapes}


def image_gap(task: str, twin, episodes: int = 4) -> dict:
    """Mean absolute pixel difference (0..255) between the sim's and the twin's images of the
    same configuration after a few expert steps: the appearance part of the sim-to-twin gap."""
    import numpy as np

    from twinrl_twin.sim import make_env
    from twinrl_twin.twin_env import make_twin_env

    sim, tw = make_env(task, render=True), make_twin_env(twin, render=True)
    gaps = {"third_person": [], "wrist": []}
    try:
        for seed in range(episodes):
            so, si = sim.reset(seed=seed)
            to, ti = tw.reset(seed=seed, options={"configuration": {"object_pose": si["configuration"]["object_pose"]}})
            for key in gaps:
                gaps[key].append(float(np.abs(so[key].astype(int) - to[key].astype(int)).mean()))
    finally:
        sim.close()
        tw.close()
    return {k: sum(v) / len(v) for k, v in gaps.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pick_and_place")
    ap.add_argument("--twin", type=Path, default=None, help="twin directory (default: build one)")
    ap.add_argument("--workers", type=int, default=2, help="measure 1..K worker processes")
    ap.add_argument("--envs-per-worker", type=int, default=1)
    ap.add_argument("--steps", type=int, default=150, help="batched steps per measurement")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from twinrl_twin.vec_env import TwinEnvSpec

    tmp = None
    twin = args.twin
    if twin is None:
        from twinrl_twin.scan import load_groundtruth
        from twinrl_twin.scan_sim import simulate_scan
        from twinrl_twin.twin_assets import build_twin

        tmp = tempfile.TemporaryDirectory(prefix="twin_bench_")
        scan = Path(tmp.name) / "scan"
        simulate_scan(args.task, scan, frames=12, seed=1, progress=False)
        twin = Path(tmp.name) / "twin"
        build_twin(scan, twin, args.task, load_groundtruth(scan).scan_to_base, "groundtruth", preview=False)
    cores = os.cpu_count() or 1
    rows = []
    for k in range(1, args.workers + 1):
        n = k * args.envs_per_worker
        tw = measure([TwinEnvSpec(str(twin), seed=i) for i in range(n)], k, args.steps)
        sm = measure([SimSpec(args.task, i) for i in range(n)], k, max(20, args.steps // 3))
        used = min(k, cores)
        row = {"workers": k, "envs": n, "twin_steps_per_s": tw["steps_per_s"], "sim_steps_per_s": sm["steps_per_s"],
               "twin_per_core": tw["steps_per_s"] / used, "sim_per_core": sm["steps_per_s"] / used,
               "ratio": tw["steps_per_s"] / sm["steps_per_s"], "images": tw["images"]}
        rows.append(row)
        print(f"workers {k} envs {n}: twin {row['twin_steps_per_s']:.1f} steps/s ({row['twin_per_core']:.1f}/core)  "
              f"sim {row['sim_steps_per_s']:.1f} steps/s ({row['sim_per_core']:.1f}/core)  "
              f"twin/sim {row['ratio']:.2f}x", flush=True)
    gap = image_gap(args.task, twin)
    print(f"sim vs twin image gap (mean |difference|, 0..255) at reset: third-person {gap['third_person']:.1f}, "
          f"wrist {gap['wrist']:.1f}")
    if tmp is not None:
        tmp.cleanup()
    result = {"task": args.task, "cpu_cores": cores, "rows": rows, "image_gap": gap,
              "goal_met": all(r["twin_per_core"] >= r["sim_per_core"] for r in rows)}
    print(f"goal (twin per core >= sim per core): {'met' if result['goal_met'] else 'NOT met'}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
