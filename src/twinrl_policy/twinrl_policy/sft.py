"""Supervised fine-tuning (SFT): L_IL = -E log pi(a|s) over real + twin demonstrations.

Every batch sample comes from the real pool with probability ``alpha`` and from the twin
pool otherwise. Images are augmented (random shift, colour jitter); actions are normalised
to (-1, 1) with statistics computed once from all demonstrations (stored in the checkpoint).

Outputs, for ``out = policy.ckpt``:

* ``policy.ckpt``: the policy checkpoint (twinrl_policy.checkpoint), written every
  ``save_every`` steps and at the end;
* ``policy.ckpt.state``: the training state (weights, optimiser, step, RNG states, loss
  history), written with the checkpoint; a new run with the same ``out`` resumes from it,
  reproducing the uninterrupted run exactly (same batches, same augmentations);
* TensorBoard scalars under ``logdir`` (default ``policy_tb/`` beside the checkpoint).

With pair datasets (``pair_dirs``: real demonstrations replayed in the twin) and
``sft.align_weight`` > 0, a paired feature-alignment term is added (:meth:`SFTTrainer.alignment_loss`).
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from twinrl_bringup.config import from_dict, to_dict

from .augment import augment_images
from .checkpoint import file_sha256, save_checkpoint
from .config import ModelConfig, SFTConfig
from .data import DemoPool, PairPool, load_demo_pools, load_pair_pool, sample_indices
from .distributions import TanhGaussian
from .model import VisuomotorPolicy, images_to_tensor
from .normalization import NormStats

__all__ = ["SFTTrainer", "SFTResult", "state_path", "make_batch", "action_error"]


def state_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".state")


@dataclass
class SFTResult:
    checkpoint: Path
    sha256: str
    steps: int
    final_loss: float
    losses: list = field(default_factory=list)
    samples_per_second: float = float("nan")
    resumed_from: int = 0
    action_fit: dict = field(default_factory=dict)   # per dimension, on training samples (action_fit)


def make_batch(policy: VisuomotorPolicy, arrays: dict, task_index: int) -> dict:
    """Numpy arrays (third_person, wrist, proprio[, command]) -> the policy's tensor batch."""
    n = len(arrays["proprio"])
    batch = {"third_person": images_to_tensor(arrays["third_person"]),
             "wrist": images_to_tensor(arrays["wrist"]),
             "proprio": torch.as_tensor(arrays["proprio"], dtype=torch.float32),
             "task": torch.full((n,), task_index, dtype=torch.long)}
    if "command" in arrays:
        batch["command"] = torch.as_tensor(arrays["command"], dtype=torch.float32)
    return batch


@torch.no_grad()
def action_error(policy: VisuomotorPolicy, pool: DemoPool, task: str, max_samples: int = 256) -> float:
    """Mean absolute error between the deterministic action and the demo action, in the
    normalised action space (comparable across dimensions)."""
    n = min(len(pool), max_samples)
    idx = np.arange(n)
    arrays = pool.batch(idx)
    policy.eval()
    pred = policy.act(make_batch(policy, arrays, policy.cfg.task_index(task)), deterministic=True)
    y_pred = policy.to_normalized(pred)
    y_true = policy.to_normalized(torch.as_tensor(arrays["action"]))
    return float((y_pred - y_true).abs().mean())


ACTION_NAMES = ("x", "y", "z", "rx", "ry", "rz", "gripper")
# SFT config keys a resumed training may change: its length and its logging, nothing it learns by
RESUMABLE_SFT_KEYS = frozenset({"steps", "log_every", "save_every", "num_threads"})


def saved_sft_config(state: dict, source: str = "<training state>") -> Optional[dict]:
    """The SFT config a training state was written with, with every key of the current
    :class:`SFTConfig`: keys added to it after the state was written take their defaults (a key
    comes with a default that keeps the behaviour from before it). None for states written
    before the config was stored; ConfigError when it holds unknown keys or bad values."""
    old = state.get("sft_config")
    if not isinstance(old, dict):
        return None
    return to_dict(from_dict(old, SFTConfig, source, "sft_config"))


