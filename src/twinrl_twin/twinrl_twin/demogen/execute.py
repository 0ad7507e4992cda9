"""Run a generated end-effector path in the kinematic twin and keep it as a dataset episode.

:func:`execute_path` resets the twin to the candidate's configuration, steps the path's delta
actions (checking collisions after every step when a checker is given), lets the task settle
with a few no-op steps, and returns an :class:`~twinrl_bringup.dataset.EpisodeData` tagged
``twin``; a problem raises :class:`~.path.CandidateRejected`. :func:`generate_candidate` is
the whole pipeline for one configuration and never raises for a candidate problem: it returns
a :class:`~.path.Candidate` or a :class:`~.path.Rejection`.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from twinrl_bringup import dataset as ds
from twinrl_bringup.safety import action_towards

from .keyframes import in_hand_xy, map_keyframes
from .path import (REJECT_COLLISION, REJECT_ERROR, REJECT_TASK_FAILED, REJECT_UNREACHABLE, Candidate,
                   CandidateRejected, EEPath, Rejection)
from .transfer import affine_transfer, retime, time_path

METHODS = ("affine", "plan")
OBJECT_TOLERANCE = 0.001        # m: the applied object pose must match the requested one
WAIT_STEP = 1e-5                # m: a path step moving less than this waits (the mapping leaves ~1e-6 m)


def jitter_actions(actions: np.ndarray, noise: float, rng: np.random.Generator,
                   press_limit: Optional[float] = None, grip_quiet_steps: int = 0,
                   level_steps: Optional[np.ndarray] = None) -> np.ndarray:
    """The path's delta actions with a jittering hand: step k's commanded target lands off the
    path by n_k ~ N(0, noise^2) per position axis and step k+1 returns to it
    (a'_k = a_k + n_k - n_{k-1}), as the sim expert's ``action_noise`` does. Steps that do not
    translate (under ``WAIT_STEP``: the path waits for the fingers) and the last step carry no
    offset, nor do the ``grip_quiet_steps`` steps before a gripper command change, the change
    itself and as many after it (the hand stays on the path while the fingers close or open).
    ``press_limit`` (m) bounds the downward offset (a held object is not pushed deeper into a
    surface than that). ``level_steps`` ((T,) bool): steps whose offset stays horizontal, at the
    path's height (:func:`pressing_steps`)."""
    a = np.array(actions, dtype=float, copy=True)
    if noise <= 0 or len(a) == 0:
        return a
    if int(grip_quiet_steps) < 0:
        raise ValueError(f"grip_quiet_steps must be >= 0, got {grip_quiet_steps}")
    n = rng.normal(0.0, noise, (len(a), 3))
    if press_limit is not None:
        n[:, 2] = np.maximum(n[:, 2], -abs(press_limit))
    if level_steps is not None:
        level = np.asarray(level_steps, dtype=bool).reshape(-1)
        if level.shape != (len(a),):
            raise ValueError(f"level_steps: expected {len(a)} flags, got {level.shape[0]}")
        n[level, 2] = 0.0
    n[np.linalg.norm(a[:, :3], axis=1) < WAIT_STEP] = 0.0
    for k in np.nonzero(np.abs(np.diff(a[:, 6])) > 1e-9)[0] + 1:
        n[max(0, k - int(grip_quiet_steps)):k + int(grip_quiet_steps) + 1] = 0.0
    n[-1] = 0.0
    a[:, :3] += n - np.vstack([np.zeros((1, 3)), n[:-1]])
    return a


def pressing_steps(path: EEPath) -> np.ndarray:
    """(N-1,) bool: the path's steps that press a held object on a surface, i.e. whose target
    lies in its wipe (``wipe_start`` through ``wipe_end``, or to the path's end for a piece that
    has no ``wipe_end``). The demo pressed there as hard as it meant to, so a jittered target
    leaves the path only sideways there (:func:`jitter_actions` ``level_steps``): deeper, a
    stiffer contact than the twin's turns the offset into a force stop (the arm stops and the
    wipe stalls while the twin's goes on); higher, the eraser leaves the board while the twin's
    contact tolerance still counts it as wiping."""
    seg = dict(path.segments)
    mask = np.zeros(len(path), dtype=bool)
    if "wipe_start" in seg:
        ws = int(seg["wipe_start"])
        we = int(seg.get("wipe_end", len(path)))
        mask[max(0, ws - 1):max(0, we)] = True       # action k moves the target to pose k+1
    return mask


def offset_approach(path: EEPath, error: float, rng: np.random.Generator,
                    pace: str = "split") -> tuple[EEPath, np.ndarray]:
    """The path with its approach aimed off, as a teleoperator's hand arrives above an object:
    the poses from the start to the ``approach`` keyframe (the hover above the object) are
    moved by ``w_k e``, ``e`` uniform in a horizontal disc of radius ``error`` (m) and ``w_k``
    rising linearly from 0 at the start to 1 at the pose before the hover, so the path
    arrives off by ``e`` and its last approach step corrects to the hover (split into steps the
    envelope allows), each longer step split (``pace`` ``split``) or the approach walked at the
    path's pace (``seed``; :func:`~.transfer.time_path`). Returns ``(path, e)``; the path is unchanged (and ``e`` zero) for
    ``error`` 0 or an approach shorter than two steps. As the sim expert's ``approach_error``:
    the episode then holds the way back from where a policy's own localisation error leaves it."""
    from ..sim.expert import disc_offset

    a = int(dict(path.segments).get("approach", 0))
    if error <= 0 or a < 2:
        return path, np.zeros(3)
    e = disc_offset(error, rng)
    P = path.positions.copy()
    P[1:a] += (np.arange(1, a) / (a - 1))[:, None] * e
    # under `seed` walked at the path's own pace (the correction to the hover a run of its own),
    # so the offset does not halve the pace of the whole approach as splitting each longer step does
    P2, Q2, G2, index = time_path(P, path.quaternions, path.gripper, pace, (path.positions, path.quaternions),
                                  breaks=[i for _, i in path.segments] + [a - 1])
    return EEPath(P2, Q2, G2, segments=[(name, int(index[i])) for name, i in path.segments]), e


def split_wipe(path: EEPath) -> Optional[tuple[EEPath, EEPath, Optional[EEPath]]]:
    """A wiping path (``wipe_start`` / ``wipe_end`` segments) as ``(head, again, tail)``: the
    path through the end of the wipe; one more pass (straight back along the board to the
    wipe's start, split into steps the envelope allows, then the strokes again), as the sim
    expert goes over its strokes until the task is done; the rest of the path (None when the
    wipe ends it). None for a path without a wipe."""
    seg = dict(path.segments)
    if "wipe_start" not in seg or "wipe_end" not in seg:
        return None
    ws, we = int(seg["wipe_start"]), int(seg["wipe_end"])
    P, Q, G = path.positions, path.quaternions, path.gripper
    if not 0 <= ws < we < len(P):
        return None
    head = EEPath(P[:we + 1], Q[:we + 1], G[:we], segments=[(n, i) for n, i in path.segments if i <= we])
    Pr, Qr, Gr, _ = retime(np.stack([P[we], P[ws]]), np.stack([Q[we], Q[ws]]), [G[we - 1]])
    again = EEPath(np.vstack([Pr, P[ws + 1:we + 1]]), np.vstack([Qr, Q[ws + 1:we + 1]]), np.r_[Gr, G[ws:we]],
                   segments=[("wipe_again", 0), ("wipe_start", len(Pr) - 1)])
    tail = None
    if len(P) - we >= 2:
        tail = EEPath(P[we:], Q[we:], G[we:], segments=[(n, i - we) for n, i in path.segments if i > we])
    return head, again, tail


def execute_path(env, path: EEPath, configuration: dict, collision_check: Optional[Callable] = None,
                 max_extra_steps: int = 10, method: str = "affine", seed_demo: str = "",
                 in_hand_xy=None, action_noise: float = 0.0,
                 rng: Optional[np.random.Generator] = None, grip_quiet_steps: int = 0,
                 wipe_passes: int = 1) -> ds.EpisodeData:
    """Execute ``path`` in ``env`` (a twin env) from ``configuration``; see module doc.
    ``in_hand_xy``: the twin's reset option of that name (where the object sits in the hand once
    grasped; :func:`~.keyframes.in_hand_xy`), None for the twin's own grasp model.

    ``collision_check(env)`` returns the disallowed contact pairs ``[(geom_a, geom_b), ...]``
    of the current state (empty: fine). Raises ``CandidateRejected`` with
    ``unreachable`` (the env did not place the object where asked), ``collision`` or
    ``task_failed``. ``action_noise`` (m): the path is stepped with :func:`jitter_actions`
    (``rng``), so the episode holds the way back from small offsets (a downward offset at most
    ``action_noise``, and only sideways in a wipe (:func:`pressing_steps`); no offset in the
    ``grip_quiet_steps`` around a grasp or release).
    ``wipe_passes``: a wiping path whose wipe left the twin's task undone goes over its strokes
    again (:func:`split_wipe`), up to that many passes in all, before the rest of the path."""
    if not isinstance(path, EEPath):
        raise ValueError(f"path: expected an EEPath, got {type(path).__name__}")
    if not isinstance(configuration, dict) or "object_pose" not in configuration:
        raise ValueError("configuration: expected a dict with 'object_pose' [x, y, z, qx, qy, qz, qw]")
    if int(max_extra_steps) < 0:
        raise ValueError(f"max_extra_steps must be >= 0, got {max_extra_steps}")
    if int(wipe_passes) < 1:
        raise ValueError(f"wipe_passes must be >= 1, got {wipe_passes}")
    options = {"configuration": dict(configuration)}
    if in_hand_xy is not None:
        options["in_hand_xy"] = in_hand_xy          # checked by the twin
    obs, info = env.reset(options=options)
    applied = env.configuration
    want = np.asarray(configuration["object_pose"], float).reshape(-1)[:3]
    got = np.asarray(applied["object_pose"], float)[:3]
    err = float(np.linalg.norm(want - got))
    if err > OBJECT_TOLERANCE:
        raise CandidateRejected(REJECT_UNREACHABLE, f"the twin put the object at {np.round(got, 4).tolist()}, "
                                f"{err * 1000:.1f} mm from the requested {np.round(want, 4).tolist()}")

    observations = [obs]
    actions, rewards, terms, truncs, succs = [], [], [], [], []

    def step(a):
        o, r, term, trunc, inf = env.step(a)
        observations.append(o)
        actions.append(np.asarray(a, np.float32))
        rewards.append(r)
        terms.append(bool(term))
        truncs.append(bool(trunc))
        succs.append(bool(inf["success"]))
        if collision_check is not None:
            pairs = list(collision_check(env) or [])
            if pairs:
                names = ", ".join(f"{a}-{b}" for a, b in pairs[:5])
                raise CandidateRejected(REJECT_COLLISION, f"step {len(actions) - 1}: {names}"
                                        + (f" (+{len(pairs) - 5} more)" if len(pairs) > 5 else ""))
        return bool(inf["success"]), bool(term or trunc)

    # The whole path is the demonstration: it runs to its end even when the twin reports success
    # earlier (the twin's success test is kinematic and can fire a step or two before a physical
    # cell would: stopping there would cut the end of a wipe or an insertion). The episode
    # terminates at its last step, when the task is (still) done then.
    rng = rng if rng is not None else np.random.default_rng()

    def run(piece: EEPath) -> tuple[bool, bool]:
        """Step along ``piece``; (success, done) after its last step (or where the episode ended)."""
        actions_to_run = piece.actions()
        if action_noise > 0:
            actions_to_run = jitter_actions(actions_to_run, action_noise, rng, press_limit=action_noise,
                                            grip_quiet_steps=grip_quiet_steps, level_steps=pressing_steps(piece))
        # Each step steers the twin's target to where the (jittered) path puts it: the same
        # actions while the twin applies every action to its previous target, and back on the
        # path after a contact force stop moved the target to the measured pose (as a
        # closed-loop hand would).
        goals = piece.positions[0] + np.cumsum(actions_to_run[:, :3], axis=0)
        ok = end = False
        for k, a in enumerate(actions_to_run):
            p, q = env.target_pose
            ok, end = step(action_towards(p, q, goals[k], piece.quaternions[k + 1], a[6]))
            if end and not ok:
                break
        return ok, end

    split = split_wipe(path) if int(wipe_passes) > 1 else None
    keyframes = {name: int(i) for name, i in path.segments}
    passes = 1
    if split is None:
        success, done = run(path)
    else:
        head, again, tail = split
        success, done = run(head)
        while not (success or done) and passes < int(wipe_passes):
            success, done = run(again)
            passes += 1
        inserted = len(actions) - len(head)
        keyframes = {name: i + (inserted if i > len(head) else 0) for name, i in keyframes.items()}
        if tail is not None and not done:
            success, done = run(tail)
    if not (success or done):
        hold = np.zeros(7)
        hold[6] = float(path.gripper[-1])
        for _ in range(int(max_extra_steps)):
            success, done = step(hold)
            if success or done:
                break
    if not success:
        raise CandidateRejected(REJECT_TASK_FAILED, f"no success after {len(actions)} steps "
                                f"({len(path)} path steps + up to {max_extra_steps} settling steps)")
    T = len(actions)
    terms = [False] * (T - 1) + [True]
    truncs = [False] * T
    return ds.EpisodeData(
        task=env.task, observations=ds.observation_arrays(observations), actions=np.asarray(actions, np.float32),
        rewards=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool),
        truncated=np.asarray(truncs, bool), success=np.asarray(succs, bool),
        source=np.full(T, ds.SOURCE_TWIN, np.uint8), intervention=np.zeros(T, bool),
        episode_source=ds.SOURCE_TWIN, initial_configuration=dict(applied), policy_version="",
        episode_id=ds.new_episode_id(env.task),
        extra={"generator": method, "seed_demo": seed_demo, "action_noise": float(action_noise),
               "keyframes": keyframes, **({"wipe_passes": passes} if split is not None else {})},
    )


