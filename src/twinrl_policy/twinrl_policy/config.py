"""Typed configuration of the policy model and of SFT training (``config/policy.yaml``).

``config/policy.yaml`` has two sections, ``model`` (:class:`ModelConfig`) and ``sft``
(:class:`SFTConfig`), loaded with the project's one loader (``twinrl_bringup.config``), so
unknown keys, missing keys and wrong types are errors naming the file and key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from twinrl_bringup.config import load_config, resolve_config_path

__all__ = [
    "TASKS",
    "ACTION_DIM",
    "PROPRIO_DIM",
    "COMMAND_DIM",
    "COMMAND_SCALE",
    "ACTION_LIMITS",
    "ModelConfig",
    "SFTConfig",
    "load_model_config",
    "load_sft_config",
]

# The four tasks of the method, in the order of the task embedding's rows.
TASKS = ("pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard")
ACTION_DIM = 7
PROPRIO_DIM = 22
# The commanded-target input (twinrl_bringup.dataset.COMMAND_LAYOUT) and the scale that brings
# it to about [-1, 1]: one step of translation, one step of rotation, the gripper command.
COMMAND_DIM = 7
COMMAND_SCALE = (0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0)
# Per-step action limits of the envelope (config/safety.yaml): translation (m), rotation
# vector (rad) per control step, gripper command. Normalisation never exceeds them.
ACTION_LIMITS = (0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0)


@dataclass
class ModelConfig:
    """Architecture of the visuomotor policy (stored in every checkpoint)."""

    backbone: str = "conv_small"                 # name in twinrl_policy.backbones registry
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    third_person_size: tuple[int, int] = (256, 256)   # (height, width) of the input image
    wrist_size: tuple[int, int] = (128, 128)
    # conv stacks: one [out_channels, kernel, stride] per layer, then a spatial softmax
    third_person_convs: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(16, 5, 4), (32, 3, 2), (32, 3, 2), (64, 3, 1)])
    wrist_convs: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(16, 5, 2), (32, 3, 2), (32, 3, 2), (64, 3, 1)])
    image_feature_dim: int = 64                  # per camera, after the keypoint projection
    proprio_hidden: int = 64
    # feed the commanded target relative to the TCP (7 values) next to the proprioception
    command_input: bool = True
    # how the TCP orientation (proprio[17:21], a quaternion) enters the network: "rot6d" (the
    # first two columns of its rotation matrix, Zhou et al. 2019: continuous, and the same for q
    # and -q) or "quaternion" (as given: a pointing-down TCP has w ~ 0, so the w >= 0 convention
    # flips the sign of x between neighbouring poses; checkpoints from before this option)
    proprio_rotation: str = "rot6d"
    task_embedding_dim: int = 16
    instruction_encoder: str = ""                # "" = none; else a name in the text-encoder registry
    instruction_dim: int = 0                     # size of the instruction embedding (0 = unused)
    trunk_hidden: list[int] = field(default_factory=lambda: [256, 256])
    log_std_min: float = -3.0
    log_std_max: float = 2.0
    init_log_std: float = -0.5
    backbone_options: dict[str, Any] = field(default_factory=dict)   # e.g. a local weights path
    # auxiliary head on the backbone features predicting the object's pose before the grasp
    # (x, y, sin k*yaw, cos k*yaw); SFT trains it when sft.object_aux_weight > 0
    object_head: bool = False
    # action chunking (ACT, Zhao et al. 2023): the head predicts this many actions from each
    # observation, the current one first; SFT fits all of them, inference averages the
    # predictions made for the current step over the last chunks (temporal ensembling) and
    # RL's actor is the first action's distribution. 1 = one action per observation
    action_chunk: int = 1
    # temporal ensembling: a prediction made k steps ago weighs exp(-decay * k) (0 = plain mean;
    # > 0 favours the newest observation, < 0 the oldest plan)
    chunk_ensemble_decay: float = 0.0

    @property
    def proprio_features(self) -> int:
        """Width of the proprioception the backbone receives (before the command input)."""
        return PROPRIO_DIM + (2 if self.proprio_rotation == "rot6d" else 0)

    def validate(self) -> None:
        if self.proprio_rotation not in ("rot6d", "quaternion"):
            raise ValueError(f"proprio_rotation: must be rot6d or quaternion, got {self.proprio_rotation!r}")
        if self.action_chunk < 1:
            raise ValueError(f"action_chunk: must be >= 1, got {self.action_chunk}")
        if not math.isfinite(self.chunk_ensemble_decay):
            raise ValueError(f"chunk_ensemble_decay: must be finite, got {self.chunk_ensemble_decay}")
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: duplicate names in {self.tasks}")
        for name, size in (("third_person_size", self.third_person_size), ("wrist_size", self.wrist_size)):
            if min(size) < 8:
                raise ValueError(f"{name}: images must be at least 8x8, got {list(size)}")
        for name, convs in (("third_person_convs", self.third_person_convs), ("wrist_convs", self.wrist_convs)):
            if not convs:
                raise ValueError(f"{name}: at least one conv layer is needed")
            for i, (ch, k, s) in enumerate(convs):
                if ch < 1 or k < 1 or s < 1:
                    raise ValueError(f"{name}[{i}]: channels, kernel and stride must be >= 1, got {[ch, k, s]}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")
        if not self.log_std_min <= self.init_log_std <= self.log_std_max:
            raise ValueError("init_log_std must lie in [log_std_min, log_std_max]")
        if bool(self.instruction_encoder) != (self.instruction_dim > 0):
            raise ValueError("instruction_encoder and instruction_dim > 0 go together")
        for name in ("image_feature_dim", "proprio_hidden", "task_embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(f"unknown task {task!r} (this policy knows: {', '.join(self.tasks)})") from None


@dataclass
class SFTConfig:
    """Hyper-parameters of supervised fine-tuning (L_IL = -E log pi(a|s))."""

    steps: int = 20000
    batch_size: int = 64
    alpha: float = 0.5                 # probability that a batch sample comes from the real set
    learning_rate: float = 3.0e-4
    weight_decay: float = 1.0e-4
    grad_clip: float = 1.0
    augment: bool = True
    shift_pixels: int = 8              # random shift (pad + crop) for the 256 px image; scaled per camera
    brightness: float = 0.2            # colour jitter strengths (0 = off)
    contrast: float = 0.2
    saturation: float = 0.2
    action_margin: float = 0.1         # normalisation range = data range widened by this fraction
    min_action_range: float = 0.1      # ... and at least this fraction of the per-step limit
    log_every: int = 20                # TensorBoard scalars every N steps
    save_every: int = 500              # checkpoint + training state every N steps
    seed: int = 0
    num_threads: int = 0               # torch threads (0 = leave torch's default)
    real_sources: list[str] = field(default_factory=lambda: ["real", "demo", "intervention"])
    twin_sources: list[str] = field(default_factory=lambda: ["twin"])
    success_only: bool = False         # train on successful episodes only
    skip_idle_steps: bool = False      # leave out steps that only wait (no motion, gripper unchanged)
    # train on each twin demo up to this keyframe of its stage-I path (its meta's
    # extra.keyframes, e.g. "pre_wipe"), the steps from there on left to the real demos: the
    # part of a task that happens at a fixed fixture (erase_whiteboard's wipe) looks the same
    # from every object placement, so the real demos already cover it. "" = whole twin demos
    twin_until: str = ""
    # with twin_until: the real steps from that keyframe of each real demo on (found in its
    # commanded path) are drawn with the share they have among the real steps, as when training
    # on real demos alone, and alpha mixes the rest of every batch (the phase the twin demos
    # cover). False: alpha mixes whole batches, so the cut phase gets only alpha of its share
    real_share_after_cut: bool = False
    # beta-NLL (Seitzer et al. 2022): each dimension's -log pi term is weighted by std^(2 beta)
    # (no gradient through the weight). 0 is the plain NLL (L_IL), whose learned std can grow on
    # a dimension that is hard to fit (the grasp yaw did) until its mean barely learns; 0.5
    # scales the mean's gradient back up by std. The logged loss is always plain -log pi.
    nll_beta: float = 0.0
    # auxiliary object-pose loss (needs model.object_head): until the gripper first closes the
    # object lies where the episode's initial configuration put it, so every such step labels
    # the images with its pose; weight of the squared error of (x, y standardised, sin k*yaw,
    # cos k*yaw) next to L_IL. 0 = off
    object_aux_weight: float = 0.0
    object_yaw_harmonic: int = 2       # k: 2 for objects that look the same after a half turn
    # learning-rate schedule over `steps`: "constant", or "cosine" (linear warm-up over
    # warmup_steps, at most a tenth of `steps`, then a half cosine from learning_rate down to
    # lr_final_fraction of it at the last step). A function of the step only, so a resumed run
    # follows the same schedule.
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_final_fraction: float = 0.05
    # paired feature alignment (needs pair datasets: real demos replayed in the twin, `twinrl
    # demos pair`): each step also draws align_batch (real step, twin image of the same moment)
    # pairs and adds align_weight x the squared distance between the backbone features of the
    # twin's images and of the real images (held fixed), relative to that of unrelated real
    # images (SFTTrainer.alignment_loss). Pulls what the policy sees in twin images onto what it
    # sees in real ones. 0 = off
    align_weight: float = 0.0
    align_batch: int = 16
    # exponential moving average of the weights (torch.optim.swa_utils): the checkpoint holds
    # the average, updated after every step with this decay (0.995: about the last 200 steps);
    # the training state keeps both. 0 = off, the checkpoint holds the last step's weights
    ema_decay: float = 0.0

    def validate(self) -> None:
        if not isinstance(self.twin_until, str) or (self.twin_until and not self.twin_until.isidentifier()):
            raise ValueError(f"twin_until: must be a keyframe name (e.g. pre_wipe) or \"\", got {self.twin_until!r}")
        if self.real_share_after_cut and not self.twin_until:
            raise ValueError("real_share_after_cut: needs twin_until (the keyframe that splits the demos)")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.lr_final_fraction <= 1.0 or not math.isfinite(self.lr_final_fraction):
            raise ValueError(f"lr_final_fraction: must lie in [0, 1], got {self.lr_final_fraction}")
        if not 0.0 <= self.nll_beta <= 1.0 or not math.isfinite(self.nll_beta):
            raise ValueError(f"nll_beta: must lie in [0, 1], got {self.nll_beta}")
        if not (self.object_aux_weight >= 0.0 and math.isfinite(self.object_aux_weight)):
            raise ValueError(f"object_aux_weight: must be >= 0, got {self.object_aux_weight}")
        if self.object_yaw_harmonic < 1:
            raise ValueError(f"object_yaw_harmonic: must be >= 1, got {self.object_yaw_harmonic}")
        if not 0.0 <= self.alpha <= 1.0 or not math.isfinite(self.alpha):
            raise ValueError(f"alpha: must lie in [0, 1], got {self.alpha}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.save_every < 1 or self.log_every < 1:
            raise ValueError("save_every and log_every must be >= 1")
        if set(self.real_sources) & set(self.twin_sources):
            raise ValueError("real_sources and twin_sources overlap")
        if not (self.align_weight >= 0.0 and math.isfinite(self.align_weight)):
            raise ValueError(f"align_weight: must be >= 0, got {self.align_weight}")
        if not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay: must lie in [0, 1), got {self.ema_decay}")
        if self.align_batch < 2:
            raise ValueError(f"align_batch: must be >= 2 (the spread of the real features), got {self.align_batch}")


def _path(path: Optional[str]):
    return resolve_config_path(path or "policy.yaml")


def load_model_config(path: Optional[str] = None, overrides=()) -> ModelConfig:
    return load_config(_path(path), ModelConfig, overrides, section="model")


def load_sft_config(path: Optional[str] = None, overrides=()) -> SFTConfig:
    return load_config(_path(path), SFTConfig, overrides, section="sft")
