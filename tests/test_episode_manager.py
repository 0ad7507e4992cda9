"""Episode manager core against a fake world (no ROS): step loop, endings, recording, sampling."""
from __future__ import annotations

import numpy as np
import pytest

from twinrl_bringup import dataset as ds
from twinrl_bringup.episode_manager import (
    ACTION_SOURCE_HUMAN, ACTION_SOURCE_POLICY, STRATEGY_CELL,
    ActionRecord, EpisodeError, EpisodeManagerConfig, EpisodeRunner, Goal,
    StatusRecord, StepObservation,
)

CONFIG = {"task": "reach", "object_pose": [0.5, 0.1, 0.02, 0, 0, 0, 1],
          "target_pose": [0.5, -0.1, 0.02, 0, 0, 0, 1], "cell_row": 1, "cell_col": 2,
          "region": "id", "seed": 3}


class FakeWorld:
    """A TCP point that moves by the last action each period; success when it reaches the object."""

    def __init__(self, policy=None, stall_after=None, abort_at=None, images=True):
        self.tcp = np.array([0.4, 0.0, 0.3])
        self.gripper_width = 0.08
        self.object = None
        self.t = 0.0
        self.policy = policy                # obs -> list[ActionRecord] "seen on the action topic"
        self.topic: list[ActionRecord] = []
        self.published: list[ActionRecord] = []
        self.holds = 0
        self.resets = []
        self.steps = 0
        self.stall_after = stall_after
        self.abort_at = abort_at
        self.images = images
        self.sample_service = None
        self.feedbacks = []
        self.no_command = False
        self.gripper_command = -1.0

    # EpisodePorts ---------------------------------------------------------------------------
    def now(self):
        return self.t

    def reset(self, configuration, timeout):
        if configuration.get("object_pose") is None:
            raise EpisodeError("reset refused")
        self.resets.append(configuration)
        self.object = np.asarray(configuration["object_pose"][:3], float)
        self.tcp = np.array([0.4, 0.0, 0.3])
        self.steps = 0
        self.fresh = True
        applied = dict(configuration)
        applied["applied_by"] = "fake"
        return applied

    def sample_configuration(self, task, strategy, region, cell, seed):
        return self.sample_service(task, strategy, region, cell, seed) if self.sample_service else None

    def _obs(self):
        proprio = ds.proprio_vector(np.zeros(7), np.zeros(7), self.tcp, [1, 0, 0, 0], self.gripper_width)
        images = {}
        if self.images:
            images = {"third_person": np.full((8, 8, 3), self.steps % 255, np.uint8),
                      "wrist": np.full((4, 4, 3), 7, np.uint8)}
        command = np.array([0.0, 0.0, -0.01 * self.steps, 0.0, 0.0, 0.0, self.gripper_command], np.float32)
        return StepObservation(self.t, proprio, images, None if self.no_command else command)

    def wait_observation(self, newer_than, timeout):
        if self.stall_after is not None and self.steps >= self.stall_after:
            self.t += timeout
            return None
        if getattr(self, "fresh", False):   # the first observation after a reset
            self.fresh = False
            self.t += 0.01
            return self._obs()
        if self.policy is not None:
            self.topic.extend(self.policy(self._obs(), self.steps))
        if self.topic:
            a = self.topic[-1].action
            for rec in self.topic:
                if rec.human:
                    a = rec.action
            self.tcp = self.tcp + np.asarray(a[:3])
        self.t += 0.1
        self.steps += 1
        return self._obs()

    def latest_status(self, since):
        if self.t < since:
            return None
        if self.abort_at is not None and self.steps >= self.abort_at:
            return StatusRecord(self.t, 0.0, False, True, True)
        ok = self.object is not None and np.linalg.norm(self.tcp - self.object) < 0.011
        return StatusRecord(self.t, 1.0 if ok else 0.0, ok, ok, False)

    def object_pose(self):
        return np.array([*self.object, 0, 0, 0, 1.0])

    def publish_action(self, record):
        self.published.append(record)
        self.topic.append(record)    # the manager's own message comes back on the topic

    def drain_actions(self):
        out, self.topic = self.topic, []
        return out

    def hold(self):
        self.holds += 1

    def feedback(self, step, episode_return, intervention):
        self.feedbacks.append((step, episode_return, intervention))


