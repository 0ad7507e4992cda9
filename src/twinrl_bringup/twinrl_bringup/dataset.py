"""Episode datasets: demonstrations and rollouts on disk (format described in docs/dataset.md).

A dataset is a directory with one compressed ``.npz`` file per episode and a ``manifest.json``
index. Everything here is plain numpy (no ROS), so learners, notebooks and tests read it
directly.

* :class:`DatasetWriter` appends episodes crash-safely: each file is written to a temporary
  file in the same directory, fsynced and renamed into place, so an episode is either fully
  present or absent. The manifest is only a cache; it is rebuilt from the episode files.
* :class:`Dataset` indexes a directory (reading only each file's metadata), filters episodes
  and turns them into transitions (obs, action, reward, next_obs, done) one episode at a
  time, so images of the whole dataset are never in memory at once. A truncated or corrupt
  file is skipped with a warning naming the file, never used; :func:`load_episode` on it
  raises :class:`DatasetError` naming the file.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1
MANIFEST = "manifest.json"
SUFFIX = ".npz"
_LOCK = ".dataset.lock"

# Transition.SOURCE_* (twinrl_msgs) without importing ROS.
SOURCE_REAL, SOURCE_TWIN, SOURCE_DEMO, SOURCE_INTERVENTION = 0, 1, 2, 3
SOURCE_NAMES = {SOURCE_REAL: "real", SOURCE_TWIN: "twin", SOURCE_DEMO: "demo",
                SOURCE_INTERVENTION: "intervention"}
SOURCE_IDS = {v: k for k, v in SOURCE_NAMES.items()}
REGIONS = ("id", "ood")

# Layout of the proprioception vector (22 values), shared with twinrl_msgs/Proprioception.
PROPRIO_LAYOUT = (
    [f"joint_position_{i}" for i in range(1, 8)]
    + [f"joint_velocity_{i}" for i in range(1, 8)]
    + ["tcp_x", "tcp_y", "tcp_z", "tcp_qx", "tcp_qy", "tcp_qz", "tcp_qw", "gripper_width"]
)
PROPRIO_DIM = len(PROPRIO_LAYOUT)
ACTION_DIM = 7
IMAGE_KEYS = ("third_person", "wrist")
_STEP_KEYS = ("action", "reward", "terminated", "truncated", "success", "source", "intervention")


class DatasetError(ValueError):
    """A dataset file or directory is invalid. The message names the file."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# The commanded target as the policy sees it: delta actions are relative to the robot side's
# current *target*, which the measured TCP follows with a lag; without this the same observed
# state is followed by "wait" (target already ahead) in one demo and "move" in another.
COMMAND_LAYOUT = ["target_dx", "target_dy", "target_dz", "target_rx", "target_ry", "target_rz", "gripper_command"]
COMMAND_DIM = len(COMMAND_LAYOUT)
COMMAND_KEY = "command"      # episodes store the commanded target per step under this observation key


def command_vector(tcp_position, tcp_quaternion, target_position, target_quaternion,
                   gripper_command) -> np.ndarray:
    """(7,) float32 in :data:`COMMAND_LAYOUT` order: target minus TCP position (m, base frame),
    rotation vector from the TCP to the target orientation (rad, base frame), and the gripper
    command in force ([-1, 1], +1 = close)."""
    from twinrl_bringup.transforms import rotation_between

    dp = np.asarray(target_position, dtype=np.float64).reshape(3) - np.asarray(tcp_position, dtype=np.float64).reshape(3)
    rv = rotation_between(np.asarray(tcp_quaternion, dtype=np.float64).reshape(4),
                          np.asarray(target_quaternion, dtype=np.float64).reshape(4))
    return np.concatenate([dp, rv, [float(gripper_command)]]).astype(np.float32)


