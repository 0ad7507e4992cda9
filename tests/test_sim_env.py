"""The sim env API: observations, reset options, reproducibility, bad input, safety envelope."""
import math

import numpy as np
import pytest

from twinrl_bringup.safety import SafetyEnvelope, load_safety_config
from twinrl_twin.sim import TASKS, make_env


@pytest.fixture(scope="module")
def env():
    e = make_env("pick_and_place", render=False, seed=3)
    yield e
    e.close()


def test_tasks_and_attributes(env):
    assert TASKS == ("pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard")
    assert env.task == "pick_and_place"
    assert env.control_dt == pytest.approx(0.1)
    assert env.grid.rows * env.grid.cols == len(env.grid.cells("all"))
    assert set(env.grid.cells("id")).isdisjoint(env.grid.cells("ood"))
    assert len(env.grid.cells("id")) > 0 and len(env.grid.cells("ood")) > 0


def test_observation_and_info_layout(env):
    obs, info = env.reset(seed=11)
    assert "third_person" not in obs           # render=False skips images
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (22,)
    assert obs["tcp_pose"].shape == (7,) and obs["joint_positions"].shape == (7,)
    assert obs["joint_velocities"].shape == (7,)
    assert np.allclose(obs["proprio"][:7], obs["joint_positions"], atol=1e-6)
    assert np.allclose(obs["proprio"][14:21], obs["tcp_pose"], atol=1e-6)
    assert obs["proprio"][21] == pytest.approx(obs["gripper_width"], abs=1e-6)
    assert obs["gripper_width"] == pytest.approx(0.08, abs=2e-3)   # starts open
    conf = info["configuration"]
    for key in ("task", "object_pose", "target_pose", "cell_row", "cell_col", "region", "seed"):
        assert key in conf
    assert conf["task"] == "pick_and_place" and conf["seed"] == 11
    assert conf["region"] == env.grid.region_of(conf["cell_row"], conf["cell_col"])
    # the object lies inside its cell (jitter) and on the table
    x, y, z = conf["object_pose"][:3]
    assert env.grid.cell_of(x, y) == (conf["cell_row"], conf["cell_col"])
    assert 0.0 < z < 0.05
    assert info["success"] is False and info["safety"] is None


def test_reset_options_region_cell_and_configuration(env):
    for seed in range(6):
        _, info = env.reset(seed=seed, options={"region": "ood"})
        assert info["configuration"]["region"] == "ood"
    _, info = env.reset(seed=1, options={"cell": (2, 4)})
    c = info["configuration"]
    assert (c["cell_row"], c["cell_col"]) == (2, 4)
    pose = [0.45, -0.1, 0.0131, 0.0, 0.0, math.sin(0.2), math.cos(0.2)]
    _, info = env.reset(options={"configuration": {"object_pose": pose}})
    got = np.asarray(info["configuration"]["object_pose"])
    assert np.allclose(got[:2], pose[:2], atol=2e-3)
    assert info["configuration"]["region"] == env.grid.region_of(*env.grid.cell_of(0.45, -0.1))


def test_bad_reset_input_is_named(env):
    with pytest.raises(ValueError, match="region"):
        env.reset(options={"region": "middle"})
    with pytest.raises(ValueError, match="object_pose"):
        env.reset(options={"configuration": {"object_pose": [0.4, 0.0, np.nan, 0, 0, 0, 1]}})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="outside"):
        env.reset(options={"cell": (99, 0)})
    with pytest.raises(ValueError, match="unknown task"):
        make_env("juggle", render=False)
    with pytest.raises(ValueError, match="perturbation"):
        make_env("pick_and_place", render=False, perturbation="fog")


def test_episodes_reproducible_from_seed():
    def run(seed):
        e = make_env("insert_hexagon", render=False)
        obs, info = e.reset(seed=seed)
        rng = np.random.default_rng(0)
        for _ in range(8):
            obs, *_ = e.step(np.concatenate([rng.uniform(-0.03, 0.03, 3), rng.uniform(-0.1, 0.1, 3), [0.0]]))
        e.close()
        return info["configuration"], obs["proprio"]

    c1, p1 = run(5)
    c2, p2 = run(5)
    c3, _ = run(6)
    assert c1 == c2
    assert np.array_equal(p1, p2)
    assert c3["object_pose"] != c1["object_pose"]


def test_delta_actions_move_the_tcp(env):
    obs, _ = env.reset(seed=0)
    start = obs["tcp_pose"][:3].copy()
    for _ in range(5):
        obs, reward, term, trunc, info = env.step(np.array([0.02, 0.0, -0.01, 0, 0, 0, -1.0]))
    for _ in range(3):
        obs, *_ = env.step(np.zeros(7) + np.array([0, 0, 0, 0, 0, 0, -1.0]))
    moved = obs["tcp_pose"][:3] - start
    assert moved == pytest.approx([0.10, 0.0, -0.05], abs=0.004)
    assert info["safety"].accepted and not info["safety"].clipped
    # closing the gripper on nothing narrows it
    for _ in range(5):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert obs["gripper_width"] < 0.005


