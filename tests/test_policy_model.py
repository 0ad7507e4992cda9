"""Policy model: tanh-Gaussian head, action scaling, backbone registry, augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policy_fixtures import tiny_model_config
from twinrl_policy import backbones
from twinrl_policy.augment import color_jitter, random_shift
from twinrl_policy.config import ACTION_LIMITS, ModelConfig
from twinrl_policy.distributions import TanhGaussian
from twinrl_policy.model import VisuomotorPolicy, images_to_tensor
from twinrl_policy.normalization import NormStats


def _batch(policy, n=3, seed=0):
    g = np.random.default_rng(seed)
    cfg = policy.cfg
    return {"third_person": images_to_tensor(g.integers(0, 255, (n, *cfg.third_person_size, 3), dtype=np.uint8)),
            "wrist": images_to_tensor(g.integers(0, 255, (n, *cfg.wrist_size, 3), dtype=np.uint8)),
            "proprio": torch.as_tensor(g.normal(size=(n, 22)), dtype=torch.float32),
            "task": policy.task_ids("insert_hexagon", n),
            "command": torch.as_tensor(g.normal(0, 0.02, size=(n, 7)), dtype=torch.float32)}


def test_tanh_gaussian_log_prob_matches_torch_transformed_distribution():
    from torch.distributions import Independent, Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 7) * 0.5, torch.randn(64, 7) * 0.2 - 1.0
    d = TanhGaussian(mean, log_std)
    ref = TransformedDistribution(Independent(Normal(mean, log_std.exp()), 1), [TanhTransform()])
    y, logp = d.rsample()
    inside = (y.abs() < 0.98).all(-1)  # log_prob pulls boundary targets inside by boundary_eps
    assert inside.sum() >= 2
    assert torch.allclose(logp[inside], ref.log_prob(y)[inside], atol=1e-3)
    assert torch.allclose(d.log_prob(y)[inside], logp[inside], atol=1e-3)
    assert torch.all(y.abs() < 1) and torch.allclose(d.mode(), torch.tanh(mean))


def test_tanh_gaussian_per_dimension_log_prob_sums_to_the_joint_one():
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    torch.manual_seed(1)
    mean, log_std = torch.randn(32, 7) * 0.5, torch.randn(32, 7) * 0.2 - 1.0
    d = TanhGaussian(mean, log_std)
    y = torch.tanh(mean + 0.3 * torch.randn(32, 7))
    dims = d.log_prob_dims(y)
    assert dims.shape == (32, 7) and torch.allclose(dims.sum(-1), d.log_prob(y), atol=1e-5)
    for j in (0, 5):   # each column is that dimension's own 1-D density
        ref = TransformedDistribution(Normal(mean[:, j], log_std[:, j].exp()), [TanhTransform()])
        assert torch.allclose(dims[:, j], ref.log_prob(y[:, j]), atol=1e-3)


def test_tanh_gaussian_density_integrates_to_one():
    d = TanhGaussian(torch.tensor([[0.7]]), torch.tensor([[-0.4]]))
    ys = torch.linspace(-0.9999, 0.9999, 20001).reshape(-1, 1, 1)
    dens = d.log_prob(ys.expand(-1, 1, 1)).exp().reshape(-1)
    integral = float(torch.trapezoid(dens, ys.reshape(-1)))
    assert abs(integral - 1.0) < 1e-2


def test_log_prob_gradient_reaches_every_trainable_parameter():
    policy = VisuomotorPolicy(tiny_model_config())
    b = _batch(policy)
    a, logp = policy.sample(b)
    (-policy.log_prob(b, a.detach()).mean() - logp.mean()).backward()
    missing = [n for n, p in policy.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_actions_stay_within_normalisation_range_and_step_limits():
    rng = np.random.default_rng(1)
    acts = rng.uniform(-0.01, 0.03, (100, 7))
    acts[:, 6] = rng.choice([-1.0, 1.0], 100)
    norm = NormStats.from_data(rng.normal(size=(100, 22)), acts)
    limits = np.asarray(ACTION_LIMITS)
    assert np.all(norm.action_high <= limits + 1e-7) and np.all(norm.action_low >= -limits - 1e-7)
    assert norm.action_low[0] < -0.01 and norm.action_high[0] > 0.03      # data range widened
    assert norm.action_high[3] - norm.action_low[3] >= 0.1 * 2 * 0.25 - 1e-6  # minimum width
    policy = VisuomotorPolicy(tiny_model_config(init_log_std=1.5), norm)
    b = _batch(policy, n=64)
    for a in (policy.act(b, deterministic=False), policy.act(b), policy.sample(b)[0].detach()):
        assert torch.all(a >= torch.as_tensor(norm.action_low) - 1e-6)
        assert torch.all(a <= torch.as_tensor(norm.action_high) + 1e-6)
    # log-probability in environment units includes the scaling Jacobian
    policy = VisuomotorPolicy(tiny_model_config(init_log_std=-2.0), norm)
    a, logp = policy.sample(b)
    inside = (policy.to_normalized(a).abs() < 0.98).all(-1)
    assert inside.sum() >= 8
    assert torch.allclose(policy.log_prob(b, a.detach())[inside], logp.detach()[inside], atol=1e-3)


def test_norm_stats_reject_bad_values():
    with pytest.raises(ValueError, match="proprio_std"):
        NormStats(np.zeros(22), np.zeros(22), -np.ones(7) * 0.01, np.ones(7) * 0.01)
    with pytest.raises(ValueError, match="per-step limits"):
        NormStats(np.zeros(22), np.ones(22), -np.ones(7), np.ones(7))
    with pytest.raises(ValueError, match="non-finite"):
        NormStats(np.full(22, np.nan), np.ones(22), -np.ones(7) * 0.01, np.ones(7) * 0.01)


def test_default_config_file_builds_the_cpu_policy():
    from twinrl_policy.config import load_model_config, load_sft_config

    cfg = load_model_config()
    assert cfg.backbone == "conv_small" and cfg.third_person_size == (256, 256) and len(cfg.tasks) == 4
    assert load_sft_config().alpha == 0.5
    policy = VisuomotorPolicy(cfg)
    with torch.no_grad():
        a = policy.act(_batch(policy, n=1))
    assert a.shape == (1, 7) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="wrist"):
        b = _batch(policy, n=1)
        b["wrist"] = b["wrist"][:, :, :64]
        policy.act(b)


def test_backbone_registry_plugs_in_a_custom_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'no_such_vla'"):
        VisuomotorPolicy(tiny_model_config(backbone="no_such_vla"))

    class MeanColour(torch.nn.Module):
        feature_dim = 8

        def __init__(self, cfg):
            super().__init__()
            self.lin = torch.nn.Linear(6 + cfg.proprio_features, 8)

        def forward(self, batch):
            return self.lin(torch.cat([batch["third_person"].mean((2, 3)), batch["wrist"].mean((2, 3)),
                                       batch["proprio"]], -1))

    backbones.register_backbone("test_mean_colour", MeanColour)
    assert "test_mean_colour" in backbones.available_backbones()
    policy = VisuomotorPolicy(tiny_model_config(backbone="test_mean_colour"))
    assert isinstance(policy.backbone, MeanColour)
    assert policy.act(_batch(policy)).shape == (3, 7)


def test_instruction_encoder_hook():
    v = backbones.hashed_words(["Pick the red block and place it", "pick the red block and place it",
                                "erase the whiteboard"], 32)
    assert np.allclose(v[0], v[1]) and abs(np.linalg.norm(v[0]) - 1) < 1e-5 and not np.allclose(v[0], v[2])
    policy = VisuomotorPolicy(tiny_model_config(instruction_encoder="hashed_words", instruction_dim=32))
    b = _batch(policy, n=2)
    b["instruction"] = torch.as_tensor(backbones.get_instruction_encoder("hashed_words")(["a", "b"], 32))
    assert policy.act(b).shape == (2, 7)
    with pytest.raises(ValueError, match="go together"):
        ModelConfig(instruction_encoder="hashed_words").validate()


def test_augmentations_keep_shape_and_range_and_actually_change_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 20, 24, generator=g)
    y = random_shift(x, 3, g)
    assert y.shape == x.shape and not torch.equal(x, y)
    # a shift moves content: each output equals a translated crop of the padded input
    pad = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
    for b in range(4):
        assert any(torch.equal(y[b], pad[b, :, i:i + 20, j:j + 24]) for i in range(7) for j in range(7))
    z = color_jitter(x, 0.3, 0.3, 0.3, g)
    assert z.shape == x.shape and float(z.min()) >= 0 and float(z.max()) <= 1 and not torch.allclose(z, x)
    assert math.isclose(float(random_shift(x, 0).sum()), float(x.sum()))


def test_command_input_is_required_checked_and_used():
    """model.command_input (the default): the commanded target relative to the TCP is an input."""
    from twinrl_policy.config import load_model_config

    assert load_model_config().command_input is True
    torch.manual_seed(0)
    policy = VisuomotorPolicy(tiny_model_config(command_input=True))
    policy.eval()
    b = _batch(policy, n=4)
    a = policy.mode(b)
    b2 = dict(b, command=b["command"] + torch.tensor([0.03, 0, 0, 0, 0, 0, 0]))
    assert not torch.allclose(policy.mode(b2), a)          # the input reaches the action
    lp = policy.log_prob(b, a)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match="the batch has no 'command'"):
        policy.mode({k: v for k, v in b.items() if k != "command"})
    with pytest.raises(ValueError, match=r"command: expected \(B, 7\), got \(4, 6\)"):
        policy.mode(dict(b, command=b["command"][:, :6]))
    # without the option the same batch works and the command is ignored
    plain = VisuomotorPolicy(tiny_model_config(command_input=False))
    plain.eval()
    assert torch.allclose(plain.mode(b), plain.mode(b2))


def test_action_chunk_head_predicts_the_next_actions_and_the_actor_is_the_first():
    policy = VisuomotorPolicy(tiny_model_config(action_chunk=4))
    b = _batch(policy, n=5)
    feats = policy.features(b)
    mean, log_std = policy.chunk_heads(feats)
    assert mean.shape == log_std.shape == (5, 4, 7)
    first_mean, first_log_std = policy.heads(feats)
    assert torch.equal(first_mean, mean[:, 0]) and torch.equal(first_log_std, log_std[:, 0])
    chunk = policy.act_chunk(b)
    assert chunk.shape == (5, 4, 7)
    assert torch.allclose(chunk[:, 0], policy.act(b))                 # deterministic: the same action
    assert not torch.allclose(chunk[:, 0], chunk[:, 1])               # later steps have their own outputs
    assert torch.all(chunk.abs() <= torch.as_tensor(ACTION_LIMITS) + 1e-6)
    a, logp = policy.sample(b)                                         # the actor: the current action
    assert a.shape == (5, 7) and logp.shape == (5,)
    # one action per observation keeps the old parameter shapes (older checkpoints load)
    assert VisuomotorPolicy(tiny_model_config()).mean_head.weight.shape[0] == 7
    for bad, match in (({"action_chunk": 0}, "action_chunk"), ({"chunk_ensemble_decay": float("nan")},
                                                                 "chunk_ensemble_decay")):
        with pytest.raises(ValueError, match=match):
            tiny_model_config(**bad).validate()


def test_tcp_rotation_enters_as_two_matrix_columns():
    """proprio_rotation rot6d (the default): the TCP quaternion reaches the network as the first
    two columns of its rotation matrix, so q and -q (the same orientation; a pointing-down TCP
    has w ~ 0 and flips between them) give the same action, and nearby orientations nearby
    inputs. With quaternion the sign flip changes the input."""
    from scipy.spatial.transform import Rotation

    from twinrl_policy.config import load_model_config
    from twinrl_policy.model import quat_to_rot6d

    assert load_model_config().proprio_rotation == "rot6d"
    R = Rotation.random(20, random_state=1)
    q = torch.as_tensor(R.as_quat(), dtype=torch.float64)
    r6 = quat_to_rot6d(q)
    m = torch.as_tensor(R.as_matrix())
    assert torch.allclose(r6, torch.cat([m[:, :, 0], m[:, :, 1]], dim=1))
    assert torch.allclose(quat_to_rot6d(-q), r6) and torch.allclose(quat_to_rot6d(3 * q), r6)
    # pointing down, yaw 0.1 rad either side of a w sign flip: close in rot6d, far as quaternions
    a = Rotation.from_euler("z", 0.1) * Rotation.from_euler("x", np.pi - 1e-3)
    b = Rotation.from_euler("z", 0.1) * Rotation.from_euler("x", np.pi + 1e-3)
    qa, qb = (torch.as_tensor(r.as_quat()[None] * np.sign(r.as_quat()[3])) for r in (a, b))   # w >= 0, as the envs
    assert torch.allclose(torch.linalg.norm(qa - qb), torch.tensor(2.0, dtype=torch.float64), atol=1e-2)
    assert torch.linalg.norm(quat_to_rot6d(qa) - quat_to_rot6d(qb)) < 5e-3
    for rotation, same in (("rot6d", True), ("quaternion", False)):
        torch.manual_seed(0)
        policy = VisuomotorPolicy(tiny_model_config(proprio_rotation=rotation))
        b1 = _batch(policy)
        b2 = dict(b1, proprio=b1["proprio"].clone())
        b2["proprio"][:, 17:21] *= -1
        with torch.no_grad():
            assert torch.allclose(policy.act(b1), policy.act(b2), atol=1e-6) is same
    with pytest.raises(ValueError, match="proprio_rotation: must be rot6d or quaternion"):
        tiny_model_config(proprio_rotation="euler").validate()
