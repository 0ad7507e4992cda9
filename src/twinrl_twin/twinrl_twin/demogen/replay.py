"""Replaying recorded action sequences in another world.

* :func:`transfer_rate`: the kept twin demos replayed in the sim world (the physics stand-in
  for the real cell) from the same initial configuration, steered to their recorded commanded
  targets. The fraction that succeed is the twin-to-world transfer rate of the generated
  demonstrations. Their actions alone are replayed too (``open_loop_rate``): where the sim's
  robot side moves its target itself (a force stop the twin did not have), the actions, being
  relative to the previous target, carry that offset through the rest of the episode.
* :func:`rerecord_paths`: each episode's path executed in another world (the sim world) from its
  own initial configuration, steered to its recorded targets, and written with that world's
  observations and the actions it applied: the twin demos' paths as that world makes of them
  (bench/table1.py ``--oracle paths``).
* :func:`pair_demos`: each (real) demonstration replayed in the twin under its own initial
  configuration, recording the twin's observations: paired real/twin samples. The twin
  episode carries ``extra["pair_of"]`` (the real episode id) and ``extra["pair_file"]``;
  :func:`load_pairs` joins them again.

Open-loop: the recorded actions are applied one by one with no feedback, then up to
``settle_steps`` no-op steps (zero motion, the last gripper command) while the world decides.
A pair replay of an episode that recorded its commanded targets steers the twin to those
targets instead (each step's action is the move from the twin's target to the recorded one):
where the real robot side moved its target itself (a force stop holds at the measured pose),
replaying the actions alone would leave the twin's arm elsewhere for the rest of the episode.
"""
from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from twinrl_bringup import dataset as ds
from twinrl_bringup.safety import action_towards

_ENVS: dict = {}


def episode_paths(source) -> list[Path]:
    """Episode files from a dataset directory, a file, or a list of either."""
    items = source if isinstance(source, (list, tuple)) else [source]
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            d = ds.Dataset(p)
            out.extend(d.path(i) for i in range(len(d)))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such episode file or dataset directory")
    return out


def camera_overrides_of(episode_file) -> dict:
    """Camera overrides (``third_person.height`` ...) rendering at the image sizes an episode
    recorded: the other world's images of it must come out at the same sizes."""
    ep = ds.load_episode(episode_file)
    return {f"{c}.{k}": int(v) for c in ds.IMAGE_KEYS if c in ep.observations
            for k, v in zip(("height", "width"), ep.observations[c].shape[1:3])}


def replay_actions(env, configuration: dict, actions: np.ndarray, settle_steps: int = 10,
                   record: bool = False, in_hand_xy=None, targets=None, stop_at_success: bool = True) -> dict:
    """Reset ``env`` to ``configuration`` and apply ``actions`` open-loop. Returns success, the
    step of the first success (or -1), and with ``record`` the observations/rewards/flags and the
    actions applied (``applied``: the steering actions where ``targets`` are given).
    ``in_hand_xy``: the twin's reset option of that name (None: not passed). ``targets``:
    (positions (T+1, 3), quaternions (T+1, 4)) commanded targets to steer to instead of the
    actions' motion (their gripper commands are kept). ``stop_at_success=False`` applies every
    action (and the settle steps) instead of stopping at the first success."""
    actions = np.asarray(actions, dtype=float).reshape(-1, 7)
    if not np.all(np.isfinite(actions)):
        raise ValueError("replay: the episode's actions contain non-finite values")
    if targets is not None:
        P, Q = (np.asarray(x, dtype=float) for x in targets)
        if P.shape != (len(actions) + 1, 3) or Q.shape != (len(actions) + 1, 4):
            raise ValueError(f"replay: targets: expected ({len(actions) + 1}, 3) and ({len(actions) + 1}, 4), "
                             f"got {P.shape} and {Q.shape}")
    options = {"configuration": configuration}
    if in_hand_xy is not None:
        options["in_hand_xy"] = in_hand_xy          # checked by the twin
    obs, info = env.reset(options=options)
    observations, rewards, success, applied = [obs], [], [], []
    first, steps = -1, 0
    noop = np.zeros(7)
    noop[6] = actions[-1, 6] if len(actions) else -1.0
    for k in range(len(actions) + settle_steps):
        a = actions[k] if k < len(actions) else noop
        if targets is not None and k < len(actions):
            p, q = env.target_pose
            a = action_towards(p, q, P[k + 1], Q[k + 1], actions[k, 6])
        obs, reward, terminated, truncated, info = env.step(a)
        ok = bool(info.get("success", False))
        steps = k + 1
        if record:
            applied.append(np.asarray(a, dtype=np.float32))
            observations.append(obs)
            rewards.append(float(reward))
            success.append(ok)
        if ok and first < 0:
            first = k
        if ok and stop_at_success:
            break
    out = {"success": first >= 0, "first_success_step": first, "steps": steps,
           "configuration": dict(info.get("configuration", configuration))}
    if record:
        out.update(observations=observations, rewards=rewards, success_flags=success, applied=applied)
    return out


