"""``twinrl sim``: rollouts of the scripted expert (or a random policy) and example images.

    twinrl sim rollout --task pick_and_place --policy expert --episodes 50 --region all --json
    twinrl sim snapshots --out snapshots/
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import TASKS

PERTURBATION_CHOICES = ("none", "clutter", "dark", "dynamic_light")


def register(subparsers) -> None:
    p = subparsers.add_parser("sim", help="MuJoCo sim world: expert rollouts, snapshots",
                              description="The MuJoCo sim world (FR3 + the four tasks).")
    sub = p.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")

    r = sub.add_parser("rollout", help="run episodes and report success per grid cell")
    r.add_argument("--task", required=True, choices=TASKS)
    r.add_argument("--policy", default="expert", choices=("expert", "random"))
    r.add_argument("--episodes", type=int, default=10)
    r.add_argument("--region", default="all", choices=("id", "ood", "all"))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--render", action="store_true", help="also render both cameras every step")
    r.add_argument("--perturbation", default="none", choices=PERTURBATION_CHOICES)
    r.add_argument("--json", action="store_true", help="print one JSON summary on the last line")
    r.set_defaults(func=cmd_rollout)

    s = sub.add_parser("snapshots", help="write example PNGs of every task, camera and perturbation")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int, default=12, help="expert steps before the snapshot")
    s.set_defaults(func=cmd_snapshots)

    try:
        from .record import add_record_parser
    except ImportError:
        pass
    else:
        add_record_parser(sub)

    def _help(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def cmd_rollout(args) -> int:
    from .rollout import rollout

    pert = None if args.perturbation == "none" else args.perturbation
    summary = rollout(args.task, args.policy, args.episodes, args.region, args.seed, args.workers,
                      render=args.render, perturbation=pert, progress=sys.stderr.isatty() or not args.json)
    print(f"task {summary['task']}  policy {summary['policy']}  region {summary['region']}  "
          f"episodes {summary['episodes']}  workers {summary['workers']}")
    print(f"success rate {summary['success_rate']:.3f} ({summary['successes']}/{summary['episodes']})  "
          f"mean length {summary['mean_length']:.1f} steps  {summary['env_steps_per_s']:.1f} env steps/s  "
          f"force stops {summary['force_stops']}")
    for reg, v in summary["regions"].items():
        if v["episodes"]:
            print(f"  {reg:>3}: {v['successes']}/{v['episodes']} = {v['success_rate']:.3f}")
    grid = {(c["row"], c["col"]): c for c in summary["per_cell"]}
    if grid:
        rows = 1 + max(r for r, _ in grid)
        cols = 1 + max(c for _, c in grid)
        print("per cell successes/episodes (rows along x, cols along y; * = ID):")
        for r in range(rows):
            cells = []
            for c in range(cols):
                v = grid.get((r, c))
                cells.append(f"{'*' if v and v['region'] == 'id' else ' '}{v['successes']}/{v['episodes']}"
                             if v else "    -")
            print("   " + " ".join(f"{x:>7}" for x in cells))
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_snapshots(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from .env import make_env

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    jobs = [(t, p) for t in args.tasks for p in PERTURBATION_CHOICES]
    for task, pert in tqdm(jobs, desc="snapshots", unit="scene"):
        env = make_env(task, render=True, perturbation=None if pert == "none" else pert, seed=args.seed)
        try:
            obs, info = env.reset(seed=args.seed)
            expert = env.expert()
            for _ in range(args.steps):
                obs, _, term, trunc, info = env.step(expert.act(obs, info))
                if term or trunc:
                    break
            for cam in ("third_person", "wrist"):
                path = args.out / f"{task}_{pert}_{cam}.png"
                Image.fromarray(np.asarray(obs[cam])).save(path)
                written.append(path)
        finally:
            env.close()
    print(f"wrote {len(written)} images to {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="twinrl")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
