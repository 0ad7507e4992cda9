"""Policy checkpoints: round trip and clear errors on every kind of damage."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from policy_fixtures import tiny_model_config
from twinrl_bringup.config import to_dict
from twinrl_policy.checkpoint import (MAGIC, CheckpointError, file_sha256, load_checkpoint, load_policy,
                                      save_checkpoint, write_raw_checkpoint)
from twinrl_policy.model import VisuomotorPolicy, images_to_tensor
from twinrl_policy.normalization import NormStats


@pytest.fixture
def policy():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    norm = NormStats.from_data(rng.normal(size=(50, 22)), rng.uniform(-0.02, 0.02, (50, 7)))
    return VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place", "erase_whiteboard"]), norm)


def _payload(policy, **changes):
    p = {"format_version": 1, "version": 4, "model_config": to_dict(policy.cfg), "norm_stats": policy.norm.to_dict(),
         "tasks": list(policy.cfg.tasks), "metadata": {}, "state_dict": dict(policy.state_dict())}
    p.update(changes)
    return {k: v for k, v in p.items() if v is not None}


def test_round_trip_keeps_weights_norm_config_and_version(policy, tmp_path):
    path = tmp_path / "p.ckpt"
    sha = save_checkpoint(path, policy, version=7, metadata={"stage": "sft"})
    assert sha == file_sha256(path) and path.read_bytes().startswith(MAGIC)
    loaded, ckpt = load_policy(path)
    assert ckpt.version == 7 and ckpt.tasks == ["pick_and_place", "erase_whiteboard"]
    assert ckpt.metadata["stage"] == "sft" and ckpt.model_config == policy.cfg
    assert np.allclose(ckpt.norm_stats.action_high, policy.norm.action_high)
    b = {"third_person": images_to_tensor(np.full((1, 32, 32, 3), 90, np.uint8)),
         "wrist": images_to_tensor(np.full((1, 16, 16, 3), 30, np.uint8)),
         "proprio": torch.ones(1, 22), "task": torch.tensor([1])}
    policy.eval()
    assert torch.allclose(loaded.act(b), policy.act(b))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


@pytest.mark.parametrize("keep", [0, 5, 16, 40, -1, -300])
def test_truncated_file_is_a_clear_error(policy, tmp_path, keep):
    path = tmp_path / "p.ckpt"
    save_checkpoint(path, policy)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_flipped_bytes_fail_the_checksum(policy, tmp_path):
    path = tmp_path / "p.ckpt"
    save_checkpoint(path, policy)
    data = bytearray(path.read_bytes())
    for pos in (len(data) // 2, len(data) - 10):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"checksum mismatch") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value)


def test_corrupt_header_and_foreign_files(policy, tmp_path):
    path = tmp_path / "p.ckpt"
    save_checkpoint(path, policy)
    data = bytearray(path.read_bytes())
    data[len(MAGIC) + 6] = ord("#")  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_checkpoint(path)
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    path.write_bytes(buf.getvalue())  # a plain torch file
    with pytest.raises(CheckpointError, match="not a TwinRL policy checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_wrong_keys_are_named(policy, tmp_path):
    path = tmp_path / "p.ckpt"
    write_raw_checkpoint(path, _payload(policy, norm_stats=None, extra_stuff=1))
    with pytest.raises(CheckpointError, match=r"wrong keys: missing \['norm_stats'\], unexpected \['extra_stuff'\]"):
        load_checkpoint(path)
    sd = dict(policy.state_dict())
    sd["mean_head.wieght"] = sd.pop("mean_head.weight")
    write_raw_checkpoint(path, _payload(policy, state_dict=sd))
    with pytest.raises(CheckpointError, match=r"missing \['mean_head.weight'\], unexpected \['mean_head.wieght'\]"):
        load_checkpoint(path)
    sd = dict(policy.state_dict())
    sd["mean_head.bias"] = torch.zeros(3)
    write_raw_checkpoint(path, _payload(policy, state_dict=sd))
    with pytest.raises(CheckpointError, match=r"state_dict\['mean_head.bias'\]: shape \(3,\)"):
        load_checkpoint(path)
    cfg = to_dict(policy.cfg)
    cfg["trunk_hiden"] = cfg.pop("trunk_hidden")
    write_raw_checkpoint(path, _payload(policy, model_config=cfg))
    with pytest.raises(CheckpointError, match=r"invalid model_config: model_config.trunk_hiden: unknown key"):
        load_checkpoint(path)
    write_raw_checkpoint(path, _payload(policy, norm_stats={**policy.norm.to_dict(), "action_low": [0.0] * 3}))
    with pytest.raises(CheckpointError, match=r"norm_stats.action_low: expected 7 values"):
        load_checkpoint(path)


def test_nan_weights_are_rejected(policy, tmp_path):
    path = tmp_path / "p.ckpt"
    sd = {k: v.clone() for k, v in policy.state_dict().items()}
    sd["trunk.0.weight"][0, 0] = float("nan")
    write_raw_checkpoint(path, _payload(policy, state_dict=sd))
    with pytest.raises(CheckpointError, match=r"state_dict\['trunk.0.weight'\]: non-finite weights") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with torch.no_grad():
        policy.mean_head.bias[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite weights: mean_head.bias"):
        save_checkpoint(tmp_path / "q.ckpt", policy)
    assert not (tmp_path / "q.ckpt").exists()


def test_checkpoint_from_before_the_command_input_loads_without_it(policy, tmp_path):
    """Checkpoints written before model.command_input existed were trained without the input."""
    assert policy.cfg.command_input is False
    old_cfg = {k: v for k, v in to_dict(policy.cfg).items() if k != "command_input"}
    write_raw_checkpoint(tmp_path / "old.ckpt", _payload(policy, model_config=old_cfg))
    loaded, ckpt = load_policy(tmp_path / "old.ckpt")
    assert ckpt.model_config.command_input is False
    # a current checkpoint that says it takes the input but holds weights without it is refused
    cfg = dict(to_dict(policy.cfg), command_input=True)
    write_raw_checkpoint(tmp_path / "bad.ckpt", _payload(policy, model_config=cfg))
    with pytest.raises(CheckpointError, match=r"backbone.proprio.0.weight.*architecture expects"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_checkpoint_from_before_the_rotation_option_feeds_the_quaternion(tmp_path):
    """Checkpoints written before model.proprio_rotation fed the TCP quaternion as it came; they
    load with proprio_rotation quaternion (22 proprio inputs), and a rot6d config with such
    weights is refused."""
    old = VisuomotorPolicy(tiny_model_config(proprio_rotation="quaternion"))
    old_cfg = {k: v for k, v in to_dict(old.cfg).items() if k != "proprio_rotation"}
    write_raw_checkpoint(tmp_path / "old.ckpt", _payload(old, model_config=old_cfg))
    loaded, ckpt = load_policy(tmp_path / "old.ckpt")
    assert ckpt.model_config.proprio_rotation == "quaternion"
    write_raw_checkpoint(tmp_path / "bad.ckpt", _payload(old, model_config=dict(old_cfg, proprio_rotation="rot6d")))
    with pytest.raises(CheckpointError, match=r"backbone.proprio.0.weight.*architecture expects"):
        load_checkpoint(tmp_path / "bad.ckpt")