def episode_commands(proprio, actions, initial_gripper: float = -1.0, where: str = "episode",
                     envelope=None) -> np.ndarray:
    """(T+1, 7) command vectors of an episode, rebuilt from its proprioception (T+1, 22) and
    actions (T, 7): the targets are the commanded path from the measured start pose (episodes
    start at rest, target = TCP), the gripper command the last action's (``initial_gripper``
    before the first). ``envelope``: the SafetyEnvelope to replay (default: config/safety.yaml;
    pass one when rebuilding many episodes)."""
    from twinrl_bringup.safety import commanded_path

    proprio = np.asarray(proprio, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.float64)
    T = len(actions)
    if proprio.ndim != 2 or proprio.shape[0] != T + 1 or proprio.shape[1] != PROPRIO_DIM:
        raise ValueError(f"{where}: proprio: expected ({T + 1}, {PROPRIO_DIM}), got {proprio.shape}")
    P, Q = commanded_path(proprio[0, 14:17], proprio[0, 17:21], actions, envelope, where=f"{where}: actions")
    grip = np.concatenate([[float(initial_gripper)], np.clip(actions[:, 6], -1.0, 1.0)])
    return np.stack([command_vector(proprio[k, 14:17], proprio[k, 17:21], P[k], Q[k], grip[k])
                     for k in range(T + 1)])


SWEEP_GENERATOR = "sweep"      # extra["generator"] of alignment sweeps (twinrl_twin.demogen.replay.sweep_paths)


def is_sweep(episode) -> bool:
    """Whether an episode is an alignment sweep: the robot following a twin demo's path in a cell
    whose objects are elsewhere. Real images for the paired feature alignment, no demonstration."""
    return (episode.extra or {}).get("generator") == SWEEP_GENERATOR


def observation_arrays(observations: list, images: bool = True) -> dict:
    """An episode's ``observations`` dict from its T+1 env observations (dicts): ``proprio``,
    ``command`` (the commanded target, when every observation has it) and, with ``images``,
    the camera images every observation has."""
    out = {"proprio": np.stack([np.asarray(o["proprio"], np.float32) for o in observations])}
    keys = (COMMAND_KEY, *IMAGE_KEYS) if images else (COMMAND_KEY,)
    for key in keys:
        if all(key in o for o in observations):
            arr = np.stack([np.asarray(o[key]) for o in observations])
            out[key] = arr.astype(np.float32) if key == COMMAND_KEY else arr
    return out


def recorded_commands(observations, T: int, where: str = "episode") -> Optional[np.ndarray]:
    """The episode's recorded command vectors (T+1, 7) (``observations["command"]``, what the
    robot side's target really was at each step), or None when it was recorded without them."""
    if not isinstance(observations, dict) or observations.get(COMMAND_KEY) is None:
        return None
    c = np.asarray(observations[COMMAND_KEY])
    if c.shape != (T + 1, COMMAND_DIM) or not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"{where}: observations['command']: expected ({T + 1}, {COMMAND_DIM}) numbers, "
                         f"got {c.shape} {c.dtype}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{where}: observations['command']: non-finite values")
    return c.astype(np.float32)


def commands_of(ep: "EpisodeData", where: str = "episode", envelope=None) -> tuple[np.ndarray, bool]:
    """(T+1, 7) command vectors of ``ep`` and whether they were recorded: the recorded ones
    when the episode has them, else rebuilt from its actions (:func:`episode_commands`), which
    is right only while the robot side applied every action to its previous target (a force
    stop, a watchdog hold or an operator's hold moves the target to the measured pose)."""
    rec = recorded_commands(ep.observations, len(ep.actions), where)
    if rec is not None:
        return rec, True
    return episode_commands(ep.observations["proprio"], ep.actions, where=where, envelope=envelope), False


def command_targets(proprio, commands) -> tuple[np.ndarray, np.ndarray]:
    """The commanded target poses (positions (N, 3), quaternions (N, 4) xyzw, sign-continuous
    like ``safety.commanded_path``'s) from the measured TCP poses of ``proprio`` (N, 22) and
    ``commands`` (N, 7): the inverse of :func:`command_vector`."""
    from twinrl_bringup.transforms import normalize_quat, quat_multiply, rotvec_to_quat, sign_continuous

    proprio = np.asarray(proprio, dtype=np.float64)
    commands = np.asarray(commands, dtype=np.float64)
    P = proprio[:, 14:17] + commands[:, :3]
    Q = np.stack([normalize_quat(quat_multiply(rotvec_to_quat(c[3:6]), q)) for c, q in zip(commands, proprio[:, 17:21])])
    return P, sign_continuous(Q)