def _path_in_workspace(env, path: EEPath) -> None:
    safety = getattr(env, "safety", None)
    if safety is None:
        return
    inside = np.array([safety.contains(p, tol=1e-3) for p in path.positions])
    if not inside.all():
        k = int(np.argmin(inside))
        raise CandidateRejected(REJECT_UNREACHABLE, f"path pose {k} at {np.round(path.positions[k], 3).tolist()} "
                                f"is outside the workspace box")


def generate_candidate(env, demo, keyframes, configuration: dict, method: str = "affine", planner=None,
                       collision_check: Optional[Callable] = None, max_extra_steps: int = 10,
                       in_hand_from_demo: bool = True, action_noise: float = 0.0,
                       rng: Optional[np.random.Generator] = None, approach_error: float = 0.0,
                       grip_quiet_steps: int = 0, wipe_passes: int = 1, pace: str = "split"):
    """One candidate: map the keyframes to ``configuration``, build the path (``affine``:
    :func:`~.transfer.affine_transfer` with ``pace``; ``plan``: ``planner(env, demo, keyframes,
    new_keyframes) -> EEPath``), aim its approach off by up to ``approach_error`` m
    (:func:`offset_approach`), execute it in ``env`` (with ``in_hand_from_demo``, holding the
    object where the seed demo implies it was held: :func:`~.keyframes.in_hand_xy`). Returns a
    :class:`Candidate` or a
    :class:`Rejection` (never raises for a candidate problem; unexpected exceptions become
    ``Rejection("error", repr)``). ValueError for an unknown method or ``plan`` without planner."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "plan" and planner is None:
        raise ValueError("method 'plan' needs a planner(env, demo, keyframes, new_keyframes) -> EEPath")
    t0 = time.perf_counter()
    cfg = dict(configuration)
    try:
        new_kf = map_keyframes(demo, keyframes, cfg, env.task_obj)
        if method == "affine":
            path = affine_transfer(demo, keyframes, new_kf, pace=pace)
        else:
            path = planner(env, demo, keyframes, new_kf)
            if not isinstance(path, EEPath):
                raise CandidateRejected(REJECT_ERROR, f"planner returned {type(path).__name__}, not an EEPath")
        rng = rng if rng is not None else np.random.default_rng()
        path, offset = offset_approach(path, approach_error, rng, pace=pace)
        _path_in_workspace(env, path)
        in_hand = in_hand_xy(demo, keyframes, env.task_obj) if in_hand_from_demo else None
        episode = execute_path(env, path, cfg, collision_check=collision_check, max_extra_steps=max_extra_steps,
                               method=method, seed_demo=demo.episode_id, in_hand_xy=in_hand,
                               action_noise=action_noise, rng=rng, grip_quiet_steps=grip_quiet_steps,
                               wipe_passes=wipe_passes)
    except CandidateRejected as exc:
        rej = exc.rejection
        return Rejection(rej.reason, rej.detail, cfg)
    except Exception as exc:  # noqa: BLE001 - a candidate problem, reported not raised
        return Rejection(REJECT_ERROR, repr(exc), cfg)
    if approach_error > 0:
        episode.extra = dict(episode.extra or {}, approach_error=float(approach_error),
                             approach_offset=[round(float(v), 5) for v in offset])
    seconds = time.perf_counter() - t0
    return Candidate(episode=episode, path=path, method=method, configuration=dict(episode.initial_configuration),
                     seconds=seconds, info={"keyframes": dict(episode.extra["keyframes"]), "steps": episode.length,
                                            "path_steps": len(path)})


__all__ = ["execute_path", "generate_candidate", "jitter_actions", "offset_approach", "pressing_steps", "split_wipe",
           "METHODS"]
