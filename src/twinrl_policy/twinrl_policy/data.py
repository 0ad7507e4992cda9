"""Demonstration pools for SFT: real and twin steps in memory, sampled with mix ratio alpha.

Episodes come from datasets in the format of ``twinrl_bringup.dataset`` (docs/dataset.md).
An episode belongs to the *real* pool when its ``episode_source`` is one of
``real_sources`` (default real, demo, intervention) and to the *twin* pool when it is one of
``twin_sources`` (default twin). :func:`sample_indices` draws each batch sample from the real
pool with probability alpha (falling back to the other pool when one is empty).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from twinrl_bringup.dataset import COMMAND_DIM, IMAGE_KEYS, Dataset, DatasetError, commands_of, is_sweep
from twinrl_bringup.safety import SafetyEnvelope, load_safety_config

from .config import ModelConfig

__all__ = ["DemoPool", "PairPool", "episode_digest", "idle_steps", "load_demo_pools", "load_pair_pool",
           "object_labels", "real_cut", "sample_indices", "twin_cut"]


@dataclass
class DemoPool:
    name: str
    third_person: np.ndarray          # (N, H, W, 3) uint8
    wrist: np.ndarray                 # (N, h, w, 3) uint8
    proprio: np.ndarray               # (N, 22) float32
    action: np.ndarray                # (N, 7) float32
    episodes: list[str] = field(default_factory=list)
    command: Optional[np.ndarray] = None   # (N, 7) float32 commanded target (COMMAND_LAYOUT)
    # the object's (x, y, yaw) in the base frame where it is known to lie still: from the
    # episode's initial configuration, on the steps up to the first gripper close
    object_pose: Optional[np.ndarray] = None    # (N, 3) float32
    object_valid: Optional[np.ndarray] = None   # (N,) bool
    # index (into this pool) of the last step of each step's episode; default: one episode
    episode_end: Optional[np.ndarray] = None    # (N,) int64
    # episode id -> (T,) index into this pool of each of the episode's steps (-1: left out)
    episode_steps: dict = field(default_factory=dict)
    # steps from the episode's ``twin_until`` keyframe on (real pools loaded with ``real_phases``)
    after_cut: Optional[np.ndarray] = None      # (N,) bool

    def __post_init__(self):
        if self.episode_end is None:
            self.episode_end = np.full(len(self.action), len(self.action) - 1, np.int64)
        if self.command is None:
            self.command = np.zeros((len(self.action), COMMAND_DIM), np.float32)
        if self.object_pose is None:
            self.object_pose = np.zeros((len(self.action), 3), np.float32)
        if self.object_valid is None:
            self.object_valid = np.zeros(len(self.action), bool)
        if self.after_cut is None:
            self.after_cut = np.zeros(len(self.action), bool)

    def __len__(self) -> int:
        return int(len(self.action))

    @classmethod
    def empty(cls, name: str, cfg: ModelConfig) -> "DemoPool":
        return cls(name, np.zeros((0, *cfg.third_person_size, 3), np.uint8),
                   np.zeros((0, *cfg.wrist_size, 3), np.uint8), np.zeros((0, 22), np.float32),
                   np.zeros((0, 7), np.float32), command=np.zeros((0, COMMAND_DIM), np.float32))

    def action_chunk(self, idx: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The demo actions of steps ``idx .. idx + horizon - 1`` of the same episode, (n, horizon, 7),
        and which of them exist, (n, horizon) bool (steps past the episode's end repeat its last
        action and are marked invalid)."""
        idx = np.asarray(idx, np.int64)
        ahead = idx[:, None] + np.arange(horizon)[None, :]
        end = self.episode_end[idx][:, None]
        return self.action[np.minimum(ahead, end)], ahead <= end

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"third_person": self.third_person[idx], "wrist": self.wrist[idx],
                "proprio": self.proprio[idx], "command": self.command[idx], "action": self.action[idx],
                "object_pose": self.object_pose[idx], "object_valid": self.object_valid[idx]}