def proprio_vector(joint_positions, joint_velocities, tcp_position, tcp_quaternion,
                   gripper_width) -> np.ndarray:
    """The (22,) float32 proprioception vector in :data:`PROPRIO_LAYOUT` order."""
    vec = np.concatenate([
        np.asarray(joint_positions, dtype=np.float64).reshape(7),
        np.asarray(joint_velocities, dtype=np.float64).reshape(7),
        np.asarray(tcp_position, dtype=np.float64).reshape(3),
        np.asarray(tcp_quaternion, dtype=np.float64).reshape(4),
        [float(gripper_width)],
    ])
    return vec.astype(np.float32)


def source_id(value) -> int:
    """A Transition.SOURCE_* value from an int or a name ("real", "twin", "demo", "intervention")."""
    if isinstance(value, str):
        if value not in SOURCE_IDS:
            raise ValueError(f"unknown source {value!r} (known: {', '.join(SOURCE_IDS)})")
        return SOURCE_IDS[value]
    value = int(value)
    if value not in SOURCE_NAMES:
        raise ValueError(f"unknown source id {value} (known: {sorted(SOURCE_NAMES)})")
    return value


def new_episode_id(task: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{task}-{stamp}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- episode data
@dataclass
class EpisodeData:
    """One episode of T steps.

    ``observations`` maps a key to an array with T+1 entries (the observation before each
    step plus the final one): ``third_person`` (T+1, H, W, 3) uint8, ``wrist``
    (T+1, h, w, 3) uint8 and ``proprio`` (T+1, 22) float32 (:data:`PROPRIO_LAYOUT`). Images
    are optional (a low-dimensional dataset has only ``proprio``). Per-step arrays have T
    entries. ``source`` is per step (Transition.SOURCE_*); ``episode_source`` is the tag of
    the episode as a whole (an online real episode is ``real`` even if some of its steps are
    interventions).
    """

    task: str
    observations: dict
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    source: np.ndarray
    intervention: Optional[np.ndarray] = None
    episode_source: int = SOURCE_REAL
    initial_configuration: dict = field(default_factory=dict)
    policy_version: str = ""
    episode_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(len(self.actions))

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def is_success(self) -> bool:
        return bool(np.any(self.success))

    @property
    def num_interventions(self) -> int:
        return int(np.count_nonzero(self.intervention)) if self.intervention is not None else 0

    @property
    def region(self) -> str:
        return _region_name(self.initial_configuration.get("region", ""))

    @property
    def cell(self) -> tuple[int, int]:
        cfg = self.initial_configuration
        return int(cfg.get("cell_row", -1)), int(cfg.get("cell_col", -1))


def _region_name(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return REGIONS[int(value)] if 0 <= int(value) < len(REGIONS) else str(value)
    return str(value)


def _as(name: str, value, dtype, shape_tail: tuple, length: int | None) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name}: cannot convert to an array ({exc})") from exc
    if dtype is np.uint8 and arr.dtype != np.uint8:
        raise ValueError(f"{name}: images must be uint8, got {arr.dtype}")
    if dtype is bool:
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: expected booleans, got {arr.dtype}")
        arr = arr.astype(bool)
    elif dtype is not np.uint8:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name}: expected numbers, got {arr.dtype}")
        arr = arr.astype(dtype)
    if arr.ndim != 1 + len(shape_tail) or any(
            want is not None and got != want for got, want in zip(arr.shape[1:], shape_tail)):
        want = "(N" + "".join(f", {w if w is not None else '?'}" for w in shape_tail) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name}: expected {length} entries, got {arr.shape[0]}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise ValueError(f"{name}: non-finite value {arr[tuple(idx)]} at index {tuple(int(i) for i in idx)}")
    return arr