def _demo_in_hand_xy(episode, task_obj):
    """Where a successful insertion demo implies the object was held (keyframes.in_hand_xy);
    None for other tasks and for episodes that are no usable seed demo (failed, no grasp)."""
    from .keyframes import extract_keyframes, in_hand_xy, load_seed_demo

    try:
        demo = load_seed_demo(episode)
        return in_hand_xy(demo, extract_keyframes(demo), task_obj)
    except ValueError:
        return None


def _bar(progress: bool, total: int, desc: str):
    """A tqdm bar over episodes, or None without progress."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep")


def _episode_of(path, task: str, who: str, world: str = "world"):
    """Episode ``path`` without images, refused (naming ``who``) when it is of another task."""
    ep = ds.load_episode(path, images=False)
    if ep.task != task:
        raise ValueError(f"{who}: {path}: a {ep.task!r} episode, the {world} is for {task!r}")
    return ep


def _twin_episode(task: str, res: dict, actions, configuration: dict, extra: dict) -> "ds.EpisodeData":
    """A recorded :func:`replay_actions` result as a twin-tagged episode: terminated where it
    succeeds, truncated at its last step when that one does not."""
    T = len(res["rewards"])
    succ = np.asarray(res["success_flags"], bool)
    trunc = np.zeros(T, bool)
    if T and not succ[-1]:
        trunc[-1] = True
    return ds.EpisodeData(
        task=task, observations=ds.observation_arrays(res["observations"]), actions=np.asarray(actions, np.float32),
        rewards=np.asarray(res["rewards"], np.float32), terminated=succ.copy(), truncated=trunc, success=succ,
        source=np.full(T, ds.SOURCE_TWIN, np.uint8), episode_source=ds.SOURCE_TWIN,
        initial_configuration=configuration, extra=extra)


# ----------------------------------------------------------------------------- twin -> sim transfer
def _sim_env(task: str):
    from ..sim.env import make_env

    key = ("sim", task)
    if key not in _ENVS:
        _ENVS[key] = make_env(task, render=False)
    return _ENVS[key]


def _recorded_targets(ep, where: str):
    """The commanded targets an episode recorded (``obs.command``), or None for older episodes."""
    commands = ds.recorded_commands(ep.observations, ep.length, where)
    return None if commands is None else ds.command_targets(ep.observations["proprio"], commands)


def _replay_file(args) -> dict:
    path, settle_steps = args
    t0 = time.perf_counter()
    ep = ds.load_episode(path, images=False)
    env = _sim_env(ep.task)
    targets = _recorded_targets(ep, str(path))
    res = replay_actions(env, ep.initial_configuration, ep.actions, settle_steps, targets=targets)
    open_loop = res if targets is None else replay_actions(env, ep.initial_configuration, ep.actions, settle_steps)
    return {"file": str(path), "episode_id": ep.episode_id, "task": ep.task, "region": ep.region,
            "cell": list(ep.cell), "success": res["success"], "steps": res["steps"], "steered": targets is not None,
            "open_loop_success": open_loop["success"],
            "generator": (ep.extra or {}).get("generator", ""), "seconds": time.perf_counter() - t0}


def transfer_rate(source, workers: int = 1, settle_steps: int = 10, progress: bool = True) -> dict:
    """Every episode of ``source`` (dataset dir(s) / files) replayed in the sim world: steered to
    its recorded commanded targets where it has them (``transfer_rate``; ``steered`` counts
    them), by its actions where not, and by its actions alone (``open_loop_rate``)."""
    paths = episode_paths(source)
    if not paths:
        raise ValueError(f"no episodes in {source}")
    jobs = [(p, settle_steps) for p in paths]
    bar = _bar(progress, len(jobs), "replay in the sim world")
    t0 = time.perf_counter()
    results = []
    if workers <= 1:
        for j in jobs:
            results.append(_replay_file(j))
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            for r in pool.map(_replay_file, jobs, chunksize=max(1, len(jobs) // (4 * workers))):
                results.append(r)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    by = defaultdict(lambda: [0, 0])
    for r in results:
        for key in (r["task"], f"{r['task']}/{r['region']}"):
            by[key][0] += int(r["success"])
            by[key][1] += 1
    n_ok = sum(r["success"] for r in results)
    n_open = sum(r["open_loop_success"] for r in results)
    return {"episodes": len(results), "successes": int(n_ok), "transfer_rate": n_ok / len(results),
            "steered": int(sum(r["steered"] for r in results)), "open_loop_successes": int(n_open),
            "open_loop_rate": n_open / len(results),
            "by": {k: {"successes": v[0], "episodes": v[1], "rate": v[0] / v[1]} for k, v in sorted(by.items())},
            "failures": [r["file"] for r in results if not r["success"]],
            "wall_time_s": time.perf_counter() - t0, "settle_steps": settle_steps}


# ----------------------------------------------------------------------------- real -> twin pairs
def pair_demos(twin, demos, out, settle_steps: int = 0, camera_overrides: Optional[dict] = None,
               progress: bool = True) -> dict:
    """Replay each demonstration of ``demos`` in ``twin`` (its initial configuration, its actions)
    and write the twin episode with its observations to ``out``, linked to the original. The
    twin's cameras render at the first demo's image sizes unless ``camera_overrides`` says."""
    from ..twin_env import make_twin_env

    paths = episode_paths(demos)
    if not paths:
        raise ValueError(f"no episodes in {demos}")
    if camera_overrides is None:
        camera_overrides = camera_overrides_of(paths[0])
    writer = ds.DatasetWriter(out)
    env = make_twin_env(twin, render=True, camera_overrides=camera_overrides)
    bar = _bar(progress, len(paths), f"pairing demos in the twin ({env.task})")
    pairs = []
    try:
        for p in paths:
            real = _episode_of(p, env.task, "pair", "twin")
            targets = _recorded_targets(real, str(p))
            res = replay_actions(env, real.initial_configuration, real.actions, settle_steps, record=True,
                                 in_hand_xy=_demo_in_hand_xy(real, env.task_obj), targets=targets)
            T = len(res["rewards"])
            actions = np.asarray(real.actions[:T], dtype=np.float32)
            if T > len(real.actions):          # settle steps
                pad = np.zeros((T - len(real.actions), 7), np.float32)
                pad[:, 6] = real.actions[-1, 6]
                actions = np.concatenate([actions, pad])
            twin_ep = _twin_episode(real.task, res, actions, res["configuration"],
                                    {"generator": "pair", "pair_of": real.episode_id, "pair_file": str(p)})
            written = writer.write_episode(twin_ep)
            pairs.append({"real": str(p), "real_episode_id": real.episode_id, "twin": str(written),
                          "twin_episode_id": twin_ep.episode_id, "real_success": real.is_success,
                          "twin_success": bool(res["success"]), "length": T})
            if bar is not None:
                bar.update(1)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    agree = sum(p["real_success"] == p["twin_success"] for p in pairs)
    return {"pairs": pairs, "count": len(pairs), "twin_successes": sum(p["twin_success"] for p in pairs),
            "outcome_agreement": agree / len(pairs), "out": str(out)}


# ----------------------------------------------------------------------------- paths in another world
def rerecord_paths(env, paths, out, progress: bool = True) -> dict:
    """Each episode of ``paths`` (twin demos) executed in ``env`` (the sim world) from its own
    initial configuration, steered to its recorded commanded targets with its gripper commands,
    for its own number of steps, and written to ``out`` with ``env``'s observations and the
    actions ``env`` was given, tagged as a twin demo (``extra["path_of"]``). An upper bound of
    what the twin demos' paths are worth with that world's images and physics; the episodes'
    success is that world's verdict."""
    path_files = episode_paths(paths)
    if not path_files:
        raise ValueError(f"rerecord: no path episodes in {paths}")
    writer = ds.DatasetWriter(out)
    bar = _bar(progress, len(path_files), f"twin demo paths in the sim world ({env.task})")
    written, successes = [], 0
    try:
        for p in path_files:
            path = _episode_of(p, env.task, "rerecord")
            targets = _recorded_targets(path, str(p))
            if targets is None:
                raise ValueError(f"rerecord: {p}: the episode recorded no commanded targets (obs.command)")
            # the whole path (a demo goes on past its success: release, retreat)
            res = replay_actions(env, path.initial_configuration, path.actions, settle_steps=0, record=True,
                                 targets=targets, stop_at_success=False)
            ep = _twin_episode(env.task, res, res["applied"], dict(path.initial_configuration),
                               {"generator": "rerecord", "path_of": path.episode_id, "path_file": str(p),
                                # the same steps as the path: its keyframes hold (sft.twin_until)
                                **({"keyframes": path.extra["keyframes"]} if "keyframes" in (path.extra or {}) else {})})
            written.append(str(writer.write_episode(ep)))
            successes += bool(res["success"])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"count": len(written), "successes": successes, "episodes": written, "out": str(out)}