def object_labels(initial_configuration: Optional[dict], actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step object (x, y, yaw) and validity of an episode: the initial configuration's object
    pose on the steps up to and including the first gripper close command (the object has not
    been touched yet), invalid after it and everywhere when the configuration has no pose."""
    from twinrl_bringup.transforms import yaw_of

    T = len(actions)
    pose = np.zeros((T, 3), np.float32)
    valid = np.zeros(T, bool)
    o = (initial_configuration or {}).get("object_pose")
    try:
        o = np.asarray(o, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return pose, valid
    if o.shape != (7,) or not np.all(np.isfinite(o)) or np.linalg.norm(o[3:]) < 1e-9:
        return pose, valid
    closes = np.flatnonzero(np.asarray(actions, dtype=float)[:, 6] > 0)
    last = int(closes[0]) if len(closes) else T - 1
    pose[:] = (o[0], o[1], yaw_of(o[3:] / np.linalg.norm(o[3:])))
    valid[:last + 1] = True
    return pose, valid


def _check_images(path, obs: dict, cfg: ModelConfig) -> None:
    for key, size in zip(IMAGE_KEYS, (cfg.third_person_size, cfg.wrist_size)):
        if key not in obs:
            raise DatasetError(path, f"episode has no {key!r} images; the visuomotor policy needs both cameras")
        got = tuple(obs[key].shape[1:3])
        if got != tuple(size):
            raise DatasetError(path, f"{key} images are {got[0]}x{got[1]}, the model expects {size[0]}x{size[1]} "
                                     f"(set model.{key}_size)")


def episode_digest(ep) -> str:
    """A digest of an episode's content (actions and proprioception), independent of its id and
    file name: the order :func:`load_demo_pools` puts episodes in."""
    h = hashlib.sha1()
    for arr in (ep.actions, ep.observations["proprio"]):
        a = np.ascontiguousarray(arr, np.float32)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_demo_pools(dirs: Sequence, task: str, cfg: ModelConfig, real_sources=("real", "demo", "intervention"),
                    twin_sources=("twin",), success_only: bool = False, progress: bool = True,
                    skip_idle: bool = False, sweeps: bool = False,
                    twin_until: str = "", real_phases: bool = False) -> tuple[DemoPool, DemoPool, dict]:
    """Load every episode of ``task`` from the dataset directories into a real and a twin pool,
    each in the order of :func:`episode_digest` (the same demonstrations under other ids or file
    names give the same pools). ``skip_idle`` leaves out the steps found by :func:`idle_steps`.
    Alignment sweeps (``twinrl_bringup.dataset.is_sweep``) are no demonstrations and are left out
    (``info["sweep_episodes"]``); ``sweeps=True`` loads them alone instead (the pairs' real side).
    ``twin_until`` (a keyframe name): the twin pool keeps each episode's steps before that
    keyframe of its stage-I path (:func:`twin_cut`; ``info["twin_steps_cut"]``). With
    ``real_phases`` the real pool also marks each step from the same keyframe of its episode on
    (:func:`real_cut`; ``DemoPool.after_cut``, ``info["real_steps_after_cut"]``)."""
    if real_phases and not twin_until:
        raise ValueError("real_phases needs twin_until (the keyframe that splits the real demos)")
    if not dirs:
        raise ValueError("no dataset directories given")
    cfg.task_index(task)  # the policy must know the task
    keys = ("third_person", "wrist", "proprio", "command", "action", "object_pose", "object_valid", "after_cut",
            "length", "steps")
    parts = {"real": {k: [] for k in keys}, "twin": {k: [] for k in keys}}
    ids = {"real": [], "twin": []}
    info = {"ignored_episodes": 0, "skipped_files": [], "idle_steps_skipped": 0, "commands_rebuilt": 0,
            "sweep_episodes": 0, "twin_steps_cut": 0, "real_steps_after_cut": 0}
    selected = []
    for d in dirs:
        if not Path(d).is_dir():
            raise DatasetError(d, "dataset directory does not exist")
        ds = Dataset(d).filter(task=task, success=True if success_only else None)
        info["skipped_files"] += list(ds.skipped)
        for i, entry in enumerate(ds.entries):
            src = entry["episode_source"]
            pool = "real" if src in real_sources else "twin" if src in twin_sources else None
            if pool is None:
                info["ignored_episodes"] += 1
                continue
            selected.append((ds, i, pool))
    envelope = SafetyEnvelope(load_safety_config())     # rebuilds the commanded targets of older episodes
    loaded = {"real": [], "twin": []}
    for ds, i, pool in tqdm(selected, desc="loading demos", unit="ep", disable=not progress, leave=False):
        path = ds.path(i)
        ep = ds.load(i)
        if is_sweep(ep) != sweeps:
            info["sweep_episodes" if not sweeps else "ignored_episodes"] += 1
            continue
        _check_images(path, ep.observations, cfg)
        T = ep.length
        keep = ~idle_steps(ep.actions) if skip_idle else np.ones(T, bool)
        info["idle_steps_skipped"] += int(T - keep.sum())
        if pool == "twin" and twin_until:
            cut = twin_cut(ep, twin_until, where=path)
            info["twin_steps_cut"] += int(keep[cut:].sum())
            keep[cut:] = False
        rec = {key: np.asarray(ep.observations[key][:T])[keep] for key in ("third_person", "wrist", "proprio")}
        rec["action"] = np.asarray(ep.actions, np.float32)[keep]
        # the commanded target at each step: recorded, or (older episodes) rebuilt from the actions
        try:
            commands, recorded = commands_of(ep, where=str(path), envelope=envelope)
        except ValueError as exc:
            raise DatasetError(path, str(exc).removeprefix(f"{path}: ")) from exc
        info["commands_rebuilt"] += int(not recorded)
        rec["command"] = commands[:T][keep]
        obj, valid = object_labels(ep.initial_configuration, ep.actions)
        rec["object_pose"], rec["object_valid"], rec["keep"] = obj[keep], valid[keep], keep
        after = np.zeros(T, bool)
        if pool == "real" and real_phases:
            after[real_cut(ep, twin_until, where=path):] = True
            info["real_steps_after_cut"] += int(after[keep].sum())
        rec["after_cut"] = after[keep]
        loaded[pool].append((episode_digest(ep), ep.episode_id, rec))
    for pool, episodes in loaded.items():
        # pool order by content, not by file name: the same demonstrations recorded again (new
        # episode ids) give the same pools, hence the same batches for a training seed
        for _, episode_id, rec in sorted(episodes, key=lambda e: e[:2]):
            for key in ("third_person", "wrist", "proprio", "action", "command", "object_pose", "object_valid",
                        "after_cut"):
                parts[pool][key].append(rec[key])
            keep, start = rec["keep"], sum(parts[pool]["length"])
            parts[pool]["steps"].append(np.where(keep, start + np.cumsum(keep) - 1, -1).astype(np.int64))
            parts[pool]["length"].append(int(keep.sum()))
            ids[pool].append(episode_id)
    pools = []
    for name in ("real", "twin"):
        if not ids[name]:
            pools.append(DemoPool.empty(name, cfg))
            continue
        p = parts[name]
        pools.append(DemoPool(name, np.concatenate(p["third_person"]), np.concatenate(p["wrist"]),
                              np.concatenate(p["proprio"]).astype(np.float32),
                              np.concatenate(p["action"]).astype(np.float32), ids[name],
                              command=np.concatenate(p["command"]).astype(np.float32),
                              object_pose=np.concatenate(p["object_pose"]).astype(np.float32),
                              object_valid=np.concatenate(p["object_valid"]).astype(bool),
                              episode_end=np.repeat(np.cumsum(p["length"]) - 1, p["length"]).astype(np.int64),
                              episode_steps=dict(zip(ids[name], p["steps"])),
                              after_cut=np.concatenate(p["after_cut"]).astype(bool)))
    if not len(pools[0]) and not len(pools[1]):
        what = "alignment sweeps" if sweeps else "episodes"
        raise ValueError(f"no usable {what} of task {task!r} in {', '.join(str(d) for d in dirs)}")
    info["real_steps"], info["twin_steps"] = len(pools[0]), len(pools[1])
    info["real_episodes"], info["twin_episodes"] = len(ids["real"]), len(ids["twin"])
    return pools[0], pools[1], info


@dataclass
class PairPool:
    """Paired observations: the twin's images of the same moment as a real pool step (a real
    demonstration replayed in the twin, ``twinrl demos pair``)."""
    real_index: np.ndarray            # (M,) int64 index into the real pool (the sweep pool where ``sweep``)
    third_person: np.ndarray          # (M, H, W, 3) uint8, the twin's
    wrist: np.ndarray                 # (M, h, w, 3) uint8, the twin's
    episodes: list[str] = field(default_factory=list)   # twin episode ids
    sweep: Optional[np.ndarray] = None    # (M,) bool: the real side is an alignment sweep's step

    def __post_init__(self):
        if self.sweep is None:
            self.sweep = np.zeros(len(self.real_index), bool)

    def __len__(self) -> int:
        return int(len(self.real_index))

    def real_batch(self, idx: np.ndarray, real: DemoPool, sweeps: Optional[DemoPool] = None) -> dict:
        """The real side of pairs ``idx`` (in that order) from the real and the sweep pool."""
        idx = np.asarray(idx, np.int64)
        s = self.sweep[idx]
        if not s.any():
            return real.batch(self.real_index[idx])
        if sweeps is None:
            raise ValueError("pairs of alignment sweeps need the sweep pool")
        a, b = real.batch(self.real_index[idx[~s]]), sweeps.batch(self.real_index[idx[s]])
        out = {}
        for k in a:
            v = np.empty((len(idx), *a[k].shape[1:]), a[k].dtype)
            v[~s], v[s] = a[k], b[k]
            out[k] = v
        return out


def load_pair_pool(dirs: Sequence, task: str, cfg: ModelConfig, real: DemoPool,
                   progress: bool = True, sweeps: Optional[DemoPool] = None) -> tuple[PairPool, dict]:
    """Twin episodes of ``dirs`` whose ``extra["pair_of"]`` names an episode of the real pool
    (or of the ``sweeps`` pool: alignment sweeps replayed in the twin), joined step by step (step
    k of the twin replay with step k of the real episode; steps the real pool left out, and the
    replay's settle steps past the real episode, are dropped). Returns the pool and counts:
    paired, sweep and unmatched episodes, pairs."""
    if not dirs:
        raise ValueError("no pair dataset directories given")
    index, tps, wrs, eps, swp = [], [], [], [], []
    info = {"pair_episodes": 0, "sweep_pair_episodes": 0, "unmatched_episodes": 0, "skipped_files": []}
    selected = []
    for d in dirs:
        if not Path(d).is_dir():
            raise DatasetError(d, "pair dataset directory does not exist")
        ds = Dataset(d).filter(task=task)
        info["skipped_files"] += list(ds.skipped)
        selected += [(ds, i) for i in range(len(ds))]
    for ds, i in tqdm(selected, desc="loading pairs", unit="ep", disable=not progress, leave=False):
        ep = ds.load(i)
        of = (ep.extra or {}).get("pair_of")
        steps, sweep = real.episode_steps.get(of), False
        if steps is None and sweeps is not None:
            steps, sweep = sweeps.episode_steps.get(of), True
        if steps is None:
            info["unmatched_episodes"] += 1
            continue
        _check_images(ds.path(i), ep.observations, cfg)
        n = min(len(steps), len(ep.observations["proprio"]))
        k = np.flatnonzero(steps[:n] >= 0)
        index.append(steps[k])
        tps.append(np.asarray(ep.observations["third_person"])[k])
        wrs.append(np.asarray(ep.observations["wrist"])[k])
        eps.append(ep.episode_id)
        swp.append(np.full(len(k), sweep))
        info["pair_episodes"] += 1
        info["sweep_pair_episodes"] += int(sweep)
    if not eps:
        pool = PairPool(np.zeros(0, np.int64), np.zeros((0, *cfg.third_person_size, 3), np.uint8),
                        np.zeros((0, *cfg.wrist_size, 3), np.uint8))
    else:
        pool = PairPool(np.concatenate(index), np.concatenate(tps), np.concatenate(wrs), eps, np.concatenate(swp))
    info["pairs"] = len(pool)
    return pool, info


def twin_cut(ep, keyframe: str, where=None) -> int:
    """The step of ``ep`` at which its stage-I path reaches ``keyframe`` (``extra["keyframes"]``,
    twinrl_twin.demogen.execute): the twin demo is trained on up to, not including, that step.
    A DatasetError naming the episode (``where``: its file) when it has no such keyframe, or the
    keyframe lies outside its steps."""
    where = where if where is not None else ep.episode_id
    keyframes = (ep.extra or {}).get("keyframes")
    if not isinstance(keyframes, dict) or not keyframes:
        raise DatasetError(where, f"twin_until={keyframe!r}: the episode records no stage-I keyframes "
                                  "(extra.keyframes; made by twinrl demos generate)")
    if keyframe not in keyframes:
        raise DatasetError(where, f"twin_until={keyframe!r}: no such keyframe in the episode "
                                  f"(it has {', '.join(keyframes)})")
    step = keyframes[keyframe]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 < int(step) <= ep.length:
        raise DatasetError(where, f"twin_until={keyframe!r}: keyframe step {step!r} is not within the "
                                  f"episode's steps 1..{ep.length}")
    return int(step)


def real_cut(ep, keyframe: str, where=None) -> int:
    """The step at which the demonstration ``ep`` reaches ``keyframe``: its recorded stage-I
    keyframes where it has them (a twin demo, :func:`twin_cut`), else the keyframes found in its
    commanded path as for a seed demo (``twinrl_twin.demogen.keyframes.extract_keyframes``). A
    DatasetError naming the episode when they cannot be found or do not include ``keyframe``."""
    if (ep.extra or {}).get("keyframes"):
        return twin_cut(ep, keyframe, where=where)
    from twinrl_twin.demogen.keyframes import extract_keyframes, load_seed_demo
    where = where if where is not None else ep.episode_id
    try:
        found = {k.name: k.index for k in extract_keyframes(load_seed_demo(ep))}
    except ValueError as exc:
        raise DatasetError(where, f"keyframe {keyframe!r}: the demo's keyframes cannot be found ({exc})") from exc
    if keyframe not in found:
        raise DatasetError(where, f"keyframe {keyframe!r}: not among the demo's keyframes ({', '.join(found)})")
    return int(min(found[keyframe], ep.length))


def idle_steps(actions: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(T,) bool: steps whose action only waits: no translation or rotation and the gripper
    command of the step before (the first step counts as following an open command, -1).

    Demonstrators wait while the arm settles on a target it has not reached yet, or while the
    gripper closes; the observation does not show the commanded target, so the same state is
    followed by "wait" in one step and by "move" a step later. Trained on both, a policy
    averages them into slow motion and stalls short of the grasp; without the waits, it
    learns the moves (the next command after a wait is taken from the settled state)."""
    a = np.asarray(actions, dtype=np.float64)
    still = np.all(np.abs(a[:, :6]) <= tol, axis=1)
    prev_grip = np.concatenate([[-1.0], a[:-1, 6]])
    return still & (np.abs(a[:, 6] - prev_grip) <= tol)


def sample_indices(n_real: int, n_twin: int, batch: int, alpha: float,
                   generator: torch.Generator, real_after: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the real and the twin pool for one batch: each sample is real with
    probability alpha; with an empty pool every sample comes from the other one.

    ``real_after`` ((n_real,) bool, the real steps past the twin demos' cut): those steps are
    drawn with the share they have among the real steps, as in training on real demos alone,
    and alpha mixes the rest of the batch (the phase the twin demos cover)."""
    if n_real == 0 and n_twin == 0:
        raise ValueError("both demonstration pools are empty")
    if real_after is not None and n_real and n_twin:
        real_after = np.asarray(real_after, bool)
        if real_after.shape != (n_real,):
            raise ValueError(f"real_after: expected shape ({n_real},), got {real_after.shape}")
        late, early = np.flatnonzero(real_after), np.flatnonzero(~real_after)
        u = torch.rand(batch, generator=generator)
        n_late = int((u < len(late) / n_real).sum())
        v = torch.rand(batch - n_late, generator=generator)
        k_early = int((v < alpha).sum()) if len(early) else 0
        pick_late = torch.randint(0, max(len(late), 1), (n_late,), generator=generator).numpy()
        pick_early = torch.randint(0, max(len(early), 1), (k_early,), generator=generator).numpy()
        ir = np.concatenate([late[pick_late], early[pick_early]]).astype(np.int64)
        it = torch.randint(0, n_twin, (batch - n_late - k_early,), generator=generator).numpy()
        return ir, it
    if n_real == 0:
        k = 0
    elif n_twin == 0:
        k = batch
    else:
        k = int((torch.rand(batch, generator=generator) < alpha).sum())
    ir = torch.randint(0, max(n_real, 1), (k,), generator=generator).numpy()
    it = torch.randint(0, max(n_twin, 1), (batch - k,), generator=generator).numpy()
    return ir, it
