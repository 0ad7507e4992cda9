"""Episode manager core: run one episode (reset, step loop, outcome, recording), without ROS.

The ``episode_manager`` node (:mod:`twinrl_bringup.nodes.episode_manager`) serves the
``RunEpisode`` action and implements :class:`EpisodePorts` over ROS topics and services; this
module holds the logic so that it is testable with a fake world:

1. **reset**: the goal's configuration, or one sampled (guidance service if there is one,
   else a local sampler over the task's grid), applied through fr3_bridge's reset
   service; the applied configuration is what the episode records;
2. **step loop**, paced by the observation stream (one observation per control period): with
   the ``expert`` controller the manager computes the action from the observation, the
   object pose and the configuration and publishes it; with ``policy`` it only watches the
   action topic (policy actions and human interventions). After each step it takes the next
   observation and the task status (reward, success, done, abort);
3. **end** on success, done, abort, cancel (the arm is told to hold), a stalled observation
   stream, or the time limit (``max_steps``: truncated);
4. **record** (optional) the episode into a :mod:`twinrl_bringup.dataset` directory.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from . import dataset as ds

log = logging.getLogger("twinrl.episode_manager")

# twinrl_msgs constants, mirrored so this module needs no ROS.
ACTION_SOURCE_POLICY, ACTION_SOURCE_HUMAN, ACTION_SOURCE_SCRIPTED = 0, 1, 2
STRATEGY_UNIFORM, STRATEGY_TARGETED, STRATEGY_CELL = 0, 1, 2
REGION_ANY = -1
CONTROLLERS = ("expert", "policy")


class EpisodeError(RuntimeError):
    """The episode could not start or had to stop (reset failed, no observations, ...)."""


# ----------------------------------------------------------------------------- configuration
@dataclass
class EpisodeManagerConfig:
    task: str = "pick_and_place"             # task when a goal does not name one
    control_rate_hz: float = 10.0
    max_steps: int = 200                     # time limit when the goal gives 0
    dataset_dir: str = "data/episodes"
    world_source: str = "real"               # dataset source tag of policy rollouts in this world
    observation_timeout_s: float = 3.0       # no new observation for this long: abort
    first_observation_timeout_s: float = 10.0
    reset_timeout_s: float = 60.0
    reset_settle_s: float = 0.05             # ignore observations arriving this soon after the reset
    record_images: bool = True
    sample_service_timeout_s: float = 0.5    # wait for the guidance service before sampling locally
    # a step's next observation must arrive at least this fraction of a control period after the
    # step began: observations faster than the control rate (a 30 Hz camera, a 20 Hz bridge) are
    # skipped, so the loop runs at about control_rate_hz and each observation shows the previous
    # action's effect. Margin both ways: with observations at the control rate the next one is
    # taken unless it comes (1 - step_pacing) of a period early; 0 steps on every new observation.
    # 0.6 suits sources at 1x or 2x the control rate; with 30 Hz cameras and 10 Hz control, 0.85.
    step_pacing: float = 0.6

    def validate(self) -> None:
        if not self.control_rate_hz > 0:
            raise ValueError("control_rate_hz must be > 0")
        if not 0.0 <= self.step_pacing <= 1.0:
            raise ValueError(f"step_pacing must be in [0, 1], got {self.step_pacing}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        ds.source_id(self.world_source)


# ----------------------------------------------------------------------------- data records
@dataclass
class Goal:
    configuration: Optional[dict] = None     # ResetConfiguration-like dict, or None
    sample_configuration: bool = False
    sample_strategy: int = STRATEGY_UNIFORM
    region: int = REGION_ANY                 # when sampling: ResetConfiguration.REGION_* or -1
    controller: str = "policy"
    max_steps: int = 0
    record: bool = False
    seed: Optional[int] = None

    def validate(self) -> None:
        if self.controller not in CONTROLLERS:
            raise EpisodeError(f"controller {self.controller!r} is not one of {', '.join(CONTROLLERS)}")
        if not self.sample_configuration:
            cfg = self.configuration or {}
            for key in ("object_pose", "target_pose"):
                pose = np.asarray(cfg.get(key, []), dtype=float)
                if pose.shape != (7,) or not np.all(np.isfinite(pose)):
                    raise EpisodeError(f"configuration.{key}: expected 7 finite values [x, y, z, qx, qy, qz, qw], "
                                       f"got {cfg.get(key)!r} (set sample_configuration to sample one)")
                if np.linalg.norm(pose[3:]) < 1e-9:
                    raise EpisodeError(f"configuration.{key}: zero quaternion "
                                       "(set sample_configuration to sample one)")


@dataclass
class StepObservation:
    stamp: float
    proprio: np.ndarray                      # (22,) float32, dataset.PROPRIO_LAYOUT
    images: dict = field(default_factory=dict)   # name -> (H, W, 3) uint8
    command: Optional[np.ndarray] = None     # (7,) dataset.COMMAND_LAYOUT: the robot side's target, if known

    @property
    def tcp_position(self) -> np.ndarray:
        return np.asarray(self.proprio[14:17], dtype=float)

    @property
    def tcp_quaternion(self) -> np.ndarray:
        return np.asarray(self.proprio[17:21], dtype=float)

    @property
    def gripper_width(self) -> float:
        return float(self.proprio[21])


@dataclass
class ActionRecord:
    action: np.ndarray                       # (7,)
    source: int = ACTION_SOURCE_POLICY       # Action.SOURCE_*
    intervention: bool = False
    policy_version: str = ""
    step: int = 0
    stamp: float = 0.0

    @property
    def human(self) -> bool:
        return self.intervention or self.source == ACTION_SOURCE_HUMAN


@dataclass
class StatusRecord:
    stamp: float
    reward: float = 0.0
    success: bool = False
    done: bool = False
    aborted: bool = False


@dataclass
class EpisodeOutcome:
    success: bool
    length: int
    episode_return: float
    episode_id: str
    message: str
    configuration: dict
    storage_uri: str = ""
    num_interventions: int = 0
    policy_version: str = ""
    episode_source: int = ds.SOURCE_REAL
    episode: Optional[ds.EpisodeData] = None
    cancelled: bool = False
    step_rate_hz: float = 0.0          # measured control steps per second (observation stamps)


# ----------------------------------------------------------------------------- interfaces
class EpisodePorts(Protocol):
    """What the runner needs from the world (the node implements these over ROS)."""

    def now(self) -> float: ...

    def reset(self, configuration: dict, timeout: float) -> dict:
        """Reset the world; return the applied configuration; raise EpisodeError on failure."""

    def sample_configuration(self, task: str, strategy: int, region: int, cell: tuple[int, int],
                             seed: int) -> Optional[dict]:
        """A configuration from a sampling service, or None when no service answers."""

    def wait_observation(self, newer_than: float, timeout: float) -> Optional[StepObservation]: ...

    def latest_status(self, since: float) -> Optional[StatusRecord]: ...

    def object_pose(self) -> Optional[np.ndarray]: ...

    def publish_action(self, record: ActionRecord) -> None: ...

    def drain_actions(self) -> list[ActionRecord]:
        """Actions seen on the action topic since the previous call (oldest first)."""

    def hold(self) -> None: ...

    def feedback(self, step: int, episode_return: float, intervention: bool) -> None: ...


class Expert(Protocol):
    def reset(self, configuration: dict) -> None: ...

    def act(self, observation: StepObservation, object_pose: Optional[np.ndarray],
            configuration: dict) -> np.ndarray: ...


# ----------------------------------------------------------------------------- sampling
LocalSampler = Callable[[str, int, int, tuple, int], dict]
"""(task, strategy, region, (row, col), seed) -> configuration dict."""


# ----------------------------------------------------------------------------- runner
def _noop_action(gripper: float) -> np.ndarray:
    a = np.zeros(7)
    a[6] = gripper
    return a


class EpisodeRunner:
    def __init__(self, config: EpisodeManagerConfig,
                 expert_factory: Optional[Callable[[str], Expert]] = None,
                 local_sampler: Optional[LocalSampler] = None,
                 time_limit: Optional[Callable[[str], int]] = None,
                 writer_factory: Callable[[str], ds.DatasetWriter] = ds.DatasetWriter):
        """``expert_factory(task)`` builds the expert controller; ``local_sampler`` samples a
        configuration when no sampling service answers; ``time_limit(task)`` is the task's
        step limit (else ``config.max_steps``)."""
        self.config = config
        self.expert_factory = expert_factory
        self.local_sampler = local_sampler
        self.time_limit = time_limit
        self.writer_factory = writer_factory
        self._seed_counter = 0

    # -- configuration ----------------------------------------------------------------------
    def choose_configuration(self, goal: Goal, ports: EpisodePorts) -> dict:
        if not goal.sample_configuration:
            cfg = dict(goal.configuration or {})
            cfg.setdefault("task", self.config.task)
            if not cfg.get("task"):
                cfg["task"] = self.config.task
            return cfg
        task = (goal.configuration or {}).get("task") or self.config.task
        cell = (int((goal.configuration or {}).get("cell_row", 0)), int((goal.configuration or {}).get("cell_col", 0)))
        seed = goal.seed if goal.seed is not None else int((goal.configuration or {}).get("seed", 0) or 0)
        if not seed:
            self._seed_counter += 1
            seed = int(np.random.SeedSequence().entropy % (2 ** 31)) + self._seed_counter
        cfg = ports.sample_configuration(task, goal.sample_strategy, goal.region, cell, seed)
        if cfg is not None:
            return cfg
        if self.local_sampler is None:
            raise EpisodeError("no sampling service answered and there is no local sampler: "
                               "give the goal a configuration")
        return self.local_sampler(task, goal.sample_strategy, goal.region, cell, seed)

    # -- the episode ----------------------------------------------------------------------------
    def run(self, goal: Goal, ports: EpisodePorts, cancelled: Callable[[], bool] = lambda: False) -> EpisodeOutcome:
        goal.validate()
        cfg = self.config
        requested = self.choose_configuration(goal, ports)
        task = requested.get("task") or cfg.task
        expert = None
        if goal.controller == "expert":
            if self.expert_factory is None:
                raise EpisodeError("controller 'expert' is not available here (no expert for this world)")
            expert = self.expert_factory(task)

        applied = ports.reset(requested, cfg.reset_timeout_s)
        # observations and statuses older than the reset (plus a settle time) are not this episode's
        t_reset = ports.now() + cfg.reset_settle_s
        applied = dict(applied or requested)
        applied.setdefault("task", task)
        if expert is not None:
            expert.reset(applied)

        obs = ports.wait_observation(t_reset, cfg.first_observation_timeout_s)
        if obs is None:
            ports.hold()
            raise EpisodeError(f"no observation within {cfg.first_observation_timeout_s:.1f} s after the reset")
        ports.drain_actions()  # actions of a previous episode are not ours

        max_steps = goal.max_steps or (self.time_limit(task) if self.time_limit else 0) or cfg.max_steps
        keep_images = goal.record and cfg.record_images
        observations = [obs]
        actions, rewards, terms, truncs, succs, sources, inters = [], [], [], [], [], [], []
        policy_version = ""
        world_source = ds.source_id(cfg.world_source)
        step_source = ds.SOURCE_DEMO if expert is not None else world_source
        gripper = -1.0
        message = ""
        success = cancel = False
        missing = 0
        min_interval = cfg.step_pacing / cfg.control_rate_hz
        for k in range(max_steps):
            t_step = ports.now()
            if cancelled():
                cancel = True
                message = "cancelled"
                break
            published = None
            if expert is not None:
                a = np.asarray(expert.act(obs, ports.object_pose(), applied), dtype=float).reshape(7)
                if not np.all(np.isfinite(a)):
                    ports.hold()
                    raise EpisodeError(f"the expert produced a non-finite action at step {k}: {a.tolist()}")
                published = ActionRecord(a, ACTION_SOURCE_SCRIPTED, False, "", k, ports.now())
                ports.publish_action(published)

            nxt = ports.wait_observation(max(obs.stamp, t_step + min_interval), cfg.observation_timeout_s)
            if nxt is None:
                # the step's outcome is unknown: it is not recorded
                message = f"no observation for {cfg.observation_timeout_s:.1f} s at step {k}: episode stopped"
                if truncs:
                    truncs[-1] = not terms[-1]
                break
            seen = ports.drain_actions()
            chosen = self._choose(seen, published)
            if chosen is None:
                missing += 1
            else:
                gripper = float(chosen.action[6])
                if chosen.policy_version:
                    policy_version = chosen.policy_version
            st = ports.latest_status(t_reset)
            reward = float(st.reward) if st is not None and math.isfinite(st.reward) else 0.0
            succ = bool(st.success) if st is not None else False
            done = bool(st.done) if st is not None else False
            aborted = bool(st.aborted) if st is not None else False
            last = k == max_steps - 1
            terminated = succ or (done and not aborted)
            truncated = (aborted or last) and not terminated
            self._append_step(actions, rewards, terms, truncs, succs, sources, inters,
                              chosen, published, gripper, reward, succ, terminated, truncated, step_source)
            observations.append(nxt)
            obs = nxt
            ports.feedback(k, float(np.sum(rewards)), bool(inters[-1]))
            if succ or done or aborted:
                success = succ
                message = "success" if succ else ("aborted by the operator" if aborted else "task reported done")
                break
            if last:
                message = f"time limit ({max_steps} steps)"
        ports.hold()
        if not message:
            message = "cancelled" if cancel else "finished"

        T = len(actions)
        if T and cancel:
            truncs[-1] = not terms[-1]
        episode_source = ds.SOURCE_DEMO if expert is not None else world_source
        ep = None
        storage_uri = ""
        if T:
            obs_arr = {"proprio": np.stack([o.proprio for o in observations]).astype(np.float32)}
            if all(o.command is not None for o in observations):     # else training rebuilds them
                obs_arr[ds.COMMAND_KEY] = np.stack([o.command for o in observations]).astype(np.float32)
            if keep_images:
                names = set(observations[0].images)
                for o in observations:
                    names &= set(o.images)
                for name in sorted(names):
                    obs_arr[name] = np.stack([o.images[name] for o in observations])
            ep = ds.EpisodeData(
                task=task, observations=obs_arr, actions=np.asarray(actions, np.float32),
                rewards=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool),
                truncated=np.asarray(truncs, bool), success=np.asarray(succs, bool),
                source=np.asarray(sources, np.uint8), intervention=np.asarray(inters, bool),
                episode_source=episode_source, initial_configuration=applied, policy_version=policy_version,
                extra={"controller": goal.controller, "missing_actions": missing, "message": message,
                       "control_rate_hz": cfg.control_rate_hz},
            )
            ep.episode_id = ds.new_episode_id(task)
            if goal.record:
                path = self.writer_factory(cfg.dataset_dir).write_episode(ep)
                storage_uri = str(path)
        return EpisodeOutcome(
            success=success, length=T, episode_return=float(np.sum(rewards)) if T else 0.0,
            episode_id=ep.episode_id if ep is not None else ds.new_episode_id(task), message=message,
            configuration=applied, storage_uri=storage_uri, num_interventions=int(np.sum(inters)) if T else 0,
            policy_version=policy_version, episode_source=episode_source, episode=ep, cancelled=cancel,
            step_rate_hz=self._rate(observations))

    @staticmethod
    def _rate(observations: list[StepObservation]) -> float:
        span = observations[-1].stamp - observations[0].stamp
        return (len(observations) - 1) / span if len(observations) > 1 and span > 0 else 0.0

    @staticmethod
    def _choose(seen: list[ActionRecord], published: Optional[ActionRecord]) -> Optional[ActionRecord]:
        """The action that drove this step: a human's wins (fr3_bridge gives it priority),
        else the latest seen, else the one the manager published itself."""
        humans = [a for a in seen if a.human]
        if humans:
            return humans[-1]
        if seen:
            return seen[-1]
        return published

    @staticmethod
    def _append_step(actions, rewards, terms, truncs, succs, sources, inters, chosen, published, gripper,
                     reward, succ, terminated, truncated, step_source):
        rec = chosen or published
        a = np.asarray(rec.action, dtype=float) if rec is not None else _noop_action(gripper)
        a = a.copy()
        a[6] = float(np.clip(a[6], -1.0, 1.0))
        actions.append(a)
        rewards.append(reward)
        succs.append(succ)
        terms.append(terminated)
        truncs.append(truncated)
        human = bool(rec is not None and rec.human)
        inters.append(human)
        sources.append(ds.SOURCE_INTERVENTION if human else step_source)
