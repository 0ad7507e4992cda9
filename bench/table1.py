#!/usr/bin/env python3
"""The paper's Table I in the sim world: SFT on real demos alone vs real + twin demos.

For one task: record ``--real`` scripted-expert episodes from the ID region of the sim world
(the "real" demos), build a twin of the task from a simulated scan, generate twin demos from
one of the real demos (stage I, ``--method``) over ID and OOD cells, then train one SFT policy
per data mix and evaluate each over the whole grid in the sim world. Mixes (paper Table I):
real only, +30 ID/+30 OOD, +60 ID/+30 OOD, +30 ID/+60 OOD twin demos (``--mixes`` changes
them). The real demos are also replayed in the twin and the twin mixes train with the paired
feature-alignment loss (``sft.align_weight``, config/policy.yaml; ``--set sft.align_weight=0``
turns it off). ``--action-noise M`` records the real demos with a jittering expert (stage I then
starts from a steady demo of the first real demo's start); ``--twin-action-noise M`` jitters the
twin demos' execution the same way (docs/policy.md, "A jittering hand in the demos");
``--twin-approach-error M`` aims each twin demo's approach off and back (demogen approach_error).
``--twin-pace seed`` walks the affine twin demos at the seed demo's pace (demogen pace; names get ``_sp``).
``--sweeps`` also records alignment sweeps: the twin demos' arm paths run in the sim world with
the objects where the real demos had them, replayed in the twin for more alignment pairs
(``twinrl demos sweep``; checkpoints and results get ``_sw``). ``--oracle`` measures what a
perfect twin would give: the twin demos are replaced by sim-world expert demos over the same ID
and OOD regions (tagged as twin demos; no pairs); ``--oracle paths`` keeps the twin demos'
paths but executes and records them in the sim world (its images and physics, every path kept
whether it succeeds there or not).
``--colour-map`` colour-calibrates a copy of the twin (``twin_<task>_cm_...``) against the real
demos before stage I and the pairs (``twinrl twin calibrate``, docs/twin.md; its twin demos,
pairs, twin-mix checkpoints and results get ``_cm`` in their names); ``--appearance`` fits the
twin's appearance network instead (``twinrl twin calibrate --network``; ``_ap``). With either,
``--fit-arm`` first fits the twin's per-joint arm tracking to the real demos (``twinrl twin
calibrate --arm``; names get ``_arm``). Prints ID,
OOD and average success rates with deltas against real-only, and writes ``table1_<task>.json``,
``table1_<task>.png`` (SR per mix) and one heatmap per mix to --out.

    python bench/table1.py --task pick_and_place [--real 30] [--steps 3000] [--batch 64]
        [--rollouts-per-cell 2] [--image-size 128,64] [--mixes 0/0 30/30 60/30 30/60]
        [--method affine] [--seeds 1] [--workers 2] [--root DIR] [--out DIR] [--json]
        [--post-success-steps K] [--action-noise M] [--twin-action-noise M] [--twin-approach-error M]
        [--twin-pace split|seed] [--twin-until KEYFRAME [--real-share-after-cut]]
        [--colour-map | --appearance [--fit-arm]] [--sweeps] [--oracle [demos|paths]] [--set model.KEY=V ...]

Everything (demos, twin, checkpoints) is kept under --root (default: a directory under the
system temp dir named after the task), so a second run reuses what is there: the same
demos and twin, and checkpoints whose training finished with the same model and SFT configs
(an interrupted training resumes; one with other configs is trained again).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import build_twin, calibrated_twin, camera_overrides, first_demo, record_demos

TASKS = ["pick_and_place", "insert_hexagon", "insert_triple_column", "erase_whiteboard"]


def parse_mix(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a mix is ID/OOD twin demo counts like 30/60, got {text!r}") from None
    if a < 0 or b < 0:
        raise argparse.ArgumentTypeError(f"twin demo counts must be >= 0, got {text!r}")
    return a, b


def parse_size(text: str) -> tuple[int, int]:
    try:
        t, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size is THIRD,WRIST like 128,64, got {text!r}") from None
    return t, w


def subset(src: Path, dst: Path, episodes: list) -> Path:
    """A dataset directory holding the given episode files of ``src`` (hard links when possible)."""
    from twinrl_bringup.dataset import Dataset

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in episodes:
        try:
            (dst / p.name).hardlink_to(p)
        except OSError:
            shutil.copy2(p, dst / p.name)
    Dataset(dst)            # builds the manifest, checks the files
    return dst


TOP_UP_ROUNDS = 2          # extra stage I runs for twin demo slots that stayed empty


def training_status(ckpt: Path, model_cfg, sft_cfg) -> str:
    """"finished" when ``ckpt`` was trained to the end with these model and SFT configs (its
    training state holds the SFT config and the step), "unfinished" when such a training was
    interrupted (it resumes), "other" when it is another training or unreadable."""
    import pickle

    import torch

    from twinrl_bringup.config import to_dict
    from twinrl_policy.checkpoint import CheckpointError, load_checkpoint
    from twinrl_policy.sft import saved_sft_config, state_path

    try:
        if load_checkpoint(ckpt).model_config != model_cfg:
            return "other"
        state = torch.load(state_path(ckpt), map_location="cpu", weights_only=False)
        # keys added to the SFT config after the state was written count with their defaults
        if saved_sft_config(state, str(state_path(ckpt))) != to_dict(sft_cfg):
            return "other"
        return "finished" if int(state.get("step", 0)) >= sft_cfg.steps else "unfinished"
    except (CheckpointError, OSError, RuntimeError, AttributeError, EOFError, TypeError, ValueError,
            pickle.UnpicklingError):
        return "other"


def twin_pools(twin_dir: Path, success_only: bool = True) -> dict[str, list]:
    """Twin episodes of ``twin_dir`` by region (the successful ones unless ``success_only`` is
    False), in generation order."""
    from twinrl_bringup.dataset import Dataset

    d = Dataset(twin_dir)
    out = {"id": [], "ood": []}
    for i, entry in enumerate(d.entries):
        if (entry.get("success") or not success_only) and entry.get("region") in out:
            out[entry["region"]].append(d.path(i))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--real", type=int, default=30, help="real (sim-world expert) ID demos")
    ap.add_argument("--mixes", nargs="+", type=parse_mix, default=[(0, 0), (30, 30), (60, 30), (30, 60)],
                    help="twin demos per mix as ID/OOD (0/0 is real only)")
    ap.add_argument("--method", choices=["affine", "plan"], default="affine", help="stage I method")
    ap.add_argument("--steps", type=int, default=3000, help="SFT steps per mix")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=None, help="P(real) per sample (default: config sft.alpha)")
    ap.add_argument("--image-size", type=parse_size, default=(128, 128 // 2),
                    help="third-person,wrist square image sizes of demos and policy")
    ap.add_argument("--rollouts-per-cell", type=int, default=2)
    ap.add_argument("--time-limit", type=int, default=None, help="evaluation steps per episode")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of demos, twin demos, evaluation starts and the "
                                                         "first training run")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per mix (seed, seed+1, ...): rows "
                                                         "report mean and std over them")
    ap.add_argument("--root", type=Path, default=None, help="work directory (kept; reused by a second run)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default: ROOT/results)")
    ap.add_argument("--post-success-steps", type=int, default=0, metavar="K",
                    help="record the real demos K steps past the success (release, retreat)")
    ap.add_argument("--approach-error", type=float, default=0.0, metavar="M",
                    help="the real demos' expert first aims up to M metres off, then corrects "
                         "(twinrl sim record --approach-error)")
    ap.add_argument("--approach-yaw-error", type=float, default=0.0, metavar="RAD",
                    help="same for the heading")
    ap.add_argument("--action-noise", type=float, default=0.0, metavar="M",
                    help="std (m per axis) of noise on the real demos' expert position actions, which "
                         "it corrects the step after (twinrl sim record --action-noise)")
    ap.add_argument("--twin-action-noise", type=float, default=0.0, metavar="M",
                    help="stage I executes the twin demos' paths with that jitter (m std per axis), "
                         "each offset returned the step after (demogen action_noise)")
    ap.add_argument("--twin-approach-error", type=float, default=0.0, metavar="M",
                    help="stage I aims each twin demo's approach off by up to M (m, horizontal) and "
                         "corrects it above the object (demogen approach_error)")
    ap.add_argument("--twin-pace", choices=("split", "seed"), default="split",
                    help="affine twin demos: split each step the map lengthened past the limit (default), or "
                         "walk the seed demo's runs at its pace (demogen pace); seed gets _sp in every name")
    ap.add_argument("--twin-until", default="", metavar="KEYFRAME",
                    help="train the twin mixes on each twin demo up to this stage-I keyframe (sft.twin_until, "
                         "e.g. pre_wipe: the wipe is left to the real demos); checkpoints and results get _untilKEYFRAME")
    ap.add_argument("--real-share-after-cut", action="store_true",
                    help="with --twin-until: the real steps from that keyframe on keep their real-only share of "
                         "each batch, alpha mixes the rest (sft.real_share_after_cut); the mixes get _rs")
    ap.add_argument("--colour-map", action="store_true",
                    help="colour-calibrate the twin against the real demos (twinrl twin calibrate) before "
                         "stage I and the pairs; its twin demos, pairs, checkpoints and results get _cm")
    ap.add_argument("--appearance", action="store_true",
                    help="fit the twin's appearance network against the real demos (twinrl twin calibrate "
                         "--network) before stage I and the pairs; its twin demos, pairs, checkpoints and results "
                         "get _ap")
    ap.add_argument("--fit-arm", action="store_true",
                    help="with --colour-map or --appearance: fit the twin's per-joint arm tracking to the real "
                         "demos first (twinrl twin calibrate --arm); names get _arm after _cm / _ap")
    ap.add_argument("--sweeps", action="store_true",
                    help="alignment sweeps: the twin demos' arm paths run in the sim world (objects where the "
                         "real demos had them) and replayed in the twin, more pairs for the feature alignment")
    ap.add_argument("--oracle", nargs="?", const="demos", choices=["demos", "paths"], default=None,
                    help="upper bounds for the twin mixes (no pairs): 'demos' (the default) trains them on sim-world "
                         "expert demos over the same ID / OOD regions (jittered by --twin-action-noise), a perfect "
                         "twin; 'paths' on the twin demos' own paths executed and recorded in the sim world (its "
                         "images and physics); checkpoints and results get _oracle / _oraclepaths")
    ap.add_argument("--set", action="append", default=[], metavar="model.KEY=V|sft.KEY=V",
                    help="policy / SFT config override for every mix (e.g. sft.object_aux_weight=1.0); "
                         "checkpoints of runs with overrides get their own names")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.twin_until and not args.twin_until.isidentifier():
        ap.error(f"--twin-until must name a keyframe (e.g. pre_wipe), got {args.twin_until!r}")
    if args.real_share_after_cut and not args.twin_until:
        ap.error("--real-share-after-cut needs --twin-until (the keyframe that splits the demos)")
    if args.colour_map and args.appearance:
        ap.error("--colour-map and --appearance are two calibrations of the twin's images; give one")
    if args.fit_arm and not (args.colour_map or args.appearance):
        ap.error("--fit-arm is part of the twin's calibration: give --colour-map or --appearance with it")
    if args.oracle and (args.colour_map or args.appearance or args.sweeps
                        or (args.oracle == "demos" and args.twin_approach_error)):
        ap.error("--oracle replaces the twin demos by sim-world demos: no --colour-map, --appearance, --sweeps "
                 "(or, for --oracle demos, --twin-approach-error) with it")

    from twinrl_policy.config import load_model_config, load_sft_config
    from twinrl_policy.evaluation import evaluate_grid, write_heatmap
    from twinrl_policy.sft import SFTTrainer, state_path
    from twinrl_twin.demogen.generate import generate, load_demogen_config

    progress = sys.stderr.isatty()
    root = args.root or Path(tempfile.gettempdir()) / f"twinrl-table1-{args.task}"
    root.mkdir(parents=True, exist_ok=True)
    out = args.out or root / "results"
    out.mkdir(parents=True, exist_ok=True)
    size = args.image_size
    tag = f"{size[0]}x{size[1]}"
    t_start = time.monotonic()

    # 1. "real" demos: scripted expert in the sim world, ID region
    steady = f"_post{args.post_success_steps}" if args.post_success_steps else ""
    if args.approach_error or args.approach_yaw_error:
        steady += f"_ae{args.approach_error * 1000:g}mm{args.approach_yaw_error:g}rad"
    post = steady + (f"_an{args.action_noise * 1000:g}mm" if args.action_noise else "")
    twin_jitter = f"_tn{args.twin_action_noise * 1000:g}mm" if args.twin_action_noise else ""
    if args.twin_approach_error:
        twin_jitter += f"_ta{args.twin_approach_error * 1000:g}mm"
    if args.twin_pace != "split":
        twin_jitter += "_sp"
    calib = ("_cm" if args.colour_map else "_ap" if args.appearance else "") + ("_arm" if args.fit_arm else "")
    gen_post = post + twin_jitter           # how twin demos are made (jitter, approach): no calibration or oracle
    method = "" if args.method == "affine" else f"_{args.method}"     # stage I's method, when not the default
    twin_jitter += method + calib + {None: "", "demos": "_oracle", "paths": "_oraclepaths"}[args.oracle]
    twin_post = post + twin_jitter
    if args.twin_until:                     # which steps of the twin demos train: the mixes' checkpoints only
        twin_jitter += f"_until{args.twin_until}" + ("_rs" if args.real_share_after_cut else "")
    real = record_demos(args.task, root / f"real_{args.real}_{tag}_s{args.seed}{post}", args.real, "id",
                        seed=10_000 + args.seed, image_size=size, progress=progress,
                        post_success_steps=args.post_success_steps, approach_error=args.approach_error,
                        approach_yaw_error=args.approach_yaw_error, action_noise=args.action_noise)
    from twinrl_bringup.dataset import Dataset
    seed_demo, first_seed = first_demo(real)
    if args.action_noise and not args.oracle:
        # stage I starts from one steady demo of the same start: a jittered seed's path would be
        # copied into every twin demo (and its presses into a surface are collisions in the twin)
        seed_demo = Dataset(record_demos(args.task, root / f"seed_demo_{tag}_s{args.seed}{steady}", 1, "id",
                                         seed=first_seed, image_size=size, max_tries=20,
                                         post_success_steps=args.post_success_steps,
                                         approach_error=args.approach_error,
                                         approach_yaw_error=args.approach_yaw_error)).path(0)

    # 2. twin demos from one real demo, enough for the largest mix
    n_id = max(m[0] for m in args.mixes)
    n_ood = max(m[1] for m in args.mixes)
    twin_info = None
    pools = {"id": [], "ood": []}
    if args.oracle == "demos" and (n_id or n_ood):
        # a perfect twin: the twin demos' regions recorded by the sim world's expert, tagged as twin demos
        for region, n, off in (("id", n_id, 20_000), ("ood", n_ood, 30_000)):
            if n:
                d = record_demos(args.task, root / f"oracle_{region}_{n}_{tag}_s{args.seed}{gen_post}", n, region,
                                 seed=off + args.seed, image_size=size, progress=progress,
                                 post_success_steps=args.post_success_steps, action_noise=args.twin_action_noise,
                                 source="twin")
                pools[region] = twin_pools(d)[region]
    elif n_id or n_ood:
        twin = build_twin(args.task, root)
        if calib:
            twin = calibrated_twin(twin, real, root / f"{twin.name}{calib}_{tag}_s{args.seed}{post}", progress,
                                   network=args.appearance, arm=args.fit_arm)
        twin_dir = root / f"twin_demos_{args.method}_{tag}_s{args.seed}{gen_post}{calib}"
        pools = twin_pools(twin_dir) if twin_dir.exists() else pools
        # every slot is needed: more tries per slot than the product's default (the first tries
        # are the same, so runs that needed no more are unchanged), and slots still empty after
        # them are topped up in new cells (another slot seed), up to TOP_UP_ROUNDS times
        dg_cfg = load_demogen_config(overrides=[f"action_noise={args.twin_action_noise}",
                                                f"approach_error={args.twin_approach_error}",
                                                f"pace={args.twin_pace}"])
        dg_cfg.max_attempts = max(dg_cfg.max_attempts, 8)
        for rnd in range(TOP_UP_ROUNDS + 1):
            need_id, need_ood = max(0, n_id - len(pools["id"])), max(0, n_ood - len(pools["ood"]))
            if not (need_id or need_ood):
                break
            twin_info = generate(twin, seed_demo, twin_dir, need_id, need_ood, method=args.method, config=dg_cfg,
                                 workers=args.workers, seed=args.seed + 1000 * rnd,
                                 camera_overrides=camera_overrides(size), progress=progress)
            pools = twin_pools(twin_dir)
            print(f"twin demos{' (top-up)' if rnd else ''}: {twin_info['generated']}/{twin_info['requested']} "
                  f"generated, {twin_info['demos_per_minute']:.0f}/min, rejections {twin_info['rejections']}",
                  flush=True)
        if args.oracle == "paths":
            # the twin demos' paths as the sim world makes of them: its images, its physics
            from twinrl_twin.demogen.replay import rerecord_paths
            from twinrl_twin.sim import make_env

            odir = root / f"oracle_paths_{n_id}_{n_ood}_{tag}_s{args.seed}{gen_post}{method}"
            chosen = pools["id"][:n_id] + pools["ood"][:n_ood]
            if not odir.exists() or len(Dataset(odir)) < len(chosen):
                shutil.rmtree(odir, ignore_errors=True)
                env = make_env(args.task, render=True, camera_overrides=camera_overrides(size))
                try:
                    info = rerecord_paths(env, [str(p) for p in chosen], odir, progress=progress)
                finally:
                    env.close()
                print(f"twin demo paths in the sim world: {info['successes']}/{info['count']} succeed there",
                      flush=True)
            pools = twin_pools(odir, success_only=False)      # every path, whether the sim succeeds or not

    # 3. one SFT policy per mix, 4. grid evaluation in the sim world
    model_over = [f"third_person_size=[{size[0]},{size[0]}]", f"wrist_size=[{size[1]},{size[1]}]"]
    sft_over = [f"steps={args.steps}", f"batch_size={args.batch}"]
    for item in args.set:
        section, _, rest = item.partition(".")
        if section not in ("model", "sft") or "=" not in rest:
            ap.error(f"--set {item!r}: expected model.KEY=VALUE or sft.KEY=VALUE")
        (model_over if section == "model" else sft_over).append(rest)
    ckpt_tag = tag + post
    if args.set:
        import hashlib

        ckpt_tag += "_" + hashlib.sha1("\n".join(sorted(args.set)).encode()).hexdigest()[:8]
    if args.alpha is not None:              # its own checkpoints: the default alpha's are kept, not retrained
        sft_over.append(f"alpha={args.alpha}")
        ckpt_tag += f"_alpha{args.alpha:g}"
    pair_dirs = []
    if load_sft_config(None, sft_over).align_weight > 0 and (n_id or n_ood) and not args.oracle:
        # the real demos replayed in the twin: pairs for the feature-alignment loss (twin mixes only)
        from twinrl_twin.demogen.replay import pair_demos

        pdir = root / f"pairs_{tag}_s{args.seed}{post}{calib}"
        if not pdir.exists() or len(Dataset(pdir)) < args.real:
            if pdir.exists():
                shutil.rmtree(pdir)
            info = pair_demos(twin, real, pdir, camera_overrides=camera_overrides(size), progress=progress)
            print(f"pairs: {info['count']} real demos replayed in the twin ({info['twin_successes']} succeed there)",
                  flush=True)
        pair_dirs = [pdir]
    sweep_dirs = []
    if args.sweeps and pair_dirs:
        from twinrl_twin.demogen.replay import pair_demos, sweep_paths
        from twinrl_twin.sim import make_env

        sdir = root / f"sweeps_{n_id}_{n_ood}_{tag}_s{args.seed}{twin_post}"
        spdir = root / f"sweep_pairs_{n_id}_{n_ood}_{tag}_s{args.seed}{twin_post}"
        paths = pools["id"][:n_id] + pools["ood"][:n_ood]
        if not sdir.exists() or len(Dataset(sdir)) < len(paths):
            shutil.rmtree(sdir, ignore_errors=True)
            shutil.rmtree(spdir, ignore_errors=True)
            env = make_env(args.task, render=True, camera_overrides=camera_overrides(size))
            try:
                sweep_paths(env, [str(p) for p in paths], real, sdir, progress=progress)
            finally:
                env.close()
        if not spdir.exists() or len(Dataset(spdir)) < len(Dataset(sdir)):
            shutil.rmtree(spdir, ignore_errors=True)
            info = pair_demos(twin, sdir, spdir, camera_overrides=camera_overrides(size), progress=progress)
            print(f"alignment sweeps: {info['count']} twin demo paths run in the sim world and replayed in the twin",
                  flush=True)
        sweep_dirs, pair_dirs = [sdir], pair_dirs + [spdir]
        twin_jitter += "_sw"                # the twin mixes' checkpoints and results; real only's stay
    rows = []
    for mid, mood in args.mixes:
        name = "real only" if (mid, mood) == (0, 0) else f"+{mid} ID / +{mood} OOD twin"
        if len(pools["id"]) < mid or len(pools["ood"]) < mood:
            print(f"{name}: skipped, only {len(pools['id'])} ID / {len(pools['ood'])} OOD twin demos were kept",
                  flush=True)
            continue
        data = [real]
        if mid or mood:
            data.append(subset(pools["id"][0].parent, root / f"mix_{mid}_{mood}_{tag}{twin_post}",
                               pools["id"][:mid] + pools["ood"][:mood]))
        model_cfg = load_model_config(None, model_over)
        runs = []
        for k in range(args.seeds):              # one policy per training seed
            seed = args.seed + k
            ckpt = root / f"sft_{mid}_{mood}_{ckpt_tag}{twin_jitter if (mid or mood) else ''}_{args.steps}_s{seed}.ckpt"
            sft_cfg = load_sft_config(None, sft_over + [f"seed={seed}"]
                                      + ([f"twin_until={args.twin_until}"] if args.twin_until and (mid or mood) else [])
                                      + (["real_share_after_cut=true"] if args.real_share_after_cut and (mid or mood)
                                         else []))
            status = training_status(ckpt, model_cfg, sft_cfg) if ckpt.exists() else "none"
            if status == "other":
                print(f"{ckpt.name}: trained with another model or SFT config (or unreadable), training again",
                      file=sys.stderr)
                ckpt.unlink()
                state_path(ckpt).unlink(missing_ok=True)
            t0 = time.monotonic()
            if status != "finished":             # new, or resumed from its training state
                trainer = SFTTrainer(args.task, data, ckpt, model_cfg, sft_cfg, progress=progress,
                                     log=lambda s: print(s, file=sys.stderr),
                                     pair_dirs=pair_dirs if (mid or mood) else (),
                                     sweep_dirs=sweep_dirs if (mid or mood) else ())
                res = trainer.train()
                train_s, sps = time.monotonic() - t0, res.samples_per_second
            else:
                train_s, sps = float("nan"), float("nan")
            t1 = time.monotonic()
            res = evaluate_grid(ckpt, args.task, args.rollouts_per_cell, world="sim", workers=args.workers,
                                seed=args.seed, time_limit=args.time_limit, progress=progress)
            # results carry the checkpoint's variant (noise, --set, --alpha): runs of one root do not
            # overwrite each other's
            variant = ckpt_tag[len(tag):] + (twin_jitter if (mid or mood) else "")
            stem = f"table1_{args.task}_{mid}_{mood}{variant}" + (f"_s{seed}" if args.seeds > 1 else "")
            (out / f"{stem}.json").write_text(res.to_json())
            write_heatmap(res, out / f"{stem}.png")
            runs.append({"seed": seed, "id_sr": res.id_success_rate, "ood_sr": res.ood_success_rate,
                         "avg_sr": res.average_success_rate, "episodes": len(res.episodes), "train_s": train_s,
                         "samples_per_s": sps, "eval_s": time.monotonic() - t1, "checkpoint": str(ckpt)})
            print(f"{name:<26} seed {seed}: ID {res.id_success_rate:.2f}  OOD {res.ood_success_rate:.2f}  "
                  f"avg {res.average_success_rate:.2f}  (train {train_s:.0f} s, eval {runs[-1]['eval_s']:.0f} s)",
                  flush=True)
        row = {"mix": name, "twin_id": mid, "twin_ood": mood, "seeds": len(runs),
               "episodes": int(sum(r["episodes"] for r in runs)), "runs": runs}
        for key in ("id_sr", "ood_sr", "avg_sr"):
            v = np.array([r[key] for r in runs], float)
            row[key], row[key + "_std"] = float(v.mean()), float(v.std())
        rows.append(row)

    base = next((r for r in rows if (r["twin_id"], r["twin_ood"]) == (0, 0)), None)
    print(f"\nTable I, {args.task}, sim world: {args.real} real ID demos, {args.steps} SFT steps of "
          f"{args.batch}, images {tag}, {args.rollouts_per_cell} rollouts per cell, {args.seeds} training "
          f"seed(s) per row (mean{' +- std' if args.seeds > 1 else ''})")
    print(f"{'data':<26} {'ID SR':>18} {'OOD SR':>18} {'avg SR':>18}")
    for r in rows:
        cells = []
        for k in ("id_sr", "ood_sr", "avg_sr"):
            sd = f"+-{r[k + '_std'] * 100:.0f}" if r["seeds"] > 1 else ""
            d = "" if base is None or r is base else f" ({(r[k] - base[k]) * 100:+.0f})"
            cells.append(f"{r[k] * 100:5.1f}{sd}{d}")
        print(f"{r['mix']:<26} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    print(f"total {time.monotonic() - t_start:.0f} s")
    summary = {"task": args.task, "real": args.real, "steps": args.steps, "batch": args.batch,
               "image_size": list(size), "rollouts_per_cell": args.rollouts_per_cell, "method": args.method,
               "rows": rows, "twin_generation": twin_info}
    run_variant = ckpt_tag[len(tag):] + twin_jitter
    (out / f"table1_{args.task}{run_variant}.json").write_text(json.dumps(summary, indent=1, default=str))
    if rows:
        plot(rows, args.task, out / f"table1_{args.task}{run_variant}.png")
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


def plot(rows, task, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.6))
    for i, (k, label) in enumerate((("id_sr", "ID"), ("ood_sr", "OOD"), ("avg_sr", "average"))):
        ax.bar(x + (i - 1) * 0.27, [100 * r[k] for r in rows], 0.27, label=label,
               yerr=[100 * r[k + "_std"] for r in rows] if any(r["seeds"] > 1 for r in rows) else None)
    ax.set_xticks(x, [r["mix"].replace(" twin", "").replace(" / ", "\n") for r in rows])
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"SFT, real vs real + twin demos: {task} (sim world)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
