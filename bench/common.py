"""Shared set-up for the benchmarks that need a twin of a sim-world task or expert demos.

``build_twin``: a twin of the task from a simulated scan of the sim world, aligned with the
scan's ground truth (what a lab gets after scanning and aligning its cell). ``record_seed``:
the first successful scripted-expert episode from ``seed`` on (the one "real" demo stage I
starts from). ``record_demos``: N successful expert episodes of a region as a dataset.
``calibrated_twin``: a copy of a twin colour-calibrated against demos (twinrl twin calibrate).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def camera_overrides(image_size: Optional[tuple[int, int]]) -> Optional[dict]:
    """``(third_person, wrist)`` square sizes -> the sim/twin cameras' override keys."""
    if not image_size:
        return None
    t, w = (int(v) for v in image_size)
    return {"third_person.width": t, "third_person.height": t, "wrist.width": w, "wrist.height": w}


def build_twin(task: str, root: Path) -> Path:
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.scan_sim import simulate_scan
    from twinrl_twin.twin_assets import build_twin as build

    out = root / f"twin_{task}"
    if (out / "twin.json").exists():
        return out
    scan = root / f"scan_{task}"
    if not scan.exists():
        simulate_scan(task, scan, frames=8, seed=1, progress=False)
    build(scan, out, task, load_groundtruth(scan).scan_to_base, "groundtruth", preview=False, overwrite=True)
    return out


def calibrated_twin(twin: Path, demos: Path, out: Path, progress: bool = False, network=False,
                    arm: bool = False) -> Path:
    """A copy of ``twin`` at ``out``, colour-calibrated against ``demos`` (``twinrl twin
    calibrate``; ``network``: True or an AppearanceConfig for its appearance network,
    ``--network``; ``arm``: its arm tracking fitted first, ``--arm``); an ``out`` that already
    holds the calibration is reused. Prints the before/after."""
    import shutil

    from twinrl_twin.appearance import AppearanceConfig
    from twinrl_twin.colour_map import calibrate_twin
    from twinrl_twin.twin_assets import APPEARANCE_FILE, COLOUR_MAP_FILE

    out = Path(out)
    if (out / (APPEARANCE_FILE if network else COLOUR_MAP_FILE)).is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(twin, out)
    if network is True:
        network = AppearanceConfig()
    rep = calibrate_twin(out, [str(demos)], progress=progress, network=network or None, arm=arm)
    if rep.get("arm_tracking"):
        fit = rep["arm_tracking"]
        print(f"arm tracking: TCP rms {fit['tcp_rms_mm_before']:.2f} -> {fit['tcp_rms_mm_after']:.2f} mm over "
              f"{fit['steps']} steps of {fit['episodes']} demos", flush=True)
    gaps = ", ".join(f"{c} |twin - real| {v['mean_abs_diff_before']:.1f} -> {v['mean_abs_diff_after']:.1f}"
                     for c, v in rep["cameras"].items())
    print(("appearance network: " if network else "colour map: ") + gaps, flush=True)
    return out


def record_demos(task: str, out: Path, n: int, region: str = "id", seed: int = 0,
                 image_size: Optional[tuple[int, int]] = None, progress: bool = False,
                 max_tries: Optional[int] = None, post_success_steps: int = 0,
                 approach_error: float = 0.0, approach_yaw_error: float = 0.0, action_noise: float = 0.0,
                 source: str = "demo") -> Path:
    """``n`` successful scripted-expert episodes (seeds ``seed``, ``seed + 1``, ...) into ``out``;
    an existing dataset there with ``n`` episodes is reused. ``post_success_steps``,
    ``approach_error``, ``approach_yaw_error``, ``action_noise``: see ``twinrl_twin.sim.record.record_episode``.
    ``source``: the tag the episodes are written with ("twin" makes sim-world episodes stand in
    for twin demos, as table1's oracle rows do)."""
    from tqdm import tqdm

    from twinrl_bringup.dataset import Dataset, DatasetWriter, source_id
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    tag = source_id(source)
    out = Path(out)
    if out.exists() and len(Dataset(out)) >= n:
        return out
    env = make_env(task, render=True, seed=seed, camera_overrides=camera_overrides(image_size))
    writer = DatasetWriter(out)
    have = len(Dataset(out)) if out.exists() else 0
    tries = max_tries or 3 * n
    try:
        bar = tqdm(total=n, initial=have, desc=f"expert demos {task} ({region})", unit="ep", disable=not progress)
        s = seed + have
        while have < n and s < seed + tries:
            ep = record_episode(env, s, region, post_success_steps=post_success_steps,
                                approach_error=approach_error, approach_yaw_error=approach_yaw_error,
                                action_noise=action_noise)
            s += 1
            if ep.is_success:
                if tag != ep.episode_source:
                    ep.source = np.full_like(ep.source, tag)
                    ep.episode_source = tag
                writer.write_episode(ep)
                have += 1
                bar.update(1)
        bar.close()
    finally:
        env.close()
    if have < n:
        raise RuntimeError(f"the {task} expert succeeded in only {have} of {tries} episodes")
    return out


def first_demo(root: Path) -> tuple[Path, int]:
    """(file, seed) of the episode in dataset ``root`` recorded from the lowest seed: the first
    demo :func:`record_demos` kept. File order is no guide to it (episode ids carry a random
    suffix after a one-second time stamp)."""
    from twinrl_bringup.dataset import Dataset, load_episode

    ds = Dataset(root)
    seeds = [int(load_episode(ds.path(i), images=False).initial_configuration["seed"]) for i in range(len(ds))]
    if not seeds:
        raise RuntimeError(f"{root}: no episodes")
    i = min(range(len(seeds)), key=seeds.__getitem__)
    return ds.path(i), seeds[i]


def record_seed(task: str, root: Path, seed: int, image_size: Optional[tuple[int, int]] = None) -> Path:
    from twinrl_bringup.dataset import Dataset

    suffix = "" if not image_size else f"_{image_size[0]}x{image_size[1]}"
    out = record_demos(task, root / f"seed_{task}_{seed}{suffix}", 1, "id", seed, image_size, max_tries=20)
    return Dataset(out).path(0)
