#!/usr/bin/env python3
"""Sim throughput: env steps/s with both camera images, in one process and in two processes,
for the project's sim world and, side by side, for the image-observation Franka env of
gym-hil (PandaPickCubeBase-v0 with image_obs=True; the same 10 Hz control and 2 ms physics).

    python bench/sim_throughput.py [--task pick_and_place] [--steps 200]
                                   [--gym-hil-python /path/to/python]

gym-hil pins mujoco < 3.9 while this project uses MuJoCo 4, so it lives in its own venv:

    python -m venv /tmp/gymhil && /tmp/gymhil/bin/pip install gym-hil

and is found through --gym-hil-python, $TWINRL_GYM_HIL_PYTHON, or the current interpreter.
When it cannot run, the reason is printed and our numbers are still reported.

Each measurement runs in fresh worker processes (this file with --worker); the two-process
figure is the total steps of both workers over the wall time of the slower one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# --- workers (run in their own interpreter) ------------------------------------------------------

def _worker_twinrl(task: str, steps: int, seed: int) -> dict:
    import numpy as np

    from twinrl_twin.sim import make_env

    env = make_env(task, render=True, seed=seed)
    obs, info = env.reset(seed=seed)
    expert = env.expert()
    for _ in range(5):                     # warm-up (renderer contexts, caches)
        obs, _, term, trunc, info = env.step(expert.act(obs, info))
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        obs, _, term, trunc, info = env.step(expert.act(obs, info))
        n += 1
        if term or trunc:
            obs, info = env.reset()
            expert.reset()
    wall = time.perf_counter() - t0
    shapes = {k: list(np.asarray(obs[k]).shape) for k in ("third_person", "wrist")}
    env.close()
    return {"steps": n, "wall_s": wall, "images": shapes}


def _worker_gym_hil(steps: int, seed: int) -> dict:
    import numpy as np
    from gym_hil.envs import PandaPickCubeGymEnv

    env = PandaPickCubeGymEnv(image_obs=True, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    for _ in range(5):
        obs, *_ = env.step(rng.uniform(low, high) * 0.2)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        obs, _, term, trunc, _ = env.step(rng.uniform(low, high) * 0.2)
        n += 1
        if term or trunc:
            obs, _ = env.reset()
    wall = time.perf_counter() - t0
    shapes = {k: list(np.asarray(v).shape) for k, v in obs["pixels"].items()}
    env.close()
    return {"steps": n, "wall_s": wall, "images": shapes}


# --- driver --------------------------------------------------------------------------------------

def _run_workers(python: str, args: list[str], processes: int, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    t0 = time.perf_counter()
    procs = [subprocess.Popen([python, str(HERE), *args, "--seed", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(processes)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise RuntimeError(f"worker timed out after {timeout:.0f} s")
        if p.returncode != 0:
            tail = (err or out).strip().splitlines()[-3:]
            raise RuntimeError(f"worker failed ({p.returncode}): {' | '.join(tail)}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    del t0
    steps = sum(r["steps"] for r in results)
    slowest = max(r["wall_s"] for r in results)
    return {"steps_per_s": steps / slowest, "per_process": [r["steps"] / r["wall_s"] for r in results],
            "images": results[0]["images"]}


def _find_gym_hil(explicit: str | None) -> tuple[str | None, str]:
    candidates = [c for c in (explicit, os.environ.get("TWINRL_GYM_HIL_PYTHON"), sys.executable) if c]
    reasons = []
    for py in candidates:
        if not Path(py).exists():
            reasons.append(f"{py}: no such interpreter")
            continue
        probe = subprocess.run([py, "-c", "import gym_hil, mujoco; print(mujoco.__version__)"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return py, probe.stdout.strip()
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        reasons.append(f"{py}: {last}")
    return None, "; ".join(reasons)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="pick_and_place")
    parser.add_argument("--steps", type=int, default=200, help="timed env steps per process")
    parser.add_argument("--gym-hil-python", default=None, help="interpreter with gym-hil installed")
    parser.add_argument("--json", action="store_true", help="print one JSON summary on the last line")
    parser.add_argument("--worker", choices=("twinrl", "gym_hil"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "twinrl":
        print(json.dumps(_worker_twinrl(args.task, args.steps, args.seed)))
        return 0
    if args.worker == "gym_hil":
        print(json.dumps(_worker_gym_hil(args.steps, args.seed)))
        return 0

    timeout = 60 + args.steps * 2.0
    rows = {}
    print(f"measuring twinrl sim ({args.task}), {args.steps} steps per process ...", file=sys.stderr)
    ours = {n: _run_workers(sys.executable, ["--worker", "twinrl", "--task", args.task, "--steps", str(args.steps)],
                            n, timeout) for n in (1, 2)}
    rows["twinrl"] = ours
    gym_python, note = _find_gym_hil(args.gym_hil_python)
    theirs = None
    if gym_python is None:
        print(f"gym-hil not measured: {note}", file=sys.stderr)
    else:
        print(f"measuring gym-hil (mujoco {note}) with {gym_python} ...", file=sys.stderr)
        try:
            theirs = {n: _run_workers(gym_python, ["--worker", "gym_hil", "--steps", str(args.steps)], n, timeout)
                      for n in (1, 2)}
        except RuntimeError as exc:
            note = f"gym-hil failed: {exc}"
            print(note, file=sys.stderr)

    def imgs(r):
        return " + ".join("x".join(str(s) for s in shape[:2]) for shape in r[1]["images"].values())

    print(f"\n{'env (images per step)':<52} {'1 process':>12} {'2 processes':>12}   steps/s")
    print(f"{'twinrl sim ' + args.task + ' (' + imgs(ours) + ')':<52} "
          f"{ours[1]['steps_per_s']:>12.1f} {ours[2]['steps_per_s']:>12.1f}")
    summary = {"task": args.task, "steps": args.steps, "gl": os.environ.get("MUJOCO_GL", "egl"),
               "twinrl": {"images": ours[1]["images"], "steps_per_s_1proc": ours[1]["steps_per_s"],
                          "steps_per_s_2proc": ours[2]["steps_per_s"]}}
    if theirs is not None:
        print(f"{'gym-hil PandaPickCubeBase-v0 (' + imgs(theirs) + ')':<52} "
              f"{theirs[1]['steps_per_s']:>12.1f} {theirs[2]['steps_per_s']:>12.1f}")
        r1 = ours[1]["steps_per_s"] / theirs[1]["steps_per_s"]
        r2 = ours[2]["steps_per_s"] / theirs[2]["steps_per_s"]
        print(f"{'ratio twinrl / gym-hil':<52} {r1:>12.2f} {r2:>12.2f}")
        summary["gym_hil"] = {"images": theirs[1]["images"], "steps_per_s_1proc": theirs[1]["steps_per_s"],
                              "steps_per_s_2proc": theirs[2]["steps_per_s"], "mujoco": note}
        summary["ratio_1proc"], summary["ratio_2proc"] = r1, r2
    else:
        print(f"{'gym-hil':<52} {'n/a':>12} {'n/a':>12}   ({note})")
        summary["gym_hil"] = {"error": note}
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