def test_set_target_advance_and_robot_state(env):
    env.reset(seed=0)
    target = np.array([0.5, 0.1, 0.25])
    env.set_target(target, [1.0, 0.0, 0.0, 0.0], -1.0)
    for _ in range(10):
        env.advance(0.1)
    st = env.robot_state()
    assert np.linalg.norm(st.tcp_position - target) < 0.003
    assert st.joint_positions.shape == (7,) and st.external_force.shape == (3,)
    # outside the box: clipped into it
    env.set_target([5.0, 0.0, -3.0], [1.0, 0.0, 0.0, 0.0], 1.0)
    box = SafetyEnvelope(load_safety_config())
    assert box.contains(env.target_pose[0])
    with pytest.raises(ValueError, match="position"):
        env.set_target([np.nan, 0, 0], [1, 0, 0, 0], 0.0)
    with pytest.raises(ValueError, match="quaternion"):
        env.set_target([0.5, 0, 0.2], [0, 0, 0, 0], 0.0)


def test_task_configs_load_and_errors_name_the_key():
    from twinrl_bringup.config import ConfigError
    from twinrl_twin.sim.config import load_task_config

    for task in TASKS:
        cfg = load_task_config(task)
        assert cfg.name == task and cfg.time_limit > 0
    with pytest.raises(ConfigError, match="grid.rows"):
        load_task_config("pick_and_place", ["grid.rows=four"])
    with pytest.raises(ConfigError, match="id_cols"):
        load_task_config("pick_and_place", ["grid.id_cols=[4, 9]"])
    with pytest.raises(ConfigError, match="pattern"):
        load_task_config("erase_whiteboard", ["pattern=['#.', '#']"])
    with pytest.raises(ValueError, match="unknown task"):
        load_task_config("juggle")


def test_command_observation_matches_the_commanded_path_rebuilt_from_actions(env):
    """obs["command"] (target - TCP, rotation to the target, gripper command) is what training
    rebuilds from a recorded episode's proprioception and actions (twinrl_bringup.dataset)."""
    from twinrl_bringup.dataset import COMMAND_DIM, episode_commands

    obs, info = env.reset(seed=21, options={"region": "id"})
    assert obs["command"].shape == (COMMAND_DIM,) and np.allclose(obs["command"][:6], 0, atol=1e-6)
    assert obs["command"][6] == -1.0
    expert = env.expert()
    P, C, A = [obs["proprio"]], [obs["command"]], []
    for _ in range(40):
        a = expert.act(obs, info)
        obs, _, term, trunc, info = env.step(a)
        A.append(a)
        P.append(obs["proprio"])
        C.append(obs["command"])
        if term or trunc:
            break
    C = np.array(C)
    assert np.abs(C[:, 2]).max() > 0.02       # the arm lags its target by centimetres while moving
    assert C[:, 6].max() == 1.0               # the grasp's close command
    np.testing.assert_allclose(episode_commands(np.array(P), np.array(A)), C, atol=1e-6)
    with pytest.raises(ValueError, match="proprio: expected"):
        episode_commands(np.array(P)[:-1], np.array(A))


def test_recorded_episodes_keep_the_commands_a_force_stop_moved():
    """The wipe presses the eraser onto the board; a force stop holds the arm where it is (the
    target jumps to the measured pose), so the path rebuilt from the actions runs away from the
    real target for the rest of the episode. Recorded episodes keep the env's commands."""
    from twinrl_bringup.dataset import commands_of, episode_commands
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    env = make_env("erase_whiteboard", render=False)
    try:
        ep = record_episode(env, 1000, "id", images=False, post_success_steps=5, action_noise=0.003)
        assert env._force_stops > 0 and ep.is_success
        cmd, recorded = commands_of(ep)
        assert recorded
        # the env's own commands: replaying the actions gives the same observations
        obs, _ = env.reset(options={"configuration": ep.initial_configuration})
        want = [obs["command"]]
        for a in ep.actions:
            obs, *_ = env.step(a)
            want.append(obs["command"])
        np.testing.assert_allclose(cmd, np.array(want), atol=1e-6)
        rebuilt = episode_commands(ep.observations["proprio"], ep.actions)
        assert np.linalg.norm(rebuilt[:, :3] - cmd[:, :3], axis=1).max() > 0.01
    finally:
        env.close()


def test_record_post_success_steps_keep_the_release_and_retreat():
    """`twinrl sim record --post-success-steps K`: the expert goes on K steps after the first
    success (gripper open, then rising); the episode terminates at its last step only."""
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    env = make_env("pick_and_place", render=False)
    try:
        base = record_episode(env, 3, "id", images=False)
        more = record_episode(env, 3, "id", images=False, post_success_steps=4)
        with pytest.raises(ValueError, match="post_success_steps must be >= 0"):
            record_episode(env, 3, "id", images=False, post_success_steps=-1)
    finally:
        env.close()
    assert base.is_success and base.terminated[-1] and base.length >= 10
    assert more.length == base.length + 4
    np.testing.assert_allclose(more.actions[:base.length], base.actions, atol=1e-9)   # same episode first
    assert more.terminated.tolist() == [False] * (more.length - 1) + [True] and not more.truncated.any()
    assert more.success[base.length - 1:].all()                  # the block stays on the plate
    assert (more.actions[base.length - 1:, 6] < 0).all()          # the release is 5 steps now, not 1
    # the expert waits for the fingers to open, then retreats upwards
    assert np.allclose(more.actions[base.length:-1, :6], 0.0) and more.actions[-1, 2] > 0.02