def _validated_arrays(ep: EpisodeData) -> tuple[dict[str, np.ndarray], int]:
    """Check an episode before writing; return the arrays to store and the episode source id
    (ValueError names the bad field)."""
    if not isinstance(ep.task, str) or not ep.task:
        raise ValueError("task: must be a non-empty string")
    actions = _as("actions", ep.actions, np.float32, (ACTION_DIM,), None)
    T = actions.shape[0]
    if T == 0:
        raise ValueError("actions: an episode needs at least one step")
    out = {
        "action": actions,
        "reward": _as("rewards", ep.rewards, np.float32, (), T),
        "terminated": _as("terminated", ep.terminated, bool, (), T),
        "truncated": _as("truncated", ep.truncated, bool, (), T),
        "success": _as("success", ep.success, bool, (), T),
        "source": _as("source", ep.source, np.int64, (), T),
        "intervention": _as("intervention", ep.intervention if ep.intervention is not None
                            else np.zeros(T, bool), bool, (), T),
    }
    bad = ~np.isin(out["source"], list(SOURCE_NAMES))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"source: unknown source id {int(out['source'][i])} at step {i}")
    out["source"] = out["source"].astype(np.uint8)
    if np.any(np.abs(actions[:, 6]) > 1.0 + 1e-6):
        i = int(np.argmax(np.abs(actions[:, 6]) > 1.0 + 1e-6))
        raise ValueError(f"actions: gripper command {actions[i, 6]} at step {i} is outside [-1, 1]")
    if not isinstance(ep.observations, dict) or "proprio" not in ep.observations:
        raise ValueError("observations: must be a dict with at least 'proprio'")
    for key, value in ep.observations.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"observations: bad key {key!r}")
        if key == "proprio":
            out["obs.proprio"] = _as("observations['proprio']", value, np.float32, (PROPRIO_DIM,), T + 1)
        elif key == COMMAND_KEY:
            out["obs.command"] = _as("observations['command']", value, np.float32, (COMMAND_DIM,), T + 1)
        elif key in IMAGE_KEYS:
            out[f"obs.{key}"] = _as(f"observations[{key!r}]", value, np.uint8, (None, None, 3), T + 1)
        else:
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != T + 1:
                raise ValueError(f"observations[{key!r}]: expected {T + 1} entries, got shape {arr.shape}")
            if arr.dtype == object:
                raise ValueError(f"observations[{key!r}]: object arrays cannot be stored")
            out[f"obs.{key}"] = arr
    try:
        source = source_id(ep.episode_source)
    except ValueError as exc:
        raise ValueError(f"episode_source: {exc}") from exc
    region = _region_name(ep.initial_configuration.get("region", "")) if ep.initial_configuration else ""
    if region and region not in REGIONS:
        raise ValueError(f"initial_configuration.region: expected 'id' or 'ood', got {region!r}")
    return out, source


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metadata(ep: EpisodeData, arrays: dict, source: int) -> dict:
    cfg = _jsonable(dict(ep.initial_configuration or {}))
    if "region" in cfg:
        cfg["region"] = _region_name(cfg["region"])
    return {
        "format_version": FORMAT_VERSION,
        "episode_id": ep.episode_id,
        "task": ep.task,
        "episode_source": SOURCE_NAMES[source],
        "sources": sorted({SOURCE_NAMES[int(s)] for s in np.unique(arrays["source"])}),
        "initial_configuration": cfg,
        "region": cfg.get("region", ""),
        "cell_row": int(cfg.get("cell_row", -1)),
        "cell_col": int(cfg.get("cell_col", -1)),
        "policy_version": str(ep.policy_version or ""),
        "length": int(arrays["action"].shape[0]),
        "episode_return": float(np.sum(arrays["reward"], dtype=np.float64)),
        "success": bool(np.any(arrays["success"])),
        "num_interventions": int(np.count_nonzero(arrays["intervention"])),
        "observation_keys": sorted(k[4:] for k in arrays if k.startswith("obs.")),
        "image_shapes": {k[4:]: list(arrays[k].shape[1:]) for k in arrays
                         if k[4:] in IMAGE_KEYS},
        "proprio_layout": PROPRIO_LAYOUT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "extra": _jsonable(ep.extra or {}),
    }


# ----------------------------------------------------------------------------- file level
def _check_version(path, version) -> None:
    try:
        major = int(str(version).split(".")[0])
    except (ValueError, TypeError):
        raise DatasetError(path, f"unreadable format_version {version!r}") from None
    if major != SUPPORTED_MAJOR:
        raise DatasetError(path, f"unsupported format_version {version} (this reader supports "
                                 f"{SUPPORTED_MAJOR}.x); upgrade twinrl_bringup to read it")


