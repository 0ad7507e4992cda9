"""Inference core without ROS: synchroniser, message decoding, checks, NaN guard, hot reload."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from policy_fixtures import tiny_model_config
from twinrl_policy.checkpoint import file_sha256, save_checkpoint
from twinrl_policy.inference import (ErrorThrottle, NonFiniteActionError, ObservationError, PolicyRunner,
                                     ReloadError, decode_image, proprio_from_joint_state)
from twinrl_policy.model import VisuomotorPolicy
from twinrl_policy.sync import ApproximateTimeSync


# ----------------------------------------------------------------------------- synchroniser
def test_sync_matches_within_slop_and_uses_each_message_once():
    out = []
    s = ApproximateTimeSync(["a", "b", "c"], slop=0.02, callback=out.append)
    assert s.add("a", 1.000, "a1") is None
    assert s.add("b", 1.010, "b1") is None
    m = s.add("c", 1.015, "c1")
    assert m == {"a": (1.000, "a1"), "b": (1.010, "b1"), "c": (1.015, "c1")} and out == [m]
    # c arrives late and far off: no set; then matching partners arrive
    assert s.add("a", 1.100, "a2") is None and s.add("b", 1.200, "b2") is None
    assert s.add("c", 1.205, "c2") is None          # a2 is 0.105 s away
    assert s.add("a", 1.195, "a3")["a"] == (1.195, "a3")
    assert s.emitted == 2
    assert s.add("b", 1.150, "late") is None and s.dropped == 1  # older than the last set


def test_sync_picks_the_closest_partner_and_bounded_queues():
    s = ApproximateTimeSync(["img", "joints"], slop=0.01, queue_size=3)
    for i in range(10):
        s.add("joints", 2.0 + i * 0.002, f"j{i}")
    assert len(s.queues["joints"]) == 3
    m = s.add("img", 2.0151, "img0")
    assert m["joints"] == (pytest.approx(2.016), "j8")
    with pytest.raises(KeyError, match="unknown stream 'depth'"):
        s.add("depth", 1.0, None)
    with pytest.raises(ValueError):
        ApproximateTimeSync(["a", "a"], 0.1)


# ----------------------------------------------------------------------------- decoding
def test_decode_image_checks_size_encoding_and_padding():
    img = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(decode_image("wrist", 4, 5, "rgb8", 15, img.tobytes(), (4, 5)), img)
    padded = np.concatenate([img.reshape(4, 15), np.zeros((4, 3), np.uint8)], 1)  # step 18
    assert np.array_equal(decode_image("wrist", 4, 5, "rgb8", 18, padded.tobytes(), (4, 5)), img)
    assert np.array_equal(decode_image("wrist", 4, 5, "bgr8", 15, img[:, :, ::-1].tobytes(), (4, 5)), img)
    with pytest.raises(ObservationError, match=r"wrist: image is 4x5 \(HxW\), the policy expects 8x8"):
        decode_image("wrist", 4, 5, "rgb8", 15, img.tobytes(), (8, 8))
    with pytest.raises(ObservationError, match=r"third_person: unsupported encoding 'mono8'"):
        decode_image("third_person", 4, 5, "mono8", 5, bytes(20), (4, 5))
    with pytest.raises(ObservationError, match="do not hold"):
        decode_image("wrist", 4, 5, "rgb8", 15, img.tobytes()[:-1], (4, 5))


def test_proprio_from_joint_state_orders_by_name_and_sums_fingers():
    names = ["fr3_finger_joint1"] + [f"fr3_joint{i}" for i in range(7, 0, -1)] + ["fr3_finger_joint2"]
    pos = [0.02] + [float(i) for i in range(7, 0, -1)] + [0.015]
    vel = [0.0] + [float(-i) for i in range(7, 0, -1)] + [0.0]
    p = proprio_from_joint_state(names, pos, vel, [0.5, 0.1, 0.3], [1, 0, 0, 0])
    assert p.shape == (22,) and p.dtype == np.float32
    assert np.allclose(p[:7], range(1, 8)) and np.allclose(p[7:14], [-i for i in range(1, 8)])
    assert np.allclose(p[14:21], [0.5, 0.1, 0.3, 1, 0, 0, 0]) and p[21] == pytest.approx(0.035)
    assert proprio_from_joint_state([], [0.0] * 7, [], [0, 0, 0], [0, 0, 0, 1], 0.08)[21] == pytest.approx(0.08)
    with pytest.raises(ObservationError, match="need 7 arm joints"):
        proprio_from_joint_state(["a"], [0.0], [0.0], [0, 0, 0], [0, 0, 0, 1])


def test_error_throttle():
    t = ErrorThrottle(2.0)
    assert t("k", 0.0) == 0 and t("k", 1.0) is None and t("k", 1.5) is None and t("other", 1.5) == 0
    assert t("k", 2.1) == 2


# ----------------------------------------------------------------------------- runner
def _ckpt(path, seed, version, task_list=("pick_and_place",)):
    torch.manual_seed(seed)
    policy = VisuomotorPolicy(tiny_model_config(tasks=list(task_list)))
    return save_checkpoint(path, policy, version=version)


def _obs(seed=0):
    g = np.random.default_rng(seed)
    return (g.integers(0, 255, (32, 32, 3), dtype=np.uint8), g.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            g.normal(size=22).astype(np.float32))


def test_runner_acts_within_limits_and_rejects_bad_observations(tmp_path):
    _ckpt(tmp_path / "p.ckpt", 0, 1)
    r = PolicyRunner(tmp_path / "p.ckpt")
    assert r.task == "pick_and_place" and r.version == 1
    res = r.act(*_obs())
    assert res.action.shape == (7,) and np.all(np.isfinite(res.action)) and res.latency_ms > 0
    assert np.all(np.abs(res.action) <= np.asarray([0.05] * 3 + [0.25] * 3 + [1.0]))
    assert np.allclose(r.act(*_obs()).action, res.action)  # deterministic
    tp, wr, p = _obs()
    with pytest.raises(ObservationError, match=r"third_person: image shape \(16, 16, 3\)"):
        r.act(wr, wr, p)
    with pytest.raises(ObservationError, match="wrist: expected uint8"):
        r.act(tp, wr.astype(np.float32), p)
    bad = p.copy()
    bad[3] = np.nan
    with pytest.raises(ObservationError, match=r"proprio: non-finite values at \[3\]"):
        r.act(tp, wr, bad)
    with pytest.raises(ObservationError, match="unknown task 'erase_whiteboard'"):
        r.act(tp, wr, p, task="erase_whiteboard")
    stochastic = PolicyRunner(tmp_path / "p.ckpt", deterministic=False, seed=1)
    assert not np.allclose(stochastic.act(*_obs()).action, stochastic.act(*_obs()).action)


def test_runner_never_returns_a_non_finite_action(tmp_path):
    _ckpt(tmp_path / "p.ckpt", 0, 1)
    r = PolicyRunner(tmp_path / "p.ckpt")
    with torch.no_grad():
        r.policy.mean_head.bias[2] = float("nan")  # weights corrupted in memory
    with pytest.raises(NonFiniteActionError, match="non-finite action"):
        r.act(*_obs())


def test_reload_rules_keep_the_old_weights_on_failure(tmp_path):
    _ckpt(tmp_path / "v1.ckpt", 0, 1)
    r = PolicyRunner(tmp_path / "v1.ckpt")
    a1 = r.act(*_obs()).action
    sha2 = _ckpt(tmp_path / "v2.ckpt", 1, 2)
    with pytest.raises(ReloadError, match="sha256 .* does not match the announced"):
        r.reload(tmp_path / "v2.ckpt", 2, "0" * 64)
    with pytest.raises(ReloadError, match="not newer than the current version 1"):
        r.reload(tmp_path / "v2.ckpt", 1, sha2)
    assert r.version == 1 and np.allclose(r.act(*_obs()).action, a1)
    r.reload(f"file://{tmp_path / 'v2.ckpt'}", 2, sha2)
    a2 = r.act(*_obs()).action
    assert r.version == 2 and not np.allclose(a1, a2)
    # corrupt v3 announced with the digest of the corrupt file: the internal checksum catches it
    _ckpt(tmp_path / "v3.ckpt", 2, 3)
    data = bytearray((tmp_path / "v3.ckpt").read_bytes())
    data[-50] ^= 0x55
    (tmp_path / "v3.ckpt").write_bytes(bytes(data))
    with pytest.raises(ReloadError, match=r"v3.ckpt: checksum mismatch.*keeping version 2"):
        r.reload(tmp_path / "v3.ckpt", 3, file_sha256(tmp_path / "v3.ckpt"))
    sha4 = _ckpt(tmp_path / "v4.ckpt", 3, 4, task_list=("insert_hexagon",))
    with pytest.raises(ReloadError, match="does not know task 'pick_and_place'"):
        r.reload(tmp_path / "v4.ckpt", 4, sha4)
    with pytest.raises(ReloadError, match="cannot read"):
        r.reload(tmp_path / "missing.ckpt", 5, "ab" * 32)
    assert r.version == 2 and np.allclose(r.act(*_obs()).action, a2)


def test_runner_takes_the_commanded_target_when_the_policy_needs_it(tmp_path):
    path = tmp_path / "cmd.ckpt"
    save_checkpoint(path, VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place"], command_input=True)))
    runner = PolicyRunner(path)
    assert runner.needs_command
    tp, wr = np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    proprio = np.zeros(22, np.float32)
    proprio[17:21] = [1, 0, 0, 0]
    a = runner.act(tp, wr, proprio, command=[0.02, 0, -0.01, 0, 0, 0, -1]).action
    assert a.shape == (7,) and np.all(np.isfinite(a))
    with pytest.raises(ObservationError, match="command: this policy takes the commanded target"):
        runner.act(tp, wr, proprio)
    with pytest.raises(ObservationError, match=r"command: non-finite values at \[2\]"):
        runner.act(tp, wr, proprio, command=[0, 0, np.nan, 0, 0, 0, 1])
    with pytest.raises(ObservationError, match="command: expected 7 values, got 3"):
        runner.act(tp, wr, proprio, command=[0, 0, 0])
    save_checkpoint(tmp_path / "plain.ckpt", VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place"])))
    assert not PolicyRunner(tmp_path / "plain.ckpt").needs_command


def test_chunking_runner_ensembles_the_predictions_for_each_step(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c.ckpt", VisuomotorPolicy(tiny_model_config(action_chunk=3, tasks=["pick_and_place"])), version=1)
    r = PolicyRunner(tmp_path / "c.ckpt")
    chunks = [r.policy.act_chunk(_batch_of(r, *_obs(i)))[0].numpy().astype(np.float64) for i in range(4)]
    got = [r.act(*_obs(i), step=i).action for i in range(4)]
    assert np.allclose(got[0], chunks[0][0])                                   # only one plan yet
    assert np.allclose(got[1], (chunks[0][1] + chunks[1][0]) / 2)
    assert np.allclose(got[2], (chunks[0][2] + chunks[1][1] + chunks[2][0]) / 3)
    assert np.allclose(got[3], (chunks[1][2] + chunks[2][1] + chunks[3][0]) / 3)   # chunk 0 has run out
    # a new episode (step back to 0) or reset() forgets the old plans
    assert np.allclose(r.act(*_obs(1), step=0).action, chunks[1][0])
    r.reset()
    assert np.allclose(r.act(*_obs(2)).action, chunks[2][0])
    # the decay weighs a plan made k steps ago by exp(-decay k)
    r.checkpoint.model_config.chunk_ensemble_decay = 1.0
    r.reset()
    r.act(*_obs(0))
    w = np.exp(-1.0)
    assert np.allclose(r.act(*_obs(1)).action, (chunks[1][0] + w * chunks[0][1]) / (1 + w))
    # a corrupted network never gets a NaN into the plans or out of the runner
    with torch.no_grad():
        r.policy.mean_head.bias[7 + 2] = float("nan")                            # the second step only
    with pytest.raises(NonFiniteActionError, match="non-finite action chunk"):
        r.act(*_obs(3))


def _batch_of(runner, tp, wr, p):
    from twinrl_policy.model import images_to_tensor
    return {"third_person": images_to_tensor(tp), "wrist": images_to_tensor(wr),
            "proprio": torch.from_numpy(p).unsqueeze(0), "task": torch.tensor([0])}