@torch.no_grad()
def action_fit(policy: VisuomotorPolicy, pool: DemoPool, task: str, max_samples: int = 512,
               seed: int = 0) -> dict:
    """Per action dimension, how well the deterministic action follows the demo actions on
    (up to ``max_samples`` of) ``pool``: {name: {"label_std", "pred_std", "corr", "mae"}} in
    environment units; ``corr`` is NaN for a dimension the demos hold constant. A dimension
    with a spread in the labels but a correlation near 0 is one the policy did not learn."""
    n = len(pool)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_samples), replace=False))
    policy.eval()
    out = {}
    preds, labels = [], []
    for start in range(0, len(idx), 128):
        arrays = pool.batch(idx[start:start + 128])
        preds.append(policy.act(make_batch(policy, arrays, policy.cfg.task_index(task))).numpy())
        labels.append(np.asarray(arrays["action"], np.float64))
    pred, label = np.concatenate(preds), np.concatenate(labels)
    for j, name in enumerate(ACTION_NAMES):
        ls, ps = float(label[:, j].std()), float(pred[:, j].std())
        if ls <= 1e-6:
            corr = float("nan")          # the demos hold this dimension constant
        elif ps <= 1e-12:
            corr = 0.0                   # the policy holds it constant: nothing learned
        else:
            corr = float(np.corrcoef(label[:, j], pred[:, j])[0, 1])
        out[name] = {"label_std": ls, "pred_std": ps, "corr": corr,
                     "mae": float(np.abs(label[:, j] - pred[:, j]).mean())}
    return out


def format_object_fit(fit: dict) -> str:
    if not fit:
        return "object head: no labelled samples"
    return (f"object head on {fit['samples']} labelled training steps: x/y error {fit['xy_mae'] * 1000:.1f} mm, "
            f"yaw error {math.degrees(fit['yaw_mae']):.1f} deg (labels' yaw std {math.degrees(fit['yaw_label_std']):.1f})")


def format_action_fit(fit: dict) -> str:
    parts = []
    for name, f in fit.items():
        if math.isnan(f["corr"]):
            continue
        flag = " (not learned)" if f["corr"] < 0.5 else ""
        parts.append(f"{name} {f['corr']:.2f}{flag}")
    return "fit on training samples (corr of action and demo, per dimension): " + ", ".join(parts)


