"""Stage I runs: slots over ID/OOD cells, kept demos as twin episodes covering the asked
cells, rejections counted by reason while the run goes on, the transfer rate in the sim world
(steered to the recorded targets, and by the actions alone), paired samples, and the `twinrl demos` command."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from twinrl_bringup import dataset as ds

SMALL = {"third_person.width": 64, "third_person.height": 64, "wrist.width": 32, "wrist.height": 32}
TASKS = ["pick_and_place", "insert_hexagon"]


def record_seed(task: str, out, seed: int = 0):
    """One successful sim-world expert episode (the seed demonstration), proprioception only."""
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    env = make_env(task, render=False, seed=seed)
    try:
        for s in range(seed, seed + 10):
            ep = record_episode(env, s, "id", images=False)
            if ep.is_success:
                return ds.DatasetWriter(out).write_episode(ep)
    finally:
        env.close()
    raise AssertionError(f"no successful {task} expert episode to seed from")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return {t: record_seed(t, root / t) for t in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_affine_run_covers_asked_ood_cells_and_transfers_to_the_sim_world(task, seeds, tiny_twins, tmp_path):
    from twinrl_twin.demogen.generate import generate, load_demogen_config
    from twinrl_twin.demogen.replay import transfer_rate
    from twinrl_twin.sim.config import load_task_config
    from twinrl_twin.sim.grid import WorkspaceGrid

    out = tmp_path / "demos"
    cfg = load_demogen_config()
    s = generate(tiny_twins(task), seeds[task], out, n_id=2, n_ood=4, method="affine", workers=1, seed=3,
                 config=cfg, camera_overrides=SMALL, progress=False)
    grid = WorkspaceGrid(load_task_config(task).grid)
    asked_ood = grid.cells("ood")[:4]
    assert s["requested"] == 6 and s["generated"] >= 5, s
    # every kept demo is a twin episode of the asked region and cell, with both cameras
    d = ds.Dataset(out)
    assert len(d) == s["generated"]
    cells = {"id": set(), "ood": set()}
    for ep in d:
        assert ep.episode_source == ds.SOURCE_TWIN and (ep.source == ds.SOURCE_TWIN).all()
        assert ep.is_success and ep.task == task
        assert ep.observations["third_person"].shape[1:] == (64, 64, 3)
        assert ep.observations["wrist"].shape[1:] == (32, 32, 3)
        assert ep.observations["proprio"].shape == (ep.length + 1, ds.PROPRIO_DIM)
        a = ep.actions
        assert np.all(np.linalg.norm(a[:, :3], axis=1) <= 0.05 + 1e-6)
        assert ep.extra["generator"] == "affine" and ep.extra["seed_demo"]
        r, c = ep.cell
        assert grid.region_of(r, c) == ep.region
        cells[ep.region].add((r, c))
    assert cells["ood"] == set(map(tuple, s["cells"]["ood"]))
    assert cells["ood"] <= set(asked_ood)
    assert {tuple(c) for c in s["missing_cells"]["ood"]} == set(asked_ood) - cells["ood"]
    assert len(cells["ood"]) >= 3
    # the kept demos replayed in the (physics) sim world
    r = transfer_rate(out, workers=1, progress=False)
    print(f"\n{task}: {s['generated']}/{s['requested']} kept ({s['attempts']} attempts, {s['rejections']}), "
          f"{s['demos_per_minute']:.0f} demos/min; sim replay {r['successes']}/{r['episodes']}")
    assert r["episodes"] == s["generated"] and r["transfer_rate"] >= 0.6, r


def test_rejected_slots_are_counted_and_the_run_goes_on(seeds, tiny_twins, tmp_path, monkeypatch):
    """Every attempt in OOD cell slots is rejected (as a planner timeout would be): the
    run still returns the other demos, counts the rejections and lists the missing cells."""
    from twinrl_twin.demogen import execute, generate as gen
    from twinrl_twin.demogen.path import REJECT_PLANNER_TIMEOUT, Rejection

    real = execute.generate_candidate

    def flaky(env, demo, keyframes, configuration, **kw):
        if configuration["region"] == "ood":
            return Rejection(REJECT_PLANNER_TIMEOUT, "no path within 0.0 s", configuration)
        return real(env, demo, keyframes, configuration, **kw)

    monkeypatch.setattr(execute, "generate_candidate", flaky)
    cfg = gen.load_demogen_config(overrides=["max_attempts=2", "render=false"])
    s = gen.generate(tiny_twins("pick_and_place"), seeds["pick_and_place"], tmp_path / "d", n_id=1, n_ood=2,
                     method="affine", config=cfg, progress=False)
    assert s["generated"] == s["generated_id"] == 1
    assert s["rejections"] == {REJECT_PLANNER_TIMEOUT: 4} and s["rejected"] == 4
    assert len(s["missing_cells"]["ood"]) == 2 and s["attempts"] == 5
    assert "no path" in s["rejection_examples"][REJECT_PLANNER_TIMEOUT]


def test_bad_inputs_are_named(seeds, tiny_twins, tmp_path):
    from twinrl_twin.demogen.generate import generate

    with pytest.raises(ValueError, match="method"):
        generate(tiny_twins("pick_and_place"), seeds["pick_and_place"], tmp_path / "a", 1, 1, method="teleport")
    with pytest.raises(ValueError, match="insert_hexagon"):
        generate(tiny_twins("pick_and_place"), seeds["insert_hexagon"], tmp_path / "b", 1, 1, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        generate(tiny_twins("pick_and_place"), seeds["pick_and_place"], tmp_path / "c", 0, 0, progress=False)


def test_paired_samples_link_real_and_twin(seeds, tiny_twins, tmp_path):
    from twinrl_twin.demogen.replay import load_pairs, pair_demos

    real_dir = seeds["pick_and_place"].parent
    s = pair_demos(tiny_twins("pick_and_place"), real_dir, tmp_path / "pairs", camera_overrides=SMALL, progress=False)
    assert s["count"] == 1 and s["twin_successes"] == 1, s
    pairs = load_pairs(real_dir, tmp_path / "pairs")
    assert len(pairs) == 1
    real, twin = pairs[0]
    assert twin.extra["pair_of"] == real.episode_id and twin.episode_source == ds.SOURCE_TWIN
    assert twin.initial_configuration["object_pose"] == pytest.approx(real.initial_configuration["object_pose"], abs=1e-3)
    assert twin.observations["wrist"].shape[1:] == (32, 32, 3)
    # the same actions: the twin's TCP (no dynamics: it is at each target at once) and the
    # physical arm (lagging by up to a few cm in fast moves) end up at the same place
    n = min(real.length, twin.length) + 1
    gap = np.linalg.norm(real.observations["proprio"][:n, 14:17] - twin.observations["proprio"][:n, 14:17], axis=1)
    assert gap.max() < 0.06 and gap[-1] < 0.01, gap


def test_alignment_sweeps_follow_twin_paths_where_the_real_cell_has_its_objects(seeds, tiny_twins, tmp_path):
    """demogen.replay.sweep_paths: the sim world's robot follows an OOD twin demo's path from a
    real demo's initial configuration (its block stays where the real demo had it); written as
    a real episode marked as a sweep, which SFT leaves out of the demonstrations and pairs through
    its twin replay (pair_demos renders at the sweep's image sizes by default)."""
    from twinrl_policy.config import load_model_config
    from twinrl_policy.data import load_demo_pools, load_pair_pool
    from twinrl_twin.demogen.generate import generate
    from twinrl_twin.demogen.replay import pair_demos, sweep_paths
    from twinrl_twin.sim import make_env

    s = generate(tiny_twins("pick_and_place"), seeds["pick_and_place"], tmp_path / "paths", n_id=0, n_ood=1,
                 method="affine", workers=1, seed=3, camera_overrides=SMALL, progress=False)
    assert s["generated"] == 1, s
    path = next(iter(ds.Dataset(tmp_path / "paths")))
    real = ds.load_episode(seeds["pick_and_place"], images=False)
    env = make_env("pick_and_place", render=True, camera_overrides=SMALL)
    try:
        info = sweep_paths(env, tmp_path / "paths", seeds["pick_and_place"].parent, tmp_path / "sweeps",
                           progress=False)
    finally:
        env.close()
    assert info["count"] == 1
    sweep = next(iter(ds.Dataset(tmp_path / "sweeps")))
    assert ds.is_sweep(sweep) and not ds.is_sweep(path) and not ds.is_sweep(real)
    assert sweep.episode_source == ds.SOURCE_REAL and not sweep.is_success
    assert sweep.extra["path_of"] == path.episode_id and sweep.extra["configuration_of"] == real.episode_id
    # the real demo's block, not the path's (an OOD placement)
    obj = np.asarray(sweep.initial_configuration["object_pose"][:2])
    assert obj == pytest.approx(real.initial_configuration["object_pose"][:2], abs=1e-3)
    assert np.linalg.norm(obj - np.asarray(path.initial_configuration["object_pose"][:2])) > 0.05
    assert sweep.observations["third_person"].shape[1:] == (64, 64, 3) and sweep.length == path.length
    # the arm went where the twin's arm went (the physical arm lags by a few cm in fast moves)
    gap = np.linalg.norm(sweep.observations["proprio"][:, 14:17] - path.observations["proprio"][:, 14:17], axis=1)
    assert gap.max() < 0.06 and gap[-1] < 0.01, gap
    # no camera overrides: the twin renders at the sweep's sizes
    p = pair_demos(tiny_twins("pick_and_place"), tmp_path / "sweeps", tmp_path / "pairs", progress=False)
    assert p["count"] == 1
    twin = next(iter(ds.Dataset(tmp_path / "pairs")))
    assert twin.extra["pair_of"] == sweep.episode_id and twin.observations["wrist"].shape[1:] == (32, 32, 3)
    cfg = load_model_config(None, ["third_person_size=[64,64]", "wrist_size=[32,32]"])
    real_pool, twin_pool, pinfo = load_demo_pools([tmp_path / "sweeps", tmp_path / "paths"], "pick_and_place", cfg,
                                                  progress=False)
    assert pinfo["sweep_episodes"] == 1 and len(real_pool) == 0 and len(twin_pool) == path.length
    sweeps, _, sinfo = load_demo_pools([tmp_path / "sweeps", tmp_path / "paths"], "pick_and_place", cfg,
                                       progress=False, sweeps=True)
    assert len(sweeps) == sweep.length and sinfo["ignored_episodes"] == 1
    pairs, info = load_pair_pool([tmp_path / "pairs"], "pick_and_place", cfg, real_pool, progress=False,
                                 sweeps=sweeps)
    assert info["sweep_pair_episodes"] == 1 and len(pairs) == sweep.length and pairs.sweep.all()
    batch = pairs.real_batch(np.arange(3), real_pool, sweeps)
    assert np.array_equal(batch["third_person"], sweep.observations["third_person"][pairs.real_index[:3]])
    with pytest.raises(ValueError, match="sweep"):
        sweep_paths(env, tmp_path / "paths", seeds["insert_hexagon"].parent, tmp_path / "bad", progress=False)


def test_cli_generate_json_and_errors(seeds, tiny_twins, tmp_path, ros_env):
    cmd = [sys.executable, "-m", "twinrl_bringup.cli", "demos", "generate", "--twin", str(tiny_twins("insert_hexagon")),
           "--seed-demo", str(seeds["insert_hexagon"]), "--n-id", "1", "--n-ood", "1", "--method", "affine",
           "--workers", "2", "--out", str(tmp_path / "cli"), "--set", "render=false", "--json"]
    res = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["generated"] == 2 and s["workers"] == 2 and s["demos_per_minute"] > 0
    assert "demos/min" in res.stdout
    bad = subprocess.run(cmd[:-1] + ["--seed-demo", str(tmp_path / "missing.npz")], env=ros_env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "missing.npz" in bad.stderr
    rep = subprocess.run([sys.executable, "-m", "twinrl_bringup.cli", "demos", "replay", str(tmp_path / "cli"), "--json"],
                         env=ros_env, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    r = json.loads(rep.stdout.strip().splitlines()[-1])
    assert r["episodes"] == 2 and "insert_hexagon" in r["by"]
    assert r["steered"] == 2 and "steered to their recorded targets" in rep.stdout   # twin demos record them


def one_pick_demo(seeds, tiny_twins, out, override: str):
    """The one pick_and_place twin demo of slot seed 2 (no images), with a demogen override."""
    from twinrl_twin.demogen.generate import generate, load_demogen_config

    cfg = load_demogen_config(overrides=["render=false", override])
    s = generate(tiny_twins("pick_and_place"), seeds["pick_and_place"], out, n_id=1, n_ood=0,
                 method="affine", config=cfg, seed=2, progress=False)
    assert s["generated"] == 1, s
    return next(iter(ds.Dataset(out)))


def test_jittered_path_returns_to_the_path_every_step():
    """execute.jitter_actions: step k's commanded target is off the path by n_k and step k+1
    returns to it, so the executed actions sum to the path's; the hand is still where the path
    waits (fingers), at its end and (grip_quiet_steps) on the steps into a gripper change; a
    downward offset is bounded; rotation and gripper unchanged."""
    from twinrl_twin.demogen.execute import jitter_actions

    rng = np.random.default_rng(0)
    a = np.zeros((40, 7))
    a[:, :3] = rng.normal(0, 0.01, (40, 3))
    a[:, 3:6] = rng.normal(0, 0.05, (40, 3))
    a[:, 6] = np.where(np.arange(40) < 20, -1.0, 1.0)
    a[20:25, :3] = 0.0                                     # waits while the fingers close
    j = jitter_actions(a, 0.003, np.random.default_rng(1), press_limit=0.003)
    off = np.cumsum(j[:, :3] - a[:, :3], axis=0)           # commanded target minus the path's
    assert np.allclose(j[:, 3:], a[:, 3:])
    assert np.allclose(off[-1], 0.0) and np.allclose(off[20:25], 0.0)
    assert off.std() > 0.002 and off[:, 2].min() >= -0.003 - 1e-12
    assert np.allclose(jitter_actions(a, 0.0, np.random.default_rng(1)), a)
    np.testing.assert_allclose(j, jitter_actions(a, 0.003, np.random.default_rng(1), press_limit=0.003))
    # grip_quiet_steps: the hand is on the path for the steps into the gripper change (20) and after it
    assert np.abs(off[16:20]).max() > 1e-4
    q = jitter_actions(a, 0.003, np.random.default_rng(1), press_limit=0.003, grip_quiet_steps=4)
    off_q = np.cumsum(q[:, :3] - a[:, :3], axis=0)
    assert np.allclose(off_q[16:25], 0.0) and np.allclose(off_q[:16], off[:16])
    assert np.allclose(off_q[-1], 0.0) and np.allclose(off_q[25:], off[25:])
    q6 = jitter_actions(a, 0.003, np.random.default_rng(1), press_limit=0.003, grip_quiet_steps=6)
    off_q6 = np.cumsum(q6[:, :3] - a[:, :3], axis=0)
    assert np.allclose(off_q6[14:27], 0.0) and np.abs(off[25:27]).max() > 1e-4 and np.allclose(off_q6[27:], off[27:])
    # steps that move less than WAIT_STEP (a mapped path's waits) are waits too
    b = a.copy()
    b[20:25, :3] = 2e-6
    off_b = np.cumsum(jitter_actions(b, 0.003, np.random.default_rng(1), press_limit=0.003)[:, :3] - b[:, :3], axis=0)
    assert np.allclose(off_b[20:25], 0.0) and np.allclose(off_b, off)
    with pytest.raises(ValueError, match="grip_quiet_steps"):
        jitter_actions(a, 0.003, np.random.default_rng(1), grip_quiet_steps=-1)
    from twinrl_twin.demogen.generate import load_demogen_config

    assert load_demogen_config().grip_quiet_steps == 3
    with pytest.raises(ValueError, match="grip_quiet_steps"):
        load_demogen_config(overrides=["grip_quiet_steps=-1"]).validate()


def test_action_noise_jitters_the_twin_demos(seeds, tiny_twins, tmp_path):
    """demogen `action_noise`: the kept demos still succeed, say their noise, and move off the
    noise-free demo of the same slot and back."""
    from twinrl_twin.demogen.generate import load_demogen_config

    plain, noisy = (one_pick_demo(seeds, tiny_twins, tmp_path / f"n{v}", f"action_noise={v}") for v in (0.0, 0.003))
    assert noisy.is_success and noisy.extra["action_noise"] == 0.003 and plain.extra["action_noise"] == 0.0
    assert plain.initial_configuration == noisy.initial_configuration
    off = np.cumsum(noisy.actions[:, :3] - plain.actions[:, :3], axis=0)
    # back on the path at the end: the same final commanded target (the summed actions may differ
    # by what a contact force stop of the placement took back, a fraction of a millimetre)
    assert 0.001 < np.abs(off).max() < 0.015 and np.abs(off[-1]).max() < 0.0005
    final = [ds.command_targets(e.observations["proprio"][-1:], e.observations["command"][-1:])[0][0]
             for e in (plain, noisy)]
    np.testing.assert_allclose(final[0], final[1], atol=1e-5)
    with pytest.raises(ValueError, match="action_noise"):
        load_demogen_config(overrides=["action_noise=0.5"]).validate()


def test_offset_approach_arrives_off_and_corrects_above_the_object():
    """execute.offset_approach: the approach poses are moved by up to the error (horizontally,
    growing from the start), the hover pose and everything after it are the path's, every step
    stays within the envelope's step, and the keyframe marks follow the retimed poses."""
    from twinrl_twin.demogen.execute import offset_approach
    from twinrl_twin.demogen.path import EEPath
    from twinrl_twin.demogen.transfer import MAX_STEP

    n_app, n_rest = 6, 6                  # approach steps of 45 mm: the expert's full pace
    P = np.concatenate([np.linspace([0.45, 0.0, 0.35], [0.55, 0.1, 0.12], n_app + 1),
                        np.linspace([0.55, 0.1, 0.12], [0.55, 0.1, 0.03], n_rest + 1)[1:]])
    Q = np.tile([1.0, 0.0, 0.0, 0.0], (len(P), 1))
    G = -np.ones(len(P) - 1)
    path = EEPath(P, Q, G, segments=[("start", 0), ("approach", n_app), ("grasp", len(P) - 1)])
    same, e0 = offset_approach(path, 0.0, np.random.default_rng(0))
    assert same is path and not e0.any()
    offsets, halved = [], 0
    for seed in range(20):
        for pace in ("split", "seed"):
            out, e = offset_approach(path, 0.04, np.random.default_rng(seed), pace=pace)
            marks = dict(out.segments)
            a = marks["approach"]
            assert 0 < np.linalg.norm(e) <= 0.04 + 1e-12 and e[2] == 0.0
            np.testing.assert_allclose(out.positions[0], P[0])
            np.testing.assert_allclose(out.positions[a:], P[n_app:])          # hover on, unchanged
            assert marks["grasp"] == len(out.positions) - 1
            assert np.linalg.norm(np.diff(out.positions, axis=0), axis=1).max() <= MAX_STEP + 1e-9
            # the pose before the hover correction is off by e: the path's pose there plus e
            before = np.linalg.norm(out.positions[:a] - (P[n_app - 1] + e), axis=1)
            assert before.min() < 1e-9, before.min()
            # the approach up to that pose: "seed" keeps the path's pace (45 mm, give or take the
            # offset's share); "split" halves every step the offset made longer than 45 mm
            k = int(np.argmin(before))
            steps = np.linalg.norm(np.diff(out.positions[:k + 1], axis=0), axis=1)
            seed_step = np.linalg.norm(P[1] - P[0])
            if pace == "seed":
                assert np.all(steps[:-1] > 0.8 * seed_step) and k <= n_app, (steps, k)
            elif k != n_app - 1:                  # the offset lengthened the (equal) steps: all halved
                assert np.all(steps <= 0.6 * seed_step) and k == 2 * (n_app - 1), (steps, k)
                halved += 1
        offsets.append(e[:2])
    assert halved >= 5, halved
    offsets = np.array(offsets)
    assert np.abs(offsets.mean(axis=0)).max() < 0.02 and offsets.std(axis=0).min() > 0.005
    np.testing.assert_allclose(offset_approach(path, 0.04, np.random.default_rng(3))[0].positions,
                               offset_approach(path, 0.04, np.random.default_rng(3))[0].positions)


def test_approach_error_aims_the_twin_demos_off_and_back(seeds, tiny_twins, tmp_path):
    """demogen `approach_error`: the kept demo still succeeds, names its offset, and its
    commanded path leaves the error-free demo's before the grasp and meets it again."""
    from twinrl_twin.demogen.generate import load_demogen_config

    plain, aimed = (one_pick_demo(seeds, tiny_twins, tmp_path / f"a{v}", f"approach_error={v}") for v in (0.0, 0.03))
    assert aimed.is_success and plain.initial_configuration == aimed.initial_configuration
    e = np.asarray(aimed.extra["approach_offset"])
    assert aimed.extra["approach_error"] == 0.03 and 0 < np.linalg.norm(e) <= 0.03
    assert "approach_offset" not in plain.extra
    # commanded positions relative to the start (pose j = sum of the first j actions)
    cp = np.vstack([np.zeros(3), np.cumsum(plain.actions[:, :3], axis=0)])
    ca = np.vstack([np.zeros(3), np.cumsum(aimed.actions[:, :3], axis=0)])
    k, ka = plain.extra["keyframes"]["approach"], aimed.extra["keyframes"]["approach"]
    # before the hover it is off the error-free path by up to |e| (distance to its nearest pose)
    off = max(np.linalg.norm(cp - p, axis=1).min() for p in ca[:ka])
    assert 0.5 * np.linalg.norm(e) <= off <= np.linalg.norm(e) + 0.045, (off, e)
    # from the hover on it is the error-free path
    n = len(cp) - k
    np.testing.assert_allclose(ca[ka:ka + n], cp[k:], atol=1e-5)
    with pytest.raises(ValueError, match="approach_error"):
        load_demogen_config(overrides=["approach_error=0.2"]).validate()
    assert load_demogen_config().pace == "split"
    with pytest.raises(ValueError, match="pace"):
        load_demogen_config(overrides=["pace=expert"]).validate()


def test_pair_replay_follows_the_recorded_targets_through_force_stops(tiny_twins, tmp_path):
    """An erase demo whose wipe had force stops (the sim held the arm at its measured pose):
    replayed in the twin by its actions alone, the twin's arm runs off (the twin has no force
    stop); steered to the recorded targets it stays with the real arm, so the pair's images
    show the same moment."""
    from twinrl_twin.demogen.replay import pair_demos, replay_actions
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode
    from twinrl_twin.twin_env import make_twin_env

    env = make_env("erase_whiteboard", render=False)
    try:
        ep = record_episode(env, 1000, "id", images=False, post_success_steps=5, action_noise=0.003)
        assert env._force_stops > 0
    finally:
        env.close()
    ds.DatasetWriter(tmp_path / "real").write_episode(ep)
    twin = tiny_twins("erase_whiteboard")
    s = pair_demos(twin, tmp_path / "real", tmp_path / "pairs", camera_overrides=SMALL, progress=False)
    paired = ds.load_episode(s["pairs"][0]["twin"], images=False)
    # the eraser stays on the board (the twin's contact model), so the twin wipes it too
    assert s["twin_successes"] == 1
    n = min(ep.length, paired.length) + 1
    gap = np.linalg.norm(ep.observations["proprio"][:n, 14:17] - paired.observations["proprio"][:n, 14:17], axis=1)
    assert gap.max() < 0.02, gap.max()
    tenv = make_twin_env(twin, render=False)
    try:
        res = replay_actions(tenv, ep.initial_configuration, ep.actions, 0, record=True)
    finally:
        tenv.close()
    by_actions = np.stack([o["proprio"][14:17] for o in res["observations"]])
    assert np.linalg.norm(ep.observations["proprio"][:n, 14:17] - by_actions[:n], axis=1).max() > 0.03


class _StoppingWorld:
    """A sim world stand-in: the target moves by each action's position delta, and at step
    ``stop_at`` the robot side holds at a measured pose 8 mm above it (a force stop the twin
    did not have). Success: the target within 2 mm of ``goal`` at the last recorded step."""

    task_obj = None

    def __init__(self, goal, stop_at: int, length: int):
        self.goal, self.stop_at, self.length = np.asarray(goal, float), stop_at, length

    def reset(self, options=None):
        self._p, self._k = np.zeros(3), 0
        return {}, {}

    @property
    def target_pose(self):
        return self._p.copy(), np.array([0.0, 0.0, 0.0, 1.0])

    def step(self, a):
        self._p = self._p + np.asarray(a[:3], float)
        self._k += 1
        if self._k == self.stop_at:
            self._p = self._p + np.array([0.0, 0.0, 0.008])
        ok = self._k == self.length and np.linalg.norm(self._p - self.goal) < 0.002
        return {}, float(ok), ok, False, {"success": ok, "configuration": {}}


def test_transfer_rate_steers_to_the_recorded_targets_through_force_stops(tmp_path, monkeypatch):
    """A twin demo whose sim replay meets a force stop: by its actions alone the arm stays off by
    the stop's offset and misses; steered to its recorded targets it gets back on the path.
    A demo without recorded commands is replayed by its actions."""
    from twinrl_twin.demogen import replay

    T = 6
    steps = np.tile([0.01, 0.0, -0.005], (T, 1))
    P = np.vstack([np.zeros(3), np.cumsum(steps, axis=0)])         # the twin's commanded path
    proprio = np.zeros((T + 1, ds.PROPRIO_DIM), np.float32)
    proprio[:, 14:17] = P - 0.001                                     # the measured TCP lags a little
    proprio[:, 20] = 1.0
    commands = np.stack([ds.command_vector(proprio[k, 14:17], proprio[k, 17:21], P[k], [0, 0, 0, 1], 1.0)
                         for k in range(T + 1)])
    actions = np.hstack([steps, np.zeros((T, 3)), np.ones((T, 1))]).astype(np.float32)
    ep = ds.EpisodeData(task="erase_whiteboard", observations={"proprio": proprio, "command": commands},
                        actions=actions, rewards=np.eye(T, dtype=np.float32)[-1], terminated=np.eye(T, dtype=bool)[-1],
                        truncated=np.zeros(T, bool), success=np.eye(T, dtype=bool)[-1],
                        source=np.full(T, ds.SOURCE_TWIN, np.uint8), episode_source=ds.SOURCE_TWIN,
                        initial_configuration={"task": "erase_whiteboard", "region": "ood", "cell_row": 0,
                                               "cell_col": 0})
    writer = ds.DatasetWriter(tmp_path / "d")
    writer.write_episode(ep)
    old = ds.EpisodeData(**{**ep.__dict__, "observations": {"proprio": proprio}, "episode_id": ""})
    writer.write_episode(old)
    monkeypatch.setitem(replay._ENVS, ("sim", "erase_whiteboard"), _StoppingWorld(P[-1], stop_at=2, length=T))
    r = replay.transfer_rate(tmp_path / "d", settle_steps=0, progress=False)
    assert r["episodes"] == 2 and r["steered"] == 1
    assert r["successes"] == 1 and r["open_loop_successes"] == 0, r
    assert r["failures"] == [str(ds.Dataset(tmp_path / "d").path(i)) for i in range(2)
                             if "command" not in ds.load_episode(ds.Dataset(tmp_path / "d").path(i)).observations]
    # without the stop both replays succeed
    monkeypatch.setitem(replay._ENVS, ("sim", "erase_whiteboard"), _StoppingWorld(P[-1], stop_at=-1, length=T))
    r = replay.transfer_rate(tmp_path / "d", settle_steps=0, progress=False)
    assert r["successes"] == r["open_loop_successes"] == 2, r


class _BoardWorld:
    """A twin stand-in for a wipe: the target moves by each action; the board is clean once the
    target has stroked along +x on the board (z < 0.03) ``strokes_needed`` steps in all."""

    task = "erase_whiteboard"

    def __init__(self, start, strokes_needed: int):
        self.start, self.strokes_needed = np.asarray(start, float), strokes_needed

    def reset(self, options=None):
        self._p, self.strokes = self.start.copy(), 0
        return {"proprio": np.zeros(ds.PROPRIO_DIM)}, {}

    @property
    def configuration(self):
        return {"object_pose": [0.0, 0.0, 0.0, 0, 0, 0, 1]}

    @property
    def target_pose(self):
        return self._p.copy(), np.array([0.0, 0.0, 0.0, 1.0])

    def step(self, a):
        new = self._p + np.asarray(a[:3], float)
        if new[2] < 0.03 and self._p[2] < 0.03 and new[0] - self._p[0] > 1e-6:
            self.strokes += 1
        self._p = new
        ok = self.strokes >= self.strokes_needed
        return {"proprio": np.zeros(ds.PROPRIO_DIM)}, float(ok), False, False, {"success": ok}


def _wipe_path():
    from twinrl_twin.demogen.path import EEPath

    P = [[0.0, 0.0, 0.2], [0.0, 0.0, 0.1], [0.0, 0.0, 0.02]]              # down to the board
    P += [[0.025 * k, 0.0, 0.02] for k in range(1, 5)]                    # the strokes, +x
    P += [[0.1, 0.0, 0.06], [0.1, 0.0, 0.1]]                              # lift
    Q = np.tile([0.0, 0.0, 0.0, 1.0], (len(P), 1))
    return EEPath(P, Q, np.ones(len(P) - 1), segments=[("start", 0), ("wipe_start", 2), ("wipe_end", 6),
                                                        ("end", 8)])


def test_split_wipe_goes_back_along_the_board_and_strokes_again():
    from twinrl_twin.demogen.execute import split_wipe
    from twinrl_twin.demogen.path import EEPath
    from twinrl_twin.demogen.transfer import MAX_STEP

    path = _wipe_path()
    head, again, tail = split_wipe(path)
    np.testing.assert_allclose(head.positions, path.positions[:7])
    np.testing.assert_allclose(tail.positions, path.positions[6:])
    assert dict(tail.segments) == {"end": 2}
    # again: from the wipe's end straight back to its start on the board, then the strokes
    assert np.allclose(again.positions[0], path.positions[6]) and np.allclose(again.positions[-1], path.positions[6])
    assert np.allclose(again.positions[:, 2], 0.02)
    k = dict(again.segments)["wipe_start"]
    np.testing.assert_allclose(again.positions[k:], path.positions[2:7])
    assert again.max_step()[0] <= MAX_STEP + 1e-9 and k == 3         # 0.1 m back in 3 steps
    no_wipe = EEPath(path.positions, path.quaternions, path.gripper, segments=[("start", 0), ("end", 8)])
    assert split_wipe(no_wipe) is None


def test_an_unclean_wipe_goes_over_its_strokes_again():
    """execute_path with wipe_passes: a wipe that left the twin's board unclean strokes again
    (here two passes are needed), then the rest of the path; keyframes after the wipe move by
    the added steps. With one pass the candidate is rejected as task_failed."""
    from twinrl_twin.demogen.execute import execute_path
    from twinrl_twin.demogen.path import REJECT_TASK_FAILED, CandidateRejected

    path = _wipe_path()
    world = _BoardWorld(path.positions[0], strokes_needed=8)
    ep = execute_path(world, path, world.configuration, wipe_passes=3, max_extra_steps=0)
    assert ep.extra["wipe_passes"] == 2 and world.strokes == 8
    assert ep.length == len(path) + 3 + 4                                # back 3 steps, 4 strokes again
    assert ep.extra["keyframes"] == {"start": 0, "wipe_start": 2, "wipe_end": 6, "end": 15}
    cmd = np.cumsum(ep.actions[:, :3], axis=0) + path.positions[0]
    np.testing.assert_allclose(cmd[-1], path.positions[-1], atol=1e-6)  # the lift after the second pass
    with pytest.raises(CandidateRejected) as exc:
        execute_path(world, path, world.configuration, wipe_passes=1, max_extra_steps=0)
    assert exc.value.rejection.reason == REJECT_TASK_FAILED
    # a wipe that cleans the board at once is not repeated
    clean = _BoardWorld(path.positions[0], strokes_needed=4)
    ep = execute_path(clean, path, clean.configuration, wipe_passes=3, max_extra_steps=0)
    assert ep.extra["wipe_passes"] == 1 and ep.length == len(path)
    with pytest.raises(ValueError, match="wipe_passes"):
        execute_path(clean, path, clean.configuration, wipe_passes=0)


def test_a_jittered_wipe_keeps_the_demos_pressing_height():
    """pressing_steps marks the steps whose target lies in the wipe (wipe_start through
    wipe_end; a second pass's piece to its end); with action_noise, execute_path jitters those
    targets sideways only: a deeper target is a force stop on a stiffer board than the twin's,
    a higher one lifts the eraser off while the twin's contact tolerance still counts it."""
    from twinrl_twin.demogen.execute import execute_path, jitter_actions, pressing_steps, split_wipe

    path = _wipe_path()
    mask = pressing_steps(path)
    assert mask.tolist() == [False, True, True, True, True, True, False, False]
    _, again, _ = split_wipe(path)
    assert pressing_steps(again).tolist() == [False, False, True, True, True, True, True]
    assert not pressing_steps(split_wipe(path)[2]).any()
    a = path.actions()
    with pytest.raises(ValueError, match="level_steps"):
        jitter_actions(a, 0.003, np.random.default_rng(0), level_steps=mask[:-1])
    world = _BoardWorld(path.positions[0], strokes_needed=4)
    heights, sideways = [], []
    for seed in range(20):
        ep = execute_path(world, path, world.configuration, max_extra_steps=0, action_noise=0.003,
                          rng=np.random.default_rng(seed))
        cmd = np.cumsum(ep.actions[:, :3], axis=0) + path.positions[0]      # commanded targets
        heights.append(cmd[1:6, 2])
        sideways.append(cmd[1:6, :2] - path.positions[2:7, :2])
    np.testing.assert_allclose(np.array(heights), 0.02, atol=1e-6)          # on the board, as the demo (float32)
    assert np.abs(np.array(sideways)).max() > 1e-3                          # still jittered in the plane
    # off the wipe the target still moves up and down (the approach above the board)
    j = jitter_actions(a, 0.003, np.random.default_rng(3), press_limit=0.003)
    assert abs(np.cumsum(j[:, 2] - a[:, 2])[0]) > 0
