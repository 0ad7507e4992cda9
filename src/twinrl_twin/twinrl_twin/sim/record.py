"""``twinrl sim record``: scripted-expert demonstrations in the sim world, written as a dataset.

    twinrl sim record --task pick_and_place --episodes 20 --region id --out data/demos/sim_id [--seed 0]

Episode ``i`` runs from seed ``seed + i`` (reproducible); its initial configuration is sampled
uniformly over the region's grid cells. Every step stores both camera images, the
proprioception, the expert's action (source ``demo``), reward, terminated/truncated and the
success flag (docs/dataset.md). Failed expert episodes are not demonstrations and are
skipped unless ``--keep-failures`` is given. Also usable as ``python -m twinrl_twin.sim.record``.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import numpy as np

from twinrl_bringup import dataset as ds


def record_episode(env, seed: int, region: str, cell=None, max_steps: Optional[int] = None,
                   images: bool = True, post_success_steps: int = 0, approach_error: float = 0.0,
                   approach_yaw_error: float = 0.0, action_noise: float = 0.0) -> ds.EpisodeData:
    """Run the env's scripted expert for one episode and return it as EpisodeData.

    ``post_success_steps``: keep recording the expert this many steps after the first success
    (its release and retreat), for imitation data: an episode that ends at the success holds
    the release in one step only. The episode then terminates at its last step; the success
    flags and rewards after the first success are the env's. ``approach_error`` (m) /
    ``approach_yaw_error`` (rad): the expert first aims off by a random offset and heading error
    (drawn from the episode seed) and then corrects; ``action_noise`` (m, std per axis): its
    position actions are unsteady and corrected the step after (:class:`.expert.ScriptedExpert`)."""
    if int(post_success_steps) < 0:
        raise ValueError(f"post_success_steps must be >= 0, got {post_success_steps}")
    options = {"region": region}
    if cell is not None:
        options["cell"] = cell
    obs, info = env.reset(seed=seed, options=options)
    expert = env.expert(approach_error=approach_error, approach_yaw_error=approach_yaw_error,
                        action_noise=action_noise, rng=np.random.default_rng([int(seed), 0xE4]))
    limit = int(max_steps or env.time_limit)
    observations = [obs]
    actions, rewards, terms, truncs, succs = [], [], [], [], []
    extra = None                          # steps left after the first success
    for k in range(limit):
        a = np.asarray(expert.act(obs, info), dtype=np.float64)
        obs, reward, terminated, truncated, info = env.step(a)
        if extra is None and terminated and info["success"] and post_success_steps:
            extra = int(post_success_steps)
        elif extra is not None:
            extra -= 1
        if extra is not None:
            terminated, truncated = extra == 0, False
        truncated = bool(truncated or (k == limit - 1 and not terminated))
        observations.append(obs)
        actions.append(a)
        rewards.append(reward)
        terms.append(bool(terminated))
        truncs.append(truncated)
        succs.append(bool(info["success"]))
        if terminated or truncated:
            break
    T = len(actions)
    obs_arrays = ds.observation_arrays(observations, images=images)
    return ds.EpisodeData(
        task=env.task, observations=obs_arrays, actions=np.asarray(actions, np.float32),
        rewards=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool),
        truncated=np.asarray(truncs, bool), success=np.asarray(succs, bool),
        source=np.full(T, ds.SOURCE_DEMO, np.uint8), intervention=np.zeros(T, bool),
        episode_source=ds.SOURCE_DEMO, initial_configuration=dict(info["configuration"]),
        policy_version="", extra={"recorder": "twinrl sim record", "controller": "sim_expert", "seed": int(seed),
                                  "perturbation": getattr(env, "perturbation", None),
                                  "approach_error": float(approach_error),
                                  "approach_yaw_error": float(approach_yaw_error),
                                  "action_noise": float(action_noise)},
    )


def run_record(args) -> int:
    from tqdm import tqdm

    from . import make_env

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    overrides = {}
    if args.image_size:
        w3, w = args.image_size
        overrides = {"third_person.width": w3, "third_person.height": w3, "wrist.width": w, "wrist.height": w}
    env = make_env(args.task, render=not args.no_images, perturbation=args.perturbation, seed=args.seed,
                   camera_overrides=overrides or None)
    writer = ds.DatasetWriter(args.out)
    written = failed = steps = 0
    t0 = time.monotonic()
    try:
        bar = tqdm(range(args.episodes), desc=f"record {args.task} ({args.region})", unit="ep")
        for i in bar:
            ep = record_episode(env, args.seed + i, args.region, max_steps=args.max_steps,
                                images=not args.no_images, post_success_steps=args.post_success_steps,
                                approach_error=args.approach_error, approach_yaw_error=args.approach_yaw_error,
                                action_noise=args.action_noise)
            if ep.is_success or args.keep_failures:
                writer.write_episode(ep)
                written += 1
                steps += ep.length
            if not ep.is_success:
                failed += 1
            bar.set_postfix(written=written, failed=failed)
    finally:
        env.close()
    wall = time.monotonic() - t0
    rate = (args.episodes - failed) / args.episodes
    print(f"{written} episode(s), {steps} steps written to {args.out}; expert success {rate:.0%} "
          f"({args.episodes - failed}/{args.episodes}); {wall:.1f} s ({steps / max(wall, 1e-9):.0f} steps/s)")
    return 0 if written else 1


def _image_size(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected THIRD,WRIST (e.g. 256,128), got {text!r}") from None
    if not (16 <= a <= 4096 and 16 <= b <= 4096):
        raise argparse.ArgumentTypeError(f"image sizes must be within 16..4096, got {text!r}")
    return a, b


def add_record_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``record`` to the subparsers of the ``twinrl sim`` command."""
    from .config import TASKS

    p = subparsers.add_parser("record", help="record scripted-expert demonstrations as a dataset",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--episodes", type=int, required=True, help="episodes to run")
    p.add_argument("--region", choices=("id", "ood", "all"), default="id", help="grid region of the start poses")
    p.add_argument("--out", required=True, help="dataset directory (created; episodes are appended)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    p.add_argument("--max-steps", type=int, default=None, help="step limit (default: the task's time limit)")
    p.add_argument("--keep-failures", action="store_true", help="also write episodes the expert failed")
    p.add_argument("--post-success-steps", type=int, default=0, metavar="K",
                   help="keep recording the expert K steps after the success (release, retreat); "
                        "imitation data then shows the release more than once")
    p.add_argument("--approach-error", type=float, default=0.0, metavar="M",
                   help="the expert first aims up to M metres off the object, then corrects (0..0.05); "
                        "demos then show corrections")
    p.add_argument("--approach-yaw-error", type=float, default=0.0, metavar="RAD",
                   help="same for the gripper heading (0..0.5 rad)")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="M",
                   help="std (m per axis, 0..0.01) of noise on the expert's position actions, corrected "
                        "the step after: demos then show the way back from small drifts")
    p.add_argument("--no-images", action="store_true", help="proprioception only (no rendering)")
    p.add_argument("--image-size", type=_image_size, default=None, metavar="THIRD,WRIST",
                   help="square image sizes, e.g. 128,64 (default: config/cameras.yaml)")
    p.add_argument("--perturbation", choices=("clutter", "dark", "dynamic_light"), default=None)
    p.set_defaults(func=run_record)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twinrl_twin.sim.record")
    sub = parser.add_subparsers(dest="command", required=True)
    add_record_parser(sub)
    args = parser.parse_args(["record", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
