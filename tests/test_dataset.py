"""Dataset format: round trip, filters, transitions, crash safety, corrupt files, versions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest

from twinrl_bringup import dataset as dsm
from twinrl_bringup.dataset import (
    Dataset, DatasetError, DatasetWriter, EpisodeData, load_episode, read_metadata,
)


def make_episode(T=5, task="pick_and_place", region="id", success=True, source=dsm.SOURCE_DEMO,
                 images=True, seed=0, episode_source=None, size=(32, 16)):
    rng = np.random.default_rng(seed)
    obs = {"proprio": rng.normal(size=(T + 1, dsm.PROPRIO_DIM)).astype(np.float32)}
    if images:
        obs["third_person"] = rng.integers(0, 255, size=(T + 1, size[0], size[0], 3), dtype=np.uint8)
        obs["wrist"] = rng.integers(0, 255, size=(T + 1, size[1], size[1], 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, size=(T, 7)).astype(np.float32)
    rewards = np.zeros(T, np.float32)
    succ = np.zeros(T, bool)
    term = np.zeros(T, bool)
    if success:
        rewards[-1] = 1.0
        succ[-1] = True
        term[-1] = True
    src = np.full(T, source, np.uint8)
    inter = np.zeros(T, bool)
    if source == dsm.SOURCE_INTERVENTION:
        inter[:] = True
    return EpisodeData(
        task=task, observations=obs, actions=actions, rewards=rewards, terminated=term,
        truncated=~term & (np.arange(T) == T - 1), success=succ, source=src, intervention=inter,
        episode_source=episode_source if episode_source is not None else source,
        initial_configuration={"task": task, "object_pose": [0.5, 0.0, 0.02, 0, 0, 0, 1],
                               "target_pose": [0.5, 0.2, 0.02, 0, 0, 0, 1], "cell_row": 1, "cell_col": 2,
                               "region": region, "seed": seed},
        policy_version="v3",
    )


def test_round_trip(tmp_path):
    ep = make_episode(T=6)
    path = DatasetWriter(tmp_path).write_episode(ep)
    assert path.parent == tmp_path and path.suffix == ".npz" and ep.episode_id
    back = load_episode(path)
    for k in ("proprio", "third_person", "wrist"):
        np.testing.assert_array_equal(back.observations[k], ep.observations[k])
        assert back.observations[k].dtype == ep.observations[k].dtype
    np.testing.assert_array_equal(back.actions, ep.actions)
    np.testing.assert_array_equal(back.rewards, ep.rewards)
    np.testing.assert_array_equal(back.source, ep.source)
    np.testing.assert_array_equal(back.terminated, ep.terminated)
    np.testing.assert_array_equal(back.truncated, ep.truncated)
    assert back.task == "pick_and_place" and back.policy_version == "v3"
    assert back.initial_configuration["cell_col"] == 2 and back.region == "id"
    assert back.episode_id == ep.episode_id and back.episode_source == dsm.SOURCE_DEMO
    meta = read_metadata(path)
    assert meta["format_version"] == dsm.FORMAT_VERSION
    assert meta["length"] == 6 and meta["success"] is True and meta["episode_return"] == 1.0
    manifest = json.loads((tmp_path / dsm.MANIFEST).read_text())
    assert manifest["num_episodes"] == 1 and manifest["episodes"][0]["file"] == path.name
    # plain numpy can read the file too
    with np.load(path) as npz:
        assert npz["obs.wrist"].shape == (7, 16, 16, 3)


def test_filters_and_transitions(tmp_path):
    w = DatasetWriter(tmp_path)
    w.write_episode(make_episode(T=4, region="id", success=True, source=dsm.SOURCE_DEMO, seed=1))
    w.write_episode(make_episode(T=3, region="ood", success=False, source=dsm.SOURCE_TWIN, seed=2))
    mixed = make_episode(T=5, region="ood", success=True, source=dsm.SOURCE_REAL, seed=3)
    mixed.source[2:4] = dsm.SOURCE_INTERVENTION
    mixed.intervention[2:4] = True
    w.write_episode(mixed)
    w.write_episode(make_episode(T=2, task="insert_hexagon", region="id", success=False, seed=4))

    ds = Dataset(tmp_path)
    assert len(ds) == 4 and ds.num_steps == 14
    assert len(ds.filter(task="pick_and_place")) == 3
    assert len(ds.filter(region="ood")) == 2
    assert len(ds.filter(success=True)) == 2
    assert len(ds.filter(source="twin")) == 1
    assert len(ds.filter(source=dsm.SOURCE_INTERVENTION)) == 1  # matched by its steps
    assert len(ds.filter(task="pick_and_place", region="ood", success=True)) == 1
    with pytest.raises(ValueError, match="region"):
        ds.filter(region="elsewhere")
    with pytest.raises(ValueError, match="source"):
        ds.filter(source="simulation")

    trs = list(ds.filter(region="ood", success=True).transitions())
    assert len(trs) == 1
    tr = trs[0]
    np.testing.assert_array_equal(tr["next_obs"]["proprio"][:-1], tr["obs"]["proprio"][1:])
    np.testing.assert_array_equal(tr["obs"]["third_person"], mixed.observations["third_person"][:5])
    np.testing.assert_array_equal(tr["next_obs"]["wrist"][-1], mixed.observations["wrist"][5])
    assert tr["done"].tolist() == [False] * 4 + [True]

    only_int = list(ds.transitions(source="intervention", images=False))
    assert len(only_int) == 1 and len(only_int[0]["action"]) == 2
    np.testing.assert_array_equal(only_int[0]["action"], mixed.actions[2:4])
    np.testing.assert_array_equal(only_int[0]["next_obs"]["proprio"], mixed.observations["proprio"][3:5])
    assert "third_person" not in only_int[0]["obs"]

    arrays = ds.to_arrays()
    assert arrays["action"].shape == (14, 7) and arrays["proprio"].shape == (14, dsm.PROPRIO_DIM)
    assert arrays["reward"].sum() == pytest.approx(2.0)
    assert int(arrays["intervention"].sum()) == 2
    assert set(np.unique(arrays["episode_index"])) == {0, 1, 2, 3}
    assert Dataset(tmp_path).filter(task="nothing").to_arrays()["action"].shape == (0, 7)


def test_low_dim_episode_without_images(tmp_path):
    DatasetWriter(tmp_path).write_episode(make_episode(T=3, images=False))
    ep = Dataset(tmp_path)[0]
    assert set(ep.observations) == {"proprio"} and ep.length == 3


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e.actions.__setitem__((1, 2), np.nan), r"actions: non-finite value nan at index \(1, 2\)"),
    (lambda e: e.observations.__setitem__("wrist", e.observations["wrist"].astype(np.float32)),
     "observations\\['wrist'\\]: images must be uint8"),
    (lambda e: e.observations.__setitem__("third_person", e.observations["third_person"][:, :, :, :1]),
     "observations\\['third_person'\\]: expected shape"),
    (lambda e: e.observations.__setitem__("proprio", e.observations["proprio"][:-1]),
     "observations\\['proprio'\\]: expected 6 entries"),
    (lambda e: e.observations.__setitem__("command", np.zeros((6, 6), np.float32)),
     "observations\\['command'\\]: expected shape \\(N, 7\\)"),
    (lambda e: e.observations.__setitem__("command", np.full((6, 7), np.inf, np.float32)),
     "observations\\['command'\\]: non-finite value inf"),
    (lambda e: setattr(e, "rewards", e.rewards[:2]), "rewards: expected 5 entries"),
    (lambda e: e.actions.__setitem__((0, 6), 3.0), "gripper command 3.0 at step 0"),
    (lambda e: e.source.__setitem__(4, 9), "source: unknown source id 9 at step 4"),
    (lambda e: setattr(e, "episode_source", "sim"), "episode_source: unknown source 'sim'"),
    (lambda e: e.initial_configuration.__setitem__("region", "far"), "region: expected 'id' or 'ood'"),
])
def test_bad_episode_rejected_and_nothing_written(tmp_path, mutate, match):
    ep = make_episode(T=5)
    mutate(ep)
    w = DatasetWriter(tmp_path)
    with pytest.raises(ValueError, match=match):
        w.write_episode(ep)
    assert list(tmp_path.glob("*.npz")) == []
    w.write_episode(make_episode(T=2))
    assert len(Dataset(tmp_path)) == 1


def test_truncated_and_corrupt_files_are_named_and_skipped(tmp_path):
    w = DatasetWriter(tmp_path)
    good = w.write_episode(make_episode(T=4, seed=1))
    trunc = w.write_episode(make_episode(T=4, seed=2))
    flipped = w.write_episode(make_episode(T=4, seed=3))
    garbage = tmp_path / "notes.npz"
    garbage.write_bytes(b"this is not an episode")

    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    # corrupt the compressed payload of the image array, leaving the zip directory intact
    with zipfile.ZipFile(flipped) as zf:
        info = zf.getinfo("obs.third_person.npy")
    raw = bytearray(flipped.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    for i in range(start, start + 64):
        raw[i] ^= 0xFF
    flipped.write_bytes(bytes(raw))

    with pytest.raises(DatasetError) as exc:
        load_episode(trunc)
    assert str(trunc) in str(exc.value) and "truncated" in str(exc.value)
    with pytest.raises(DatasetError, match="notes.npz"):
        read_metadata(garbage)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Dataset(tmp_path)
    messages = " ".join(str(c.message) for c in caught)
    assert trunc.name in messages and garbage.name in messages
    assert {os.path.basename(p) for p, _ in ds.skipped} == {trunc.name, garbage.name}
    assert {e["file"] for e in ds.entries} == {good.name, flipped.name}

    # the payload corruption is only visible when the data is read: named, skipped, not used
    with pytest.raises(DatasetError, match=flipped.name):
        load_episode(flipped)
    with pytest.warns(RuntimeWarning, match=flipped.name):
        loaded = list(ds.episodes())
    assert [e.episode_id for e in loaded] == [load_episode(good).episode_id]
    with pytest.warns(RuntimeWarning) as rec:     # the index still skips the truncated and foreign files
        again = Dataset(tmp_path)
    assert len(rec) == 2 and trunc.name in str(rec[0].message) + str(rec[1].message)
    assert [os.path.basename(p) for p, _ in again.verify()] == [flipped.name]


def test_unknown_major_version_refused(tmp_path):
    path = DatasetWriter(tmp_path).write_episode(make_episode(T=2))
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["format_version"] = "2.0"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(path, **arrays)
    with pytest.raises(DatasetError, match=r"unsupported format_version 2.0 .*supports 1.x"):
        load_episode(path)
    with pytest.warns(RuntimeWarning, match="unsupported format_version"):
        assert len(Dataset(tmp_path)) == 0


def test_manifest_is_rebuilt_from_files(tmp_path):
    w = DatasetWriter(tmp_path)
    a = w.write_episode(make_episode(T=2, seed=1))
    w.write_episode(make_episode(T=3, seed=2))
    (tmp_path / dsm.MANIFEST).write_text("{ not json")
    assert len(Dataset(tmp_path)) == 2
    a.unlink()  # an episode removed by hand disappears from the index
    ds = Dataset(tmp_path)
    assert len(ds) == 1 and ds.entries[0]["length"] == 3
    assert w.update_manifest() == []
    assert json.loads((tmp_path / dsm.MANIFEST).read_text())["num_episodes"] == 1


CRASH_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_dataset import make_episode
    from twinrl_bringup.dataset import DatasetWriter
    w = DatasetWriter(sys.argv[1])
    w.write_episode(make_episode(T=3, seed=1, size=(16, 8)))
    print("first written", flush=True)
    # a big, slowly compressed episode: killed while its temp file is being written
    w.write_episode(make_episode(T=60, seed=2, size=(512, 256)))
    print("second written", flush=True)
""")