class ReachExpert:
    def __init__(self):
        self.configs = []

    def reset(self, configuration):
        self.configs.append(configuration)

    def act(self, obs, object_pose, configuration):
        d = np.clip(object_pose[:3] - obs.tcp_position, -0.03, 0.03)
        return np.array([*d, 0, 0, 0, -1.0])


def runner(tmp_path, **kw):
    cfg = EpisodeManagerConfig(task="reach", dataset_dir=str(tmp_path / "data"), max_steps=40, **kw)
    return EpisodeRunner(cfg, expert_factory=lambda task: ReachExpert())


def test_expert_episode_succeeds_and_is_recorded(tmp_path):
    world = FakeWorld()
    out = runner(tmp_path).run(Goal(configuration=dict(CONFIG), controller="expert", record=True), world)
    assert out.success and 0 < out.length < 40, out.message
    assert out.message == "success" and out.episode_return == pytest.approx(1.0)
    assert world.resets[0]["object_pose"] == CONFIG["object_pose"]
    assert out.configuration["applied_by"] == "fake"
    assert world.holds >= 1
    assert [f[0] for f in world.feedbacks] == list(range(out.length))
    # every published action was a scripted one, step-indexed
    assert [p.step for p in world.published] == list(range(out.length))
    assert all(p.source == 2 for p in world.published)

    data = ds.Dataset(tmp_path / "data")
    assert len(data) == 1 and data.entries[0]["episode_id"] == out.episode_id
    assert out.storage_uri.endswith(".npz")
    ep = data[0]
    assert ep.length == out.length and ep.is_success and ep.episode_source == ds.SOURCE_DEMO
    assert ep.observations["proprio"].shape == (out.length + 1, ds.PROPRIO_DIM)
    assert ep.observations["third_person"].shape == (out.length + 1, 8, 8, 3)
    assert ep.terminated[-1] and not ep.truncated.any()
    assert (ep.source == ds.SOURCE_DEMO).all()
    np.testing.assert_allclose(ep.actions, np.stack([p.action for p in world.published]), atol=1e-6)
    assert ep.initial_configuration["cell_col"] == 2 and ep.region == "id"
    # each step's commanded target as the robot side reported it
    cmd = ep.observations["command"]
    assert cmd.shape == (out.length + 1, 7) and cmd[-1, 2] == pytest.approx(-0.01 * world.steps)
    assert len(set(cmd[:, 2].tolist())) > 2
    # a world that reports no commanded target: the episode is recorded without them
    world = FakeWorld()
    world.no_command = True
    runner(tmp_path / "b").run(Goal(configuration=dict(CONFIG), controller="expert", record=True), world)
    assert "command" not in ds.Dataset(tmp_path / "b" / "data")[0].observations


class FastSensorWorld(FakeWorld):
    """Observations every ``period`` s (faster than the control rate); an action takes effect
    at the first sensor tick after it was published; ``newer_than`` is honoured."""

    def __init__(self, period):
        super().__init__()
        self.period = period
        self.stamps = []

    def wait_observation(self, newer_than, timeout):
        if getattr(self, "fresh", False):
            self.fresh = False
            self.t += 0.01
            return self._obs()
        while True:
            self.t += self.period
            if self.topic:
                self.tcp = self.tcp + np.asarray(self.topic[-1].action[:3])
                self.topic = []
            if self.t > newer_than:
                self.steps += 1
                self.stamps.append(self.t)
                return self._obs()

    def drain_actions(self):
        return list(self.published[-1:])


@pytest.mark.parametrize("pacing, interval", [(0.6, 0.1), (0.85, 0.1), (0.0, 0.05)])
def test_fast_observations_do_not_speed_the_loop_up(tmp_path, pacing, interval):
    """A 20 Hz sensor under 10 Hz control: the loop skips every other observation (pacing 0
    steps on each one, the old behaviour)."""
    world = FastSensorWorld(period=0.05)
    out = runner(tmp_path, step_pacing=pacing).run(Goal(configuration=dict(CONFIG), controller="expert"), world)
    assert out.success, out.message
    gaps = np.diff(world.stamps)
    np.testing.assert_allclose(gaps, interval, atol=1e-9)
    assert out.step_rate_hz == pytest.approx(1.0 / interval)