def _member_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of one .npy member, reading only its header."""
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return shape, dtype


def read_metadata(path: os.PathLike | str) -> dict:
    """Metadata of one episode file, checking its structure (not its compressed payload).

    Raises :class:`DatasetError` naming the file when it is truncated, not an episode file,
    of an unsupported major version or internally inconsistent.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "meta.npy" not in names:
                raise DatasetError(path, "not a TwinRL episode file (no meta entry)")
            with zf.open("meta.npy") as fh:
                meta_arr = np.lib.format.read_array(fh, allow_pickle=False)
            meta = json.loads(str(meta_arr[()]))
            if not isinstance(meta, dict):
                raise DatasetError(path, "metadata is not a mapping")
            _check_version(path, meta.get("format_version"))
            T = int(meta["length"])
            for key in _STEP_KEYS:
                if f"{key}.npy" not in names:
                    raise DatasetError(path, f"missing array {key!r}")
                shape, _ = _member_header(zf, f"{key}.npy")
                if not shape or shape[0] != T:
                    raise DatasetError(path, f"array {key!r} has shape {shape}, expected {T} steps")
            for key in meta["observation_keys"]:
                if f"obs.{key}.npy" not in names:
                    raise DatasetError(path, f"missing observation {key!r}")
                shape, _ = _member_header(zf, f"obs.{key}.npy")
                if not shape or shape[0] != T + 1:
                    raise DatasetError(path, f"observation {key!r} has shape {shape}, expected {T + 1} entries")
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(path, "no such file") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise DatasetError(path, f"corrupt or truncated episode file ({type(exc).__name__}: {exc})") from exc
    return meta


def load_episode(path: os.PathLike | str, images: bool = True) -> EpisodeData:
    """Read one episode file fully (CRC-checked). ``images=False`` skips the image arrays."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            def get(key):
                return npz[key]

            obs = {}
            for key in meta["observation_keys"]:
                if key in IMAGE_KEYS and not images:
                    continue
                obs[key] = get(f"obs.{key}")
            steps = {key: get(key) for key in _STEP_KEYS}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as exc:
        raise DatasetError(path, f"corrupt episode file ({type(exc).__name__}: {exc})") from exc
    return EpisodeData(
        task=meta["task"], observations=obs, actions=steps["action"], rewards=steps["reward"],
        terminated=steps["terminated"], truncated=steps["truncated"], success=steps["success"],
        source=steps["source"], intervention=steps["intervention"],
        episode_source=SOURCE_IDS[meta["episode_source"]],
        initial_configuration=meta["initial_configuration"], policy_version=meta["policy_version"],
        episode_id=meta["episode_id"], extra=meta.get("extra", {}),
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(fileobj)`` into a temp file beside ``path``; fsync; rename."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _safe_filename(episode_id: str) -> str:
    if not episode_id or any(c in episode_id for c in "/\\\0") or episode_id.startswith("."):
        raise ValueError(f"episode_id {episode_id!r} cannot be used as a file name")
    return episode_id + SUFFIX


# ----------------------------------------------------------------------------- manifest
def _entry(path: Path, meta: dict) -> dict:
    st = path.stat()
    keys = ("episode_id", "task", "episode_source", "sources", "region", "cell_row", "cell_col",
            "policy_version", "length", "episode_return", "success", "num_interventions",
            "observation_keys", "image_shapes", "format_version", "created")
    entry = {k: meta.get(k) for k in keys}
    entry.update(file=path.name, size=st.st_size, mtime_ns=st.st_mtime_ns)
    return entry


def _scan(root: Path, use_cache: bool = True) -> tuple[list[dict], list[tuple[str, str]]]:
    """Index ``root`` from its episode files, reusing manifest entries of unchanged files."""
    cached: dict[str, dict] = {}
    mpath = root / MANIFEST
    if use_cache and mpath.is_file():
        try:
            data = json.loads(mpath.read_text())
            if int(str(data.get("format_version", "0")).split(".")[0]) == SUPPORTED_MAJOR:
                cached = {e["file"]: e for e in data.get("episodes", []) if isinstance(e, dict) and "file" in e}
        except (OSError, ValueError, TypeError, AttributeError):
            cached = {}  # a damaged manifest is only a cache: rebuild it
    entries, skipped = [], []
    for path in sorted(root.glob("*" + SUFFIX)):
        if path.name.startswith("."):
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        hit = cached.get(path.name)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            entries.append(hit)
            continue
        try:
            meta = read_metadata(path)
        except DatasetError as exc:
            skipped.append((str(path), exc.problem))
            continue
        entries.append(_entry(path, meta))
    return entries, skipped


def _write_manifest(root: Path, entries: list[dict]) -> None:
    body = {"format_version": FORMAT_VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "num_episodes": len(entries), "num_steps": int(sum(e["length"] for e in entries)),
            "episodes": entries}
    data = json.dumps(body, indent=1).encode()
    _atomic_write(root / MANIFEST, lambda fh: fh.write(data))


class _DirLock:
    def __init__(self, root: Path):
        self.path = root / _LOCK

    def __enter__(self):
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


# ----------------------------------------------------------------------------- writer
class DatasetWriter:
    """Appends episodes to a dataset directory (created if needed)."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise DatasetError(self.root, "not a directory")
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        host = socket.gethostname()
        for tmp in self.root.glob(".*.tmp"):
            parts = tmp.name.rsplit(".", 3)  # .<name>.<host>.<pid>.tmp
            if len(parts) != 4 or parts[1] != host:
                continue
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                try:
                    tmp.unlink()
                except OSError:
                    pass
            except (ValueError, PermissionError):
                continue

    def write_episode(self, episode: EpisodeData) -> Path:
        """Validate and write ``episode``; returns its file. ValueError names a bad field and
        nothing is written."""
        arrays, source = _validated_arrays(episode)
        if not episode.episode_id:
            episode.episode_id = new_episode_id(episode.task)
        path = self.root / _safe_filename(episode.episode_id)
        if path.exists():
            raise ValueError(f"episode_id {episode.episode_id!r}: {path} already exists")
        meta = _metadata(episode, arrays, source)
        payload = {"meta": np.array(json.dumps(meta)), **arrays}
        _atomic_write(path, lambda fh: np.savez_compressed(fh, **payload))
        self.update_manifest()
        return path

    def update_manifest(self) -> list[tuple[str, str]]:
        """Rebuild manifest.json from the episode files; returns the skipped (file, reason)."""
        with _DirLock(self.root):
            entries, skipped = _scan(self.root)
            _write_manifest(self.root, entries)
        return skipped


