"""N twin environments behind one batched API, stepped in parallel by a swappable executor.

    from twinrl_twin.vec_env import VecEnv, TwinEnvSpec, ProcessExecutor
    vec = VecEnv([TwinEnvSpec("twins/pp", seed=i) for i in range(8)], ProcessExecutor(workers=2))
    obs, infos = vec.reset(seeds=range(8))             # obs["wrist"].shape == (8, 128, 128, 3)
    obs, rew, term, trunc, infos = vec.step(actions)   # actions (8, 7)
    vec.close()

The env code knows nothing of processes: an :class:`Executor` owns the env instances (built
from picklable factories such as :class:`TwinEnvSpec`) and runs method calls on them.
:class:`ProcessExecutor` spreads envs over local worker processes (spawned, each holding
``envs / workers`` envs and its own renderer); :class:`InlineExecutor` runs them in this process.
A distributed executor (e.g. one Ray actor per worker) implements the same three methods.
A failing env raises :class:`EnvWorkerError` naming the env index, with the worker's traceback.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np


class EnvWorkerError(RuntimeError):
    def __init__(self, index: int, message: str, remote_traceback: str = ""):
        self.index = index
        self.remote_traceback = remote_traceback
        super().__init__(f"env {index}: {message}" + (f"\n--- worker traceback ---\n{remote_traceback}"
                                                       if remote_traceback else ""))


@dataclass
class TwinEnvSpec:
    """Picklable factory of a :class:`twinrl_twin.twin_env.TwinEnv`."""

    twin: str
    seed: int = 0
    render: bool = True
    task_overrides: tuple = ()
    camera_overrides: Optional[dict] = None

    def __call__(self):
        from .twin_env import make_twin_env

        return make_twin_env(str(self.twin), render=self.render, seed=self.seed,
                             camera_overrides=self.camera_overrides, task_overrides=tuple(self.task_overrides))


Call = tuple[int, str, tuple, dict]     # env index, method (or "attr:<name>"), args, kwargs


def _invoke(env, method: str, args, kwargs):
    if method.startswith("attr:"):
        return getattr(env, method[5:])
    return getattr(env, method)(*args, **kwargs)


class Executor(ABC):
    """Owns env instances and runs batches of method calls on them."""

    @abstractmethod
    def start(self, factories: Sequence[Callable[[], Any]]) -> None:
        """Build env i from ``factories[i]`` (in whatever process/machine runs it)."""

    @abstractmethod
    def run(self, calls: Sequence[Call]) -> list:
        """Results of ``calls`` in order; raises :class:`EnvWorkerError` for a failed call."""

    @abstractmethod
    def close(self) -> None:
        """Close every env and release the workers (idempotent)."""


class InlineExecutor(Executor):
    def __init__(self):
        self.envs: list = []

    def start(self, factories):
        self.envs = []
        for i, f in enumerate(factories):
            try:
                self.envs.append(f())
            except Exception as exc:
                self.close()
                raise EnvWorkerError(i, f"could not be created: {type(exc).__name__}: {exc}",
                                     traceback.format_exc()) from exc

    def run(self, calls):
        out = []
        for i, method, args, kwargs in calls:
            try:
                out.append(_invoke(self.envs[i], method, args, kwargs))
            except Exception as exc:
                raise EnvWorkerError(i, f"{method} failed: {type(exc).__name__}: {exc}",
                                     traceback.format_exc()) from exc
        return out

    def close(self):
        for env in self.envs:
            try:
                env.close()
            except Exception:
                pass
        self.envs = []


def _worker_main(conn, factories: dict) -> None:
    envs = {}
    try:
        for i, f in factories.items():
            try:
                envs[i] = f()
            except Exception as exc:
                conn.send(("error", i, f"could not be created: {type(exc).__name__}: {exc}", traceback.format_exc()))
                return
        conn.send(("ready",))
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                return
            if msg[0] == "close":
                return
            results = []
            failed = None
            for i, method, args, kwargs in msg[1]:
                try:
                    results.append(_invoke(envs[i], method, args, kwargs))
                except Exception as exc:
                    failed = ("error", i, f"{method} failed: {type(exc).__name__}: {exc}", traceback.format_exc())
                    break
            conn.send(failed if failed else ("ok", results))
    except KeyboardInterrupt:
        pass
    finally:
        for env in envs.values():
            try:
                env.close()
            except Exception:
                pass
        try:
            conn.close()
        except Exception:
            pass


class ProcessExecutor(Executor):
    """Envs spread round-robin over ``workers`` spawned processes; the calls of one batch run
    in parallel across workers (sequentially within a worker)."""

    def __init__(self, workers: int = 2, start_timeout: float = 120.0, call_timeout: float = 600.0):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.procs: list = []
        self.conns: list = []
        self.owner: dict[int, int] = {}

    def start(self, factories):
        ctx = mp.get_context("spawn")
        n_workers = min(self.workers, max(1, len(factories)))
        groups: list[dict] = [dict() for _ in range(n_workers)]
        for i, f in enumerate(factories):
            groups[i % n_workers][i] = f
            self.owner[i] = i % n_workers
        for g in groups:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, g), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        for w, conn in enumerate(self.conns):
            self._expect(w, conn.poll(self.start_timeout) and conn.recv(), "start")

    def _expect(self, worker: int, msg, what: str):
        if not msg:
            self.close()
            first = min((i for i, w in self.owner.items() if w == worker), default=-1)
            raise EnvWorkerError(first, f"worker {worker} gave no answer to {what} (died or timed out)")
        if msg[0] == "error":
            self.close()
            raise EnvWorkerError(msg[1], msg[2], msg[3])
        return msg

    def run(self, calls):
        if not self.conns:
            raise RuntimeError("executor is not started (or already closed)")
        per_worker: dict[int, list] = {}
        for k, call in enumerate(calls):
            per_worker.setdefault(self.owner[call[0]], []).append((k, call))
        for w, items in per_worker.items():
            try:
                self.conns[w].send(("run", [c for _, c in items]))
            except (BrokenPipeError, OSError) as exc:
                self.close()
                raise EnvWorkerError(items[0][1][0], f"worker {w} is gone: {exc}") from exc
        out: list = [None] * len(calls)
        error = None
        for w, items in per_worker.items():
            try:
                msg = self.conns[w].recv() if self.conns[w].poll(self.call_timeout) else None
            except (EOFError, OSError):
                msg = None
            if error is not None:
                continue
            if not msg or msg[0] == "error":
                error = (w, msg)
                continue
            for (k, _), r in zip(items, msg[1]):
                out[k] = r
        if error is not None:
            w, msg = error
            self._expect(w, msg, "a call")
        return out

    def close(self):
        for conn in self.conns:
            try:
                conn.send(("close",))
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        for conn in self.conns:
            try:
                conn.close()
            except Exception:
                pass
        self.procs, self.conns = [], []


def _stack(obs_list: list[dict]) -> dict:
    return {k: np.stack([np.asarray(o[k]) for o in obs_list]) for k in obs_list[0]}


@dataclass
class VecEnv:
    """Batched reset/step over ``len(factories)`` envs run by ``executor``."""

    factories: Sequence[Callable[[], Any]]
    executor: Executor = field(default_factory=InlineExecutor)

    def __post_init__(self):
        if not self.factories:
            raise ValueError("VecEnv needs at least one env factory")
        self.num_envs = len(self.factories)
        self.executor.start(list(self.factories))
        self._closed = False

    def _indices(self, indices) -> list[int]:
        idx = list(range(self.num_envs)) if indices is None else [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"env indices {bad} outside 0..{self.num_envs - 1}")
        return idx

    def reset(self, seeds=None, options=None, indices=None):
        """Reset envs ``indices`` (all by default). ``seeds``/``options``: one per reset env,
        or a single options dict for all. Returns (batched obs, list of infos)."""
        idx = self._indices(indices)
        seeds = [None] * len(idx) if seeds is None else [None if s is None else int(s) for s in seeds]
        if isinstance(options, dict) or options is None:
            options = [options] * len(idx)
        if len(seeds) != len(idx) or len(options) != len(idx):
            raise ValueError(f"need one seed and one options entry per env ({len(idx)})")
        res = self.executor.run([(i, "reset", (), {"seed": s, "options": o}) for i, s, o in zip(idx, seeds, options)])
        return _stack([r[0] for r in res]), [r[1] for r in res]

    def step(self, actions, indices=None):
        """Step envs ``indices`` (all by default) with ``actions`` (len(indices), 7)."""
        idx = self._indices(indices)
        a = np.asarray(actions, dtype=float)
        if a.shape != (len(idx), 7):
            raise ValueError(f"actions must have shape ({len(idx)}, 7), got {a.shape}")
        res = self.executor.run([(i, "step", (a[k],), {}) for k, i in enumerate(idx)])
        obs = _stack([r[0] for r in res])
        return (obs, np.array([r[1] for r in res], dtype=np.float32), np.array([r[2] for r in res]),
                np.array([r[3] for r in res]), [r[4] for r in res])

    def expert_actions(self, indices=None) -> np.ndarray:
        """(len(indices), 7) actions of each env's scripted expert for its latest observation."""
        idx = self._indices(indices)
        return np.stack(self.executor.run([(i, "expert_action", (), {}) for i in idx]))

    def call(self, method: str, *args, indices=None, **kwargs) -> list:
        """Call ``method`` on envs ``indices``; a name prefixed ``attr:`` reads an attribute."""
        return self.executor.run([(i, method, args, kwargs) for i in self._indices(indices)])

    def close(self) -> None:
        if not self._closed:
            self.executor.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