def test_step_pacing_is_validated():
    with pytest.raises(ValueError, match="step_pacing must be in \\[0, 1\\], got 1.5"):
        EpisodeManagerConfig(step_pacing=1.5).validate()


def test_policy_episode_records_interventions_and_time_limit(tmp_path):
    def policy(obs, step):
        recs = [ActionRecord(np.array([0.0, 0.0, -0.001, 0, 0, 0, -1.0]), ACTION_SOURCE_POLICY, False, "v7", step)]
        if step in (2, 3):
            recs.append(ActionRecord(np.array([0.01, 0, 0, 0, 0, 0, 1.0]), ACTION_SOURCE_HUMAN, True, "", step))
        return recs

    world = FakeWorld(policy=policy)
    out = runner(tmp_path).run(Goal(configuration=dict(CONFIG), controller="policy", max_steps=6, record=True), world)
    assert not out.success and out.length == 6 and out.message == "time limit (6 steps)"
    assert out.num_interventions == 2 and out.policy_version == "v7"
    assert world.published == []          # the manager only watches in policy mode
    ep = ds.Dataset(tmp_path / "data")[0]
    assert ep.episode_source == ds.SOURCE_REAL
    assert ep.intervention.tolist() == [False, False, True, True, False, False]
    assert ep.source.tolist() == [0, 0, 3, 3, 0, 0]
    assert ep.actions[2, 0] == pytest.approx(0.01) and ep.actions[2, 6] == 1.0
    assert ep.truncated.tolist() == [False] * 5 + [True] and not ep.terminated.any()
    assert [f[2] for f in world.feedbacks] == [False, False, True, True, False, False]


def test_policy_without_actions_records_noops(tmp_path):
    world = FakeWorld(policy=lambda obs, step: [], images=False)
    out = runner(tmp_path).run(Goal(configuration=dict(CONFIG), controller="policy", max_steps=3, record=True), world)
    ep = out.episode
    assert out.length == 3 and ep.extra["missing_actions"] == 3
    np.testing.assert_array_equal(ep.actions, np.tile([0, 0, 0, 0, 0, 0, -1.0], (3, 1)))
    assert set(ds.Dataset(tmp_path / "data")[0].observations) == {"proprio", "command"}


def test_cancel_holds_and_truncates(tmp_path):
    world = FakeWorld(policy=lambda obs, step: [ActionRecord(np.zeros(7))])
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3

    out = runner(tmp_path).run(Goal(configuration=dict(CONFIG), controller="policy", record=False), world, cancelled)
    assert out.cancelled and out.message == "cancelled" and out.length == 3
    assert world.holds >= 1 and out.storage_uri == "" and not (tmp_path / "data").exists()
    assert out.episode.truncated.tolist() == [False, False, True]


def test_operator_abort_and_stalled_observations(tmp_path):
    world = FakeWorld(policy=lambda obs, step: [ActionRecord(np.zeros(7))], abort_at=4)
    out = runner(tmp_path).run(Goal(configuration=dict(CONFIG), controller="policy"), world)
    assert not out.success and out.length == 4 and "aborted" in out.message
    assert out.episode.truncated[-1] and not out.episode.terminated.any()

    world = FakeWorld(policy=lambda obs, step: [ActionRecord(np.zeros(7))], stall_after=5)
    out = runner(tmp_path, observation_timeout_s=0.5).run(Goal(configuration=dict(CONFIG), controller="policy"), world)
    assert out.length == 5 and "no observation for 0.5 s at step 5" in out.message
    assert world.holds >= 1 and out.episode.truncated[-1]