class SFTTrainer:
    def __init__(self, task: str, data_dirs: Sequence, out, model_cfg: ModelConfig, sft_cfg: SFTConfig,
                 logdir=None, version: int = 1, resume: bool = True, progress: bool = True,
                 log: Callable[[str], None] = print, pools: Optional[tuple[DemoPool, DemoPool]] = None,
                 pair_dirs: Sequence = (), pairs: Optional[PairPool] = None, sweep_dirs: Sequence = ()):
        self.task = task
        self.out = Path(out)
        self.model_cfg = model_cfg
        self.cfg = sft_cfg
        self.version = int(version)
        self.progress = progress
        self.log = log
        self.logdir = Path(logdir) if logdir else self.out.with_name(self.out.stem + "_tb")
        if sft_cfg.num_threads > 0:
            torch.set_num_threads(sft_cfg.num_threads)
        model_cfg.task_index(task)
        if pools is None:
            real, twin, info = load_demo_pools(data_dirs, task, model_cfg, sft_cfg.real_sources,
                                               sft_cfg.twin_sources, sft_cfg.success_only, progress,
                                               skip_idle=sft_cfg.skip_idle_steps, twin_until=sft_cfg.twin_until,
                                               real_phases=sft_cfg.real_share_after_cut)
            for path, reason in info["skipped_files"]:
                log(f"skipped {path}: {reason}")
            if info["commands_rebuilt"]:
                log(f"{info['commands_rebuilt']} episodes have no recorded commanded targets: rebuilt from their "
                    "actions (wrong after a force stop or hold moved the target; record them again to fix)")
            if info["twin_steps_cut"]:
                log(f"left out {info['twin_steps_cut']} twin-demo steps from keyframe {sft_cfg.twin_until!r} on "
                    "(sft.twin_until)")
            if sft_cfg.real_share_after_cut and len(real):
                log(f"{info['real_steps_after_cut']} of {len(real)} real steps lie from keyframe "
                    f"{sft_cfg.twin_until!r} on: drawn with that share "
                    f"({info['real_steps_after_cut'] / len(real):.2f}), alpha mixes the rest (sft.real_share_after_cut)")
            if info["idle_steps_skipped"]:
                log(f"left out {info['idle_steps_skipped']} idle steps (waits without motion; sft.skip_idle_steps)")
            if info["sweep_episodes"]:
                log(f"left out {info['sweep_episodes']} alignment sweeps of the data (no demonstrations; "
                    f"give them with --sweeps)")
        else:
            real, twin = pools
        self.real, self.twin = real, twin
        if len(real) == 0 and sft_cfg.alpha > 0:
            log(f"warning: no real demonstrations; alpha={sft_cfg.alpha} ignored, training on twin demos only")
        if len(twin) == 0 and sft_cfg.alpha < 1:
            log(f"warning: no twin demonstrations; alpha={sft_cfg.alpha} ignored, training on real demos only")
        log(f"SFT {task}: {len(real)} real steps ({len(real.episodes)} episodes), {len(twin)} twin steps "
            f"({len(twin.episodes)} episodes), alpha={sft_cfg.alpha}")

        self.generator = torch.Generator().manual_seed(sft_cfg.seed)
        torch.manual_seed(sft_cfg.seed)
        self.step = 0
        self.losses: list[float] = []
        self.resumed_from = 0
        st = state_path(self.out)
        state = None
        if resume and st.exists():
            state = torch.load(st, map_location="cpu", weights_only=False)
            self._check_state(st, state)
            norm = NormStats.from_dict(state["norm_stats"])
        else:
            all_p = np.concatenate([real.proprio, twin.proprio])
            all_a = np.concatenate([real.action, twin.action])
            norm = NormStats.from_data(all_p, all_a, sft_cfg.action_margin, sft_cfg.min_action_range)
        self.policy = VisuomotorPolicy(model_cfg, norm)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=sft_cfg.learning_rate,
                                           weight_decay=sft_cfg.weight_decay)
        self.ema = None
        if sft_cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.policy, multi_avg_fn=get_ema_multi_avg_fn(sft_cfg.ema_decay),
                                     use_buffers=True)
        if state is not None:
            self.policy.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None:
                if "ema" not in state:
                    raise ValueError(f"{st}: training state has no moving average of the weights (sft.ema_decay); "
                                     f"use another --out or --no-resume")
                self.ema.load_state_dict(state["ema"])
            self.step = int(state["step"])
            self.losses = list(state["losses"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(state["numpy_rng"])
            random.setstate(state["python_rng"])
            self.resumed_from = self.step
            log(f"resuming from {st} at step {self.step}")
        self.task_index = model_cfg.task_index(task)
        self._setup_object_aux()
        self._setup_alignment(pair_dirs, pairs, sweep_dirs)

    def _setup_alignment(self, pair_dirs: Sequence, pairs: Optional[PairPool], sweep_dirs: Sequence = ()) -> None:
        """The paired feature-alignment loss (sft.align_weight): pairs from ``pair_dirs`` (or given);
        off when there are none; pairs without the weight only measure the distance after training.
        ``sweep_dirs``: alignment sweeps, the real side of pairs that are no demonstration."""
        self.align_weight = float(self.cfg.align_weight)
        self.last_align_loss = float("nan")
        self.sweeps = None
        if sweep_dirs:
            if not pair_dirs and pairs is None:
                raise ValueError("alignment sweeps (--sweeps) need their replays in the twin (--pairs)")
            self.sweeps, _, sinfo = load_demo_pools(sweep_dirs, self.task, self.model_cfg, progress=self.progress,
                                                    sweeps=True)
            if sinfo["ignored_episodes"]:
                self.log(f"warning: {sinfo['ignored_episodes']} episodes of the sweep directories are no "
                         f"alignment sweeps; left out")
        if pairs is None and pair_dirs:
            pairs, info = load_pair_pool(pair_dirs, self.task, self.model_cfg, self.real, self.progress,
                                         sweeps=self.sweeps)
            for path, reason in info["skipped_files"]:
                self.log(f"skipped {path}: {reason}")
            if info["unmatched_episodes"]:
                self.log(f"warning: {info['unmatched_episodes']} pair episodes name no real episode of the "
                         f"training data (extra.pair_of); left out")
        self.pairs = pairs if pairs is not None and len(pairs) else None
        if self.align_weight > 0 and self.pairs is None:
            if pair_dirs or pairs is not None:
                self.log("warning: the pair datasets hold no paired twin/real steps of this task's training "
                         "data; feature alignment off")
            else:
                self.log("no paired twin/real steps (train sft --pairs DIR: the real demos replayed in the twin, "
                         "twinrl demos pair); feature alignment off")
            self.align_weight = 0.0
        elif self.align_weight <= 0 and self.pairs is not None:
            self.log(f"warning: {len(self.pairs)} paired steps given but sft.align_weight is 0: not trained on, "
                     f"only their feature distance is reported after training")
        elif self.pairs is not None:
            n_sweep = int(self.pairs.sweep.sum())
            sweeps = f", {n_sweep} of them of alignment sweeps" if n_sweep else ""
            self.log(f"paired feature alignment on {len(self.pairs)} steps of {len(self.pairs.episodes)} "
                     f"replays{sweeps} (weight {self.align_weight}, {self.cfg.align_batch} pairs per step)")

    def _setup_object_aux(self) -> None:
        """The auxiliary object-pose loss (sft.object_aux_weight): standardisation of the
        labelled x / y over both pools; off (with a warning) when no step has a label."""
        self.object_weight = float(self.cfg.object_aux_weight)
        self.last_object_loss = float("nan")
        self.object_xy = (np.zeros(2), np.ones(2))
        if self.object_weight <= 0:
            return
        if self.policy.object_head is None:
            raise ValueError("sft.object_aux_weight > 0 needs the object head: set model.object_head: true")
        xy = np.concatenate([p.object_pose[p.object_valid, :2] for p in (self.real, self.twin)])
        if len(xy) < 2:
            self.log("warning: no demo step has an object pose label (initial_configuration.object_pose); "
                     "sft.object_aux_weight ignored")
            self.object_weight = 0.0
            return
        self.object_xy = (xy.mean(0), np.maximum(xy.std(0), 1e-3))
        self.log(f"object-pose auxiliary loss on {len(xy)} labelled steps (weight {self.object_weight})")

    def object_targets(self, object_pose: np.ndarray) -> np.ndarray:
        """(N, 3) x, y, yaw -> (N, 4) head targets: standardised x, y, sin k*yaw, cos k*yaw."""
        mean, std = self.object_xy
        k = self.cfg.object_yaw_harmonic
        yaw = object_pose[:, 2].astype(np.float64)
        return np.column_stack([(object_pose[:, :2] - mean) / std, np.sin(k * yaw), np.cos(k * yaw)]).astype(np.float32)

    def _check_state(self, path: Path, state: dict) -> None:
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise ValueError(f"{path}: not an SFT training state; delete it or pass --no-resume")
        if state.get("task") != self.task:
            raise ValueError(f"{path}: training state is for task {state.get('task')!r}, not {self.task!r}; "
                             f"use another --out or --no-resume")
        saved = from_dict(state["model_config"], ModelConfig, str(path), "model_config")
        if to_dict(saved) != to_dict(self.model_cfg):
            raise ValueError(f"{path}: training state has a different model config; use another --out or "
                             f"--no-resume")
        # the SFT config too (states written before it was stored have none): only the run's
        # length and its logging may change on resume (saved_sft_config has every current key)
        old = saved_sft_config(state, str(path))
        if old is not None:
            new = to_dict(self.cfg)
            differ = sorted(k for k in new if k not in RESUMABLE_SFT_KEYS and old[k] != new[k])
            if differ:
                what = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in differ)
                raise ValueError(f"{path}: training state has a different SFT config ({what}); use another "
                                 f"--out or --no-resume")

    # ------------------------------------------------------------------ training
    def _batch(self) -> tuple[dict, torch.Tensor, float]:
        cfg = self.cfg
        ir, it = sample_indices(len(self.real), len(self.twin), cfg.batch_size, cfg.alpha, self.generator,
                                real_after=self.real.after_cut if cfg.real_share_after_cut else None)
        parts = [p.batch(i) for p, i in ((self.real, ir), (self.twin, it)) if len(i)]
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        horizon = self.policy.chunk
        if horizon > 1:
            chunks = [p.action_chunk(i, horizon) for p, i in ((self.real, ir), (self.twin, it)) if len(i)]
            arrays["action"] = np.concatenate([c[0] for c in chunks])          # (B, H, 7)
            arrays["action_valid"] = np.concatenate([c[1] for c in chunks])    # (B, H)
        batch = make_batch(self.policy, arrays, self.task_index)
        if cfg.augment:
            for key, size in (("third_person", self.model_cfg.third_person_size), ("wrist", self.model_cfg.wrist_size)):
                shift = int(round(cfg.shift_pixels * min(size) / 256.0))
                batch[key] = augment_images(batch[key], max(shift, 1) if cfg.shift_pixels > 0 else 0,
                                            cfg.brightness, cfg.contrast, cfg.saturation, self.generator)
        y = self.policy.to_normalized(torch.as_tensor(arrays["action"], dtype=torch.float32))
        if horizon > 1:
            batch["action_valid"] = torch.as_tensor(arrays["action_valid"])
        if self.object_weight > 0:
            batch["object_target"] = torch.as_tensor(self.object_targets(arrays["object_pose"]))
            batch["object_valid"] = torch.as_tensor(arrays["object_valid"], dtype=torch.bool)
        return batch, y, len(ir) / cfg.batch_size

    def objective(self, batch: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the optimiser minimises, L_IL = -E log pi(y|s)): the beta-NLL weights each
        dimension's term by its std^(2 beta), held constant for the gradient; with the object
        loss, ``object_aux_weight`` times the mean squared error of the object head on the
        labelled samples is added (``last_object_loss`` keeps its value). With an action chunk
        (``y`` (B, H, 7), ``batch["action_valid"]`` (B, H)) the objective averages the chunk's
        existing steps; the returned L_IL is the current action's."""
        features = self.policy.features(batch)
        if y.ndim == 2:
            y = y[:, None]
        dist = TanhGaussian(*self.policy.chunk_heads(features))
        log_prob = dist.log_prob_dims(y)                      # (B, H, 7)
        loss = -log_prob[:, 0].sum(-1).mean()
        beta = self.cfg.nll_beta
        weighted = log_prob if beta == 0 else dist.std.detach().pow(2.0 * beta) * log_prob
        per_step = -weighted.sum(-1)                          # (B, H)
        valid = batch.get("action_valid")
        if valid is None:
            objective = per_step.mean()
        else:
            valid = valid.to(per_step.dtype)
            objective = (per_step * valid).sum() / valid.sum().clamp_min(1.0)
        if self.object_weight > 0 and "object_target" in batch:
            valid = batch["object_valid"]
            if bool(valid.any()):
                err = (self.policy.object_head(features[valid]) - batch["object_target"][valid]).pow(2).sum(-1).mean()
                objective = objective + self.object_weight * err
                self.last_object_loss = float(err.detach())
        return objective, loss

    def alignment_loss(self, idx: Optional[np.ndarray] = None) -> torch.Tensor:
        """Mean squared distance between the backbone features of the twin's images and of the
        real images of the same moments (the real side held fixed: it is what the policy meets on
        the robot), relative to the distance the real images of *other* moments give (each
        sample's images swapped with the next sample's): 1 means the twin's image of a moment
        is as far from the real one as an unrelated image, 0 that the policy cannot tell them
        apart. Every feature pass gets the real step's proprioception and command, so distances
        are the images'. ``idx``: pair indices (default: ``align_batch`` drawn at random)."""
        if idx is None:
            idx = torch.randint(0, len(self.pairs), (self.cfg.align_batch,), generator=self.generator).numpy()
        real = make_batch(self.policy, self.pairs.real_batch(idx, self.real, self.sweeps), self.task_index)
        twin = dict(real, third_person=images_to_tensor(self.pairs.third_person[idx]),
                    wrist=images_to_tensor(self.pairs.wrist[idx]))
        other = dict(real, third_person=real["third_person"].roll(1, 0), wrist=real["wrist"].roll(1, 0))
        with torch.no_grad():
            f_real = self.policy.features(real)
            unrelated = (self.policy.features(other) - f_real).pow(2).sum(-1).mean().clamp_min(1e-8)
        f_twin = self.policy.features(twin)
        return (f_twin - f_real).pow(2).sum(-1).mean() / unrelated

    @torch.no_grad()
    def alignment_distance(self, max_samples: int = 256) -> float:
        """:meth:`alignment_loss` over a fixed sample of (up to ``max_samples``) pairs, eval mode."""
        if self.pairs is None:
            return float("nan")
        idx = np.sort(np.random.default_rng(0).choice(len(self.pairs), size=min(len(self.pairs), max_samples),
                                                      replace=False))
        self.policy.eval()
        return float(self.alignment_loss(idx))

    @torch.no_grad()
    def object_fit(self, max_samples: int = 512) -> dict:
        """Object head on (up to ``max_samples``) labelled training steps: mean absolute x / y
        error (m) and yaw error (rad, modulo the 2 pi / k symmetry)."""
        pool = self.real if self.real.object_valid.any() else self.twin
        idx = np.flatnonzero(pool.object_valid)
        if self.policy.object_head is None or not len(idx):
            return {}
        idx = np.sort(np.random.default_rng(0).choice(idx, size=min(len(idx), max_samples), replace=False))
        self.policy.eval()
        preds = []
        for start in range(0, len(idx), 128):
            arrays = pool.batch(idx[start:start + 128])
            preds.append(self.policy.object_head(self.policy.features(
                make_batch(self.policy, arrays, self.task_index))).numpy())
        pred = np.concatenate(preds).astype(np.float64)
        label = pool.object_pose[idx].astype(np.float64)
        mean, std = self.object_xy
        k = self.cfg.object_yaw_harmonic
        xy = pred[:, :2] * std + mean
        dyaw = np.angle(np.exp(1j * (np.arctan2(pred[:, 2], pred[:, 3]) - k * label[:, 2]))) / k
        return {"samples": int(len(idx)), "xy_mae": float(np.abs(xy - label[:, :2]).mean()),
                "yaw_mae": float(np.abs(dyaw).mean()), "yaw_label_std": float(np.std(label[:, 2]))}

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based) under ``sft.lr_schedule``."""
        cfg, base = self.cfg, float(self.cfg.learning_rate)
        if cfg.lr_schedule == "constant":
            return base
        warm = min(cfg.warmup_steps, cfg.steps // 10)    # a short run (--quick) still reaches the rate
        if step < warm:
            return base * (step + 1) / warm
        span = max(cfg.steps - warm - 1, 1)
        t = min(max(step - warm, 0) / span, 1.0)
        final = cfg.lr_final_fraction
        return base * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def train_step(self) -> tuple[float, float, float]:
        self.policy.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate_at(self.step)
        batch, y, real_frac = self._batch()
        objective, loss = self.objective(batch, y)
        if self.align_weight > 0:
            align = self.alignment_loss()
            objective = objective + self.align_weight * align
            self.last_align_loss = float(align.detach())
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.policy)
        self.step += 1
        return float(loss.detach()), grad_norm, real_frac

    @property
    def trained_policy(self) -> VisuomotorPolicy:
        """The weights a checkpoint holds: the moving average (``sft.ema_decay``) or the last step's."""
        if self.ema is not None and self.step > 0:
            return self.ema.module
        return self.policy

    def save(self) -> str:
        meta = {"stage": "sft", "task": self.task, "step": self.step, "alpha": self.cfg.alpha,
                "real_episodes": len(self.real.episodes), "twin_episodes": len(self.twin.episodes),
                "align_weight": self.align_weight, "pair_episodes": len(self.pairs.episodes) if self.pairs else 0,
                "final_loss": self.losses[-1] if self.losses else None}
        sha = save_checkpoint(self.out, self.trained_policy, version=self.version, metadata=meta)
        st = state_path(self.out)
        tmp = st.with_name(f".{st.name}.{os.getpid()}.tmp")
        torch.save({"task": self.task, "step": self.step, "model": self.policy.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "losses": self.losses,
                    "model_config": to_dict(self.model_cfg), "sft_config": to_dict(self.cfg),
                    "norm_stats": self.policy.norm.to_dict(), "generator": self.generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                    "python_rng": random.getstate(),
                    **({"ema": self.ema.state_dict()} if self.ema is not None else {})}, tmp)
        os.replace(tmp, st)
        return sha

    def train(self, steps: Optional[int] = None) -> SFTResult:
        total = int(steps if steps is not None else self.cfg.steps)
        writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.logdir), purge_step=self.step if self.step else None)
        except ImportError:  # pragma: no cover - tensorboard is a declared dependency
            self.log("warning: tensorboard is not installed; no TensorBoard scalars")
        bar = tqdm(total=total, initial=min(self.step, total), desc=f"sft {self.task}", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        t0, s0 = time.perf_counter(), self.step
        sha = None
        try:
            while self.step < total:
                loss, grad_norm, real_frac = self.train_step()
                self.losses.append(loss)
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == total:
                    rate = (self.step - s0) * self.cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss:.3f}")
                    if writer is not None:
                        writer.add_scalar("sft/loss_il", loss, self.step)
                        writer.add_scalar("sft/grad_norm", grad_norm, self.step)
                        writer.add_scalar("sft/real_fraction", real_frac, self.step)
                        writer.add_scalar("sft/samples_per_second", rate, self.step)
                        writer.add_scalar("sft/lr", self.optimizer.param_groups[0]["lr"], self.step)
                        if self.object_weight > 0:
                            writer.add_scalar("sft/loss_object", self.last_object_loss, self.step)
                        if self.align_weight > 0:
                            writer.add_scalar("sft/loss_align", self.last_align_loss, self.step)
                if self.step % self.cfg.save_every == 0 and self.step < total:
                    self.save()
            sha = self.save()
        except KeyboardInterrupt:
            if self.step > s0:
                self.save()
                self.log(f"interrupted at step {self.step}; state saved to {state_path(self.out)} "
                         f"(run the same command again to resume)")
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        elapsed = time.perf_counter() - t0
        rate = (self.step - s0) * self.cfg.batch_size / elapsed if self.step > s0 else float("nan")
        fit = action_fit(self.trained_policy, self.real if len(self.real) else self.twin, self.task)
        if fit:
            self.log(format_action_fit(fit))
        if self.object_weight > 0:
            self.log(format_object_fit(self.object_fit()))
        if self.pairs is not None:
            self.log(f"paired twin/real feature distance (relative to unrelated real images', 1 = as far): "
                     f"{self.alignment_distance():.3f}")
        return SFTResult(self.out, sha or file_sha256(self.out), self.step,
                         self.losses[-1] if self.losses else float("nan"), list(self.losses), rate,
                         self.resumed_from, fit)