@pytest.mark.timeout(60)
def test_crash_mid_write_leaves_only_complete_episodes(tmp_path):
    out = tmp_path / "ds"
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER.format(tests=os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first written"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(out.glob(".*.tmp")):
            time.sleep(0.005)
        assert list(out.glob(".*.tmp")), "the second episode never started writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ds = Dataset(out)
    assert len(ds) == 1 and ds.skipped == [] and ds[0].length == 3
    # the next writer removes the dead writer's temp file and appends normally
    DatasetWriter(out).write_episode(make_episode(T=2, seed=5))
    assert list(out.glob(".*.tmp")) == []
    assert sorted(e["length"] for e in Dataset(out).entries) == [2, 3]


def test_recorded_commands_round_trip_and_win_over_the_rebuild(tmp_path):
    """Episodes keep the commanded target of every step (observations["command"]); training
    reads those, not the path rebuilt from the actions, which is wrong once the robot side moved
    its target itself (a force stop holds at the measured pose)."""
    from twinrl_bringup.transforms import quat_from_euler, quat_multiply

    rng = np.random.default_rng(3)
    T = 6
    ep = make_episode(T=T, images=False)
    ep.actions[:, :6] *= 0.01
    ep.observations["proprio"][:, 17:21] = [quat_multiply(quat_from_euler("xyz", rng.normal(0, 0.2, 3)),
                                                          [1.0, 0, 0, 0]) for _ in range(T + 1)]
    rebuilt = dsm.episode_commands(ep.observations["proprio"], ep.actions)
    held = rebuilt.copy()
    held[3:, :3] = 0.0                               # a hold at step 3: target = measured TCP
    ep.observations["command"] = held
    back = load_episode(DatasetWriter(tmp_path).write_episode(ep), images=False)
    cmd, recorded = dsm.commands_of(back)
    assert recorded and cmd.dtype == np.float32
    np.testing.assert_array_equal(cmd, held)
    assert np.abs(cmd - rebuilt).max() > 1e-3
    del back.observations["command"]
    cmd, recorded = dsm.commands_of(back)
    assert not recorded
    np.testing.assert_allclose(cmd, rebuilt, atol=1e-6)
    # the target poses the commands stand for: command_vector's inverse
    P, Q = dsm.command_targets(ep.observations["proprio"], held)
    for k in range(T + 1):
        pr = ep.observations["proprio"][k]
        np.testing.assert_allclose(dsm.command_vector(pr[14:17], pr[17:21], P[k], Q[k], held[k, 6]), held[k],
                                   atol=1e-5)
    with pytest.raises(ValueError, match=r"ep-7: observations\['command'\]: expected \(7, 7\)"):
        dsm.recorded_commands({"command": held[:-1]}, T, "ep-7")


def test_observation_arrays_stack_what_every_observation_has():
    obs = [{"proprio": np.full(22, k, np.float32), "command": np.full(7, k, np.float64),
            "wrist": np.zeros((4, 4, 3), np.uint8)} for k in range(3)]
    out = dsm.observation_arrays(obs)
    assert set(out) == {"proprio", "command", "wrist"}
    assert out["command"].dtype == np.float32 and out["command"].shape == (3, 7) and out["command"][2, 0] == 2
    assert set(dsm.observation_arrays(obs, images=False)) == {"proprio", "command"}
    del obs[1]["command"]
    assert set(dsm.observation_arrays(obs)) == {"proprio", "wrist"}