def test_bad_goals_and_expert_failures(tmp_path):
    r = runner(tmp_path)
    with pytest.raises(EpisodeError, match="controller 'joystick'"):
        r.run(Goal(configuration=dict(CONFIG), controller="joystick"), FakeWorld())
    bad = dict(CONFIG, object_pose=[0.5, float("nan"), 0, 0, 0, 0, 1])
    with pytest.raises(EpisodeError, match="configuration.object_pose"):
        r.run(Goal(configuration=bad, controller="expert"), FakeWorld())
    with pytest.raises(EpisodeError, match="zero quaternion"):
        r.run(Goal(configuration=dict(CONFIG, target_pose=[0.5, 0, 0, 0, 0, 0, 0]), controller="expert"), FakeWorld())

    class NanExpert(ReachExpert):
        def act(self, obs, object_pose, configuration):
            return np.full(7, np.nan)

    world = FakeWorld()
    nan_runner = EpisodeRunner(EpisodeManagerConfig(task="reach"), expert_factory=lambda t: NanExpert())
    with pytest.raises(EpisodeError, match="non-finite action at step 0"):
        nan_runner.run(Goal(configuration=dict(CONFIG), controller="expert"), world)
    assert world.holds == 1
    no_expert = EpisodeRunner(EpisodeManagerConfig(task="reach"))
    with pytest.raises(EpisodeError, match="controller 'expert' is not available"):
        no_expert.run(Goal(configuration=dict(CONFIG), controller="expert"), FakeWorld())


def test_sampled_configuration_prefers_service_then_local_sampler(tmp_path):
    local = []

    def sampler(task, strategy, region, cell, seed):
        local.append((task, strategy, region, cell, seed))
        return dict(CONFIG, cell_row=cell[0], cell_col=cell[1], seed=seed)

    cfg = EpisodeManagerConfig(task="reach", max_steps=40)
    r = EpisodeRunner(cfg, expert_factory=lambda t: ReachExpert(), local_sampler=sampler,
                      time_limit=lambda task: 7)
    goal = Goal(sample_configuration=True, sample_strategy=STRATEGY_CELL, region=1,
                configuration={"task": "reach", "cell_row": 0, "cell_col": 3}, controller="policy", seed=11)
    world = FakeWorld(policy=lambda obs, step: [])
    out = r.run(goal, world)
    assert local == [("reach", STRATEGY_CELL, 1, (0, 3), 11)]
    assert (out.configuration["cell_row"], out.configuration["cell_col"], out.configuration["seed"]) == (0, 3, 11)
    assert out.length == 7 and out.message == "time limit (7 steps)"   # the task's own time limit

    asked = []
    world = FakeWorld()
    world.sample_service = lambda *a: asked.append(a) or dict(CONFIG, seed=99)
    out = r.run(Goal(sample_configuration=True, region=0, controller="expert"), world)
    assert asked and asked[0][0] == "reach" and asked[0][2] == 0 and len(local) == 1
    assert out.configuration["seed"] == 99 and out.length == 7

    seeds = set()
    for _ in range(3):
        r.run(Goal(sample_configuration=True, controller="policy", max_steps=1), FakeWorld(policy=lambda o, s: []))
        seeds.add(local[-1][4])
    assert len(seeds) == 3 and all(s > 0 for s in seeds)     # seed 0 means "draw a fresh one"

    no_sampler = EpisodeRunner(cfg)
    with pytest.raises(EpisodeError, match="no sampling service answered and there is no local sampler"):
        no_sampler.run(Goal(sample_configuration=True, controller="policy"), FakeWorld())


def test_image_conversion_encodings_and_errors():
    from types import SimpleNamespace

    from twinrl_bringup.nodes.episode_manager import image_from_msg

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)            # row stride 12 > 3 px * 3 channels
    padded[:, :9] = rgb.reshape(2, 9)
    msg = SimpleNamespace(encoding="rgb8", height=2, width=3, step=12, data=padded.tobytes())
    np.testing.assert_array_equal(image_from_msg(msg), rgb)
    bgr = SimpleNamespace(encoding="bgr8", height=2, width=3, step=9, data=rgb[:, :, ::-1].tobytes())
    np.testing.assert_array_equal(image_from_msg(bgr), rgb)
    mono = SimpleNamespace(encoding="mono8", height=2, width=3, step=3, data=bytes(range(6)))
    assert image_from_msg(mono).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="wrist: unsupported image encoding '32FC1'"):
        image_from_msg(SimpleNamespace(encoding="32FC1", height=2, width=3, step=12, data=bytes(24)), "wrist")
    with pytest.raises(ValueError, match="third_person: image 3x2 step 9 does not match its 10 data bytes"):
        image_from_msg(SimpleNamespace(encoding="rgb8", height=2, width=3, step=9, data=bytes(10)), "third_person")