# ----------------------------------------------------------------------------- alignment sweeps
def sweep_paths(env, paths, configurations, out, progress: bool = True) -> dict:
    """Alignment sweeps: the robot of ``env`` (the real cell, or the sim world standing in for it)
    follows each episode of ``paths`` (twin demos: where the twin moved the arm, OOD placements
    included) while the cell stays as a real demo left it: episode i starts from the initial
    configuration of ``configurations`` episode i mod n (their objects where the real demos had
    them), is steered to the path's recorded commanded targets and given its gripper commands,
    and its observations are written to ``out`` as a real episode marked as a sweep
    (``twinrl_bringup.dataset.is_sweep``). No object is handled where the path expects one, so a sweep is no demonstration:
    SFT leaves sweeps out of the imitation data; replayed in the twin (:func:`pair_demos`) they
    give twin/real image pairs of arm poses the real demos never reached (``train sft --sweeps``)."""
    path_files = episode_paths(paths)
    conf_files = episode_paths(configurations)
    if not path_files:
        raise ValueError(f"sweep: no path episodes in {paths}")
    if not conf_files:
        raise ValueError(f"sweep: no configuration episodes in {configurations}")
    confs = []
    for p in conf_files:
        ep = _episode_of(p, env.task, "sweep")
        confs.append((ep.episode_id, ep.initial_configuration))
    writer = ds.DatasetWriter(out)
    bar = _bar(progress, len(path_files), f"alignment sweeps ({env.task})")
    written = []
    try:
        for i, p in enumerate(path_files):
            path = _episode_of(p, env.task, "sweep")
            targets = _recorded_targets(path, str(p))
            if targets is None:
                raise ValueError(f"sweep: {p}: the path episode recorded no commanded targets (obs.command)")
            conf_id, conf = confs[i % len(confs)]
            res = replay_actions(env, conf, path.actions, settle_steps=0, record=True, targets=targets)
            T = len(res["rewards"])
            succ = np.asarray(res["success_flags"], bool)
            trunc = np.zeros(T, bool)
            trunc[-1:] = True
            ep = ds.EpisodeData(
                task=env.task, observations=ds.observation_arrays(res["observations"]),
                actions=np.asarray(path.actions[:T], np.float32), rewards=np.asarray(res["rewards"], np.float32),
                terminated=np.zeros(T, bool), truncated=trunc, success=succ,
                source=np.full(T, ds.SOURCE_REAL, np.uint8), episode_source=ds.SOURCE_REAL,
                initial_configuration=res["configuration"],
                extra={"generator": ds.SWEEP_GENERATOR, "path_of": path.episode_id, "path_file": str(p),
                       "configuration_of": conf_id})
            written.append(str(writer.write_episode(ep)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"count": len(written), "episodes": written, "out": str(out)}


def load_pairs(real_dir, twin_dir, images: bool = True) -> list[tuple]:
    """(real episode, twin episode) for every twin episode of ``twin_dir`` paired with one of ``real_dir``."""
    real = ds.Dataset(real_dir)
    by_id = {e["episode_id"]: i for i, e in enumerate(real.entries)}
    twin = ds.Dataset(twin_dir)
    out = []
    for i in range(len(twin)):
        t = twin.load(i, images=images)
        rid = (t.extra or {}).get("pair_of")
        if rid in by_id:
            out.append((real.load(by_id[rid], images=images), t))
    return out