# ----------------------------------------------------------------------------- reader
class Dataset:
    """Read access to a dataset directory.

    ``len(ds)``, ``ds[i]`` / iteration (:class:`EpisodeData`, loaded on demand), ``ds.entries``
    (manifest rows), :meth:`filter`, :meth:`transitions` and :meth:`to_arrays`. Files that
    fail validation are listed in ``ds.skipped`` and reported with a warning.
    """

    def __init__(self, root: os.PathLike | str, entries: list[dict] | None = None,
                 skipped: list | None = None):
        self.root = Path(root)
        if entries is None:
            if not self.root.is_dir():
                raise DatasetError(self.root, "dataset directory does not exist")
            entries, skipped = _scan(self.root)
            for path, reason in skipped:
                warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=2)
        self.entries = list(entries)
        self.skipped = list(skipped or [])

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, episodes={len(self)}, steps={self.num_steps})"

    @property
    def num_steps(self) -> int:
        return int(sum(e["length"] for e in self.entries))

    def path(self, i: int) -> Path:
        return self.root / self.entries[i]["file"]

    def load(self, i: int, images: bool = True) -> EpisodeData:
        return load_episode(self.path(i), images=images)

    def __getitem__(self, i: int) -> EpisodeData:
        return self.load(i)

    def episodes(self, images: bool = True) -> Iterator[EpisodeData]:
        """Episodes one at a time; a file that turns out corrupt is skipped with a warning."""
        for i in range(len(self)):
            try:
                yield self.load(i, images=images)
            except DatasetError as exc:
                self.skipped.append((exc.path, exc.problem))
                warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=2)

    __iter__ = episodes

    def filter(self, task: str | None = None, source=None, region: str | None = None,
               success: bool | None = None, policy_version: str | None = None) -> "Dataset":
        """Episodes matching every given criterion. ``source`` (name or id) matches the
        episode's own tag or any of its steps' sources."""
        src = SOURCE_NAMES[source_id(source)] if source is not None else None
        if region is not None and region not in REGIONS:
            raise ValueError(f"region: expected one of {REGIONS}, got {region!r}")
        out = []
        for e in self.entries:
            if task is not None and e["task"] != task:
                continue
            if src is not None and e["episode_source"] != src and src not in e.get("sources", []):
                continue
            if region is not None and e["region"] != region:
                continue
            if success is not None and bool(e["success"]) != bool(success):
                continue
            if policy_version is not None and e["policy_version"] != policy_version:
                continue
            out.append(e)
        return Dataset(self.root, out, self.skipped)

    def transitions(self, images: bool = True, source=None) -> Iterator[dict]:
        """Per episode, a dict of transition arrays (length T, or fewer with ``source``):
        ``obs`` and ``next_obs`` (dicts of arrays), ``action``, ``reward``, ``done``
        (terminated: bootstrapping stops), ``terminated``, ``truncated``, ``success``,
        ``source``, ``intervention``, ``episode_id``."""
        want = source_id(source) if source is not None else None
        for ep in self.episodes(images=images):
            sel = np.ones(ep.length, bool) if want is None else (np.asarray(ep.source) == want)
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            yield {
                "obs": {k: v[idx] for k, v in ep.observations.items()},
                "next_obs": {k: v[idx + 1] for k, v in ep.observations.items()},
                "action": np.asarray(ep.actions)[idx],
                "reward": np.asarray(ep.rewards)[idx],
                "done": np.asarray(ep.terminated)[idx],
                "terminated": np.asarray(ep.terminated)[idx],
                "truncated": np.asarray(ep.truncated)[idx],
                "success": np.asarray(ep.success)[idx],
                "source": np.asarray(ep.source)[idx],
                "intervention": np.asarray(ep.intervention)[idx],
                "episode_id": ep.episode_id,
            }

    def to_arrays(self, source=None) -> dict[str, np.ndarray]:
        """All transitions' low-dimensional arrays concatenated (no images):
        ``proprio``, ``next_proprio``, ``action``, ``reward``, ``done``, ``truncated``,
        ``source``, ``intervention`` and ``episode_index`` (row of :attr:`entries`)."""
        parts: dict[str, list] = {k: [] for k in ("proprio", "next_proprio", "action", "reward", "done",
                                                  "truncated", "source", "intervention", "episode_index")}
        index = {e["episode_id"]: i for i, e in enumerate(self.entries)}
        for tr in self.transitions(images=False, source=source):
            parts["proprio"].append(tr["obs"]["proprio"])
            parts["next_proprio"].append(tr["next_obs"]["proprio"])
            for k in ("action", "reward", "done", "truncated", "source", "intervention"):
                parts[k].append(tr[k])
            parts["episode_index"].append(np.full(len(tr["action"]), index.get(tr["episode_id"], -1), np.int64))
        empty = {"proprio": (0, PROPRIO_DIM), "next_proprio": (0, PROPRIO_DIM), "action": (0, ACTION_DIM)}
        dtypes = {"proprio": np.float32, "next_proprio": np.float32, "action": np.float32, "reward": np.float32,
                  "done": bool, "truncated": bool, "source": np.uint8, "intervention": bool,
                  "episode_index": np.int64}
        return {k: (np.concatenate(v) if v else np.zeros(empty.get(k, (0,)), dtypes[k])) for k, v in parts.items()}

    def verify(self) -> list[tuple[str, str]]:
        """Read every file fully (CRC checks); returns (file, problem) for each bad one."""
        bad = []
        for i in range(len(self)):
            try:
                self.load(i)
            except DatasetError as exc:
                bad.append((exc.path, exc.problem))
        return bad

    def summary(self) -> dict:
        by = lambda key: {k: sum(1 for e in self.entries if e[key] == k)  # noqa: E731
                          for k in sorted({e[key] for e in self.entries})}
        return {"episodes": len(self), "steps": self.num_steps,
                "success_rate": (sum(bool(e["success"]) for e in self.entries) / len(self)) if len(self) else float("nan"),
                "tasks": by("task"), "sources": by("episode_source"), "regions": by("region"),
                "skipped": len(self.skipped)}
