"""bench/table1.py end to end on a tiny configuration: expert demos, a twin from a simulated
scan, stage I twin demos, one SFT policy per mix, grid evaluation, the table, JSON and PNG."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_table1_tiny_run(tmp_path, ros_env):
    cmd = [sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place", "--real", "2",
           "--mixes", "0/0", "2/1", "--seeds", "2", "--steps", "5", "--batch", "4", "--rollouts-per-cell", "1",
           "--time-limit", "5", "--workers", "1", "--image-size", "64,32", "--root", str(tmp_path / "w"),
           "--json"]
    r = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = {(row["twin_id"], row["twin_ood"]): row for row in summary["rows"]}
    assert set(rows) == {(0, 0), (2, 1)}
    for row in rows.values():
        assert row["seeds"] == 2 and [r["seed"] for r in row["runs"]] == [0, 1]
        assert row["episodes"] == 48                       # 4 x 6 cells, one rollout each, 2 seeds
        for k in ("id_sr", "ood_sr", "avg_sr"):
            v = [r[k] for r in row["runs"]]
            assert all(0.0 <= x <= 1.0 for x in v)
            assert row[k] == pytest.approx(sum(v) / 2) and row[k + "_std"] == pytest.approx(abs(v[0] - v[1]) / 2)
    # one checkpoint per training seed
    assert len(list((tmp_path / "w").glob("sft_2_1_*_s*.ckpt"))) == 2
    assert "real only" in r.stdout and "+2 ID / +1 OOD twin" in r.stdout
    out = tmp_path / "w" / "results"
    assert (out / "table1_pick_and_place.png").stat().st_size > 1000
    assert (out / "table1_pick_and_place_2_1_s1.png").exists()
    # the twin mix trained on 2 ID + 1 OOD twin demos from the twin, next to the 2 real ones
    mix = [p for p in (tmp_path / "w").glob("mix_2_1_*")][0]
    from twinrl_bringup.dataset import Dataset
    regions = sorted(Dataset(mix).entries, key=lambda e: e["region"])
    assert [e["region"] for e in regions] == ["id", "id", "ood"]
    assert all(e["episode_source"] == "twin" for e in regions)
    # a second run reuses demos, twin demos and checkpoints (no training)
    r2 = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "SFT pick_and_place" not in r2.stderr
    # the twin mix trains with the feature alignment (config default) on the real demos replayed
    # in the twin; --set sft.align_weight=0 turns it off (a checkpoint of its own)
    assert "pairs: 2 real demos replayed in the twin" in r.stdout
    assert "paired feature alignment on" in r.stderr and "paired twin/real feature distance" in r.stderr
    assert len(Dataset(next((tmp_path / "w").glob("pairs_*")))) == 2
    assert "colour map" not in r.stdout and not list((tmp_path / "w").glob("twin_*_cm_*"))
    r3 = subprocess.run(cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--set", "sft.align_weight=0"]
                        + cmd[cmd.index("--steps"):], env=ros_env, capture_output=True, text=True, timeout=600)
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    assert "SFT pick_and_place" in r3.stderr and "paired feature alignment" not in r3.stderr
    assert len(list((tmp_path / "w").glob("sft_2_1_*_s0.ckpt"))) == 2
    # another alpha trains checkpoints of its own and keeps the default alpha's
    default_ckpt = next((tmp_path / "w").glob("sft_2_1_*_5_s0.ckpt"))
    before = default_ckpt.read_bytes()
    cmd4 = cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--alpha", "0.3"] + cmd[cmd.index("--steps"):]
    r4 = subprocess.run(cmd4, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r4.returncode == 0, r4.stderr[-3000:]
    assert "SFT pick_and_place" in r4.stderr and "trained with another" not in r4.stderr
    alpha_ckpt = next((tmp_path / "w").glob("sft_2_1_*_alpha0.3_5_s0.ckpt"))
    assert default_ckpt.read_bytes() == before
    # its results are written beside the default alpha's, not over them
    assert (out / "table1_pick_and_place_2_1_alpha0.3.json").exists() and (out / "table1_pick_and_place_alpha0.3.png").exists()
    assert (out / "table1_pick_and_place_2_1_s1.png").exists() and (out / "table1_pick_and_place.png").exists()
    # a checkpoint whose training state does not match (here: unreadable) is trained again, not reused
    from twinrl_policy.sft import state_path
    state_path(alpha_ckpt).write_bytes(b"not a training state")
    r4 = subprocess.run(cmd4, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r4.returncode == 0, r4.stderr[-3000:]
    assert "trained with another model or SFT config" in r4.stderr and "SFT pick_and_place" in r4.stderr
    # real demos with a jittering expert (--action-noise): stage I starts from a steady demo of
    # the first real demo's start, not from that jittered demo; --twin-action-noise jitters the
    # twin demos' execution; --colour-map calibrates the twin's colours first; --sweeps adds pairs
    r5 = subprocess.run(cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--action-noise", "0.003",
                                                      "--twin-action-noise", "0.002", "--colour-map", "--sweeps"]
                        + cmd[cmd.index("--steps"):], env=ros_env, capture_output=True, text=True, timeout=600)
    assert r5.returncode == 0, r5.stdout[-3000:] + r5.stderr[-3000:]
    noisy = Dataset(next((tmp_path / "w").glob("real_2_*_an3mm")))
    steady = Dataset(next((tmp_path / "w").glob("seed_demo_*")))
    assert len(noisy) == 2 and len(steady) == 1 and "an3mm" not in steady.root.name
    from twinrl_bringup.dataset import load_episode
    # the first real demo: the lowest seed (two demos recorded in one second sort at random)
    first = min((load_episode(noisy.path(i), images=False) for i in range(len(noisy))),
                key=lambda e: e.initial_configuration["seed"])
    seed = load_episode(steady.path(0), images=False)
    assert first.extra["action_noise"] == 0.003 and seed.extra["action_noise"] == 0.0
    assert first.initial_configuration == seed.initial_configuration
    twin_demos = Dataset(next((tmp_path / "w").glob("twin_demos_*_an3mm_tn2mm_cm")))
    extras = [load_episode(twin_demos.path(i), images=False).extra for i in range(len(twin_demos))]
    assert {e["seed_demo"] for e in extras} == {seed.episode_id}
    assert {e["action_noise"] for e in extras} == {0.002}
    assert len(list((tmp_path / "w").glob("sft_2_1_*_an3mm_tn2mm_cm_sw_5_s0.ckpt"))) == 1
    # --sweeps: the 3 twin demos' paths run in the sim world and replayed in the twin, more pairs
    sweeps = Dataset(next((tmp_path / "w").glob("sweeps_2_1_*_an3mm_tn2mm_cm")))
    assert len(sweeps) == 3 and all(e["episode_source"] == "real" for e in sweeps.entries)
    assert len(Dataset(next((tmp_path / "w").glob("sweep_pairs_2_1_*_an3mm_tn2mm_cm")))) == 3
    assert "alignment sweeps: 3 twin demo paths" in r5.stdout and "of them of alignment sweeps" in r5.stderr
    # --colour-map: stage I and the pairs ran in a copy of the twin colour-calibrated on the
    # real demos (the pairs in a directory of their own); the twin itself is left as built
    assert "colour map: third_person |twin - real|" in r5.stdout
    assert (tmp_path / "w" / "twin_pick_and_place_cm_64x32_s0_an3mm" / "colour_map.npz").is_file()
    assert not (tmp_path / "w" / "twin_pick_and_place" / "colour_map.npz").exists()
    assert len(list((tmp_path / "w").glob("pairs_*_an3mm_cm"))) == 1
    # another stage I method: twin demos, mix, checkpoint and results of its own
    r6 = subprocess.run(cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--method", "plan"]
                        + cmd[cmd.index("--steps"):], env=ros_env, capture_output=True, text=True, timeout=600)
    assert r6.returncode == 0, r6.stdout[-3000:] + r6.stderr[-3000:]
    assert "SFT pick_and_place" in r6.stderr
    assert extras and all(e["generator"] == "affine" for e in extras)
    planned = Dataset(next((tmp_path / "w").glob("twin_demos_plan_*")))
    assert {load_episode(planned.path(i), images=False).extra["generator"] for i in range(len(planned))} == {"plan"}
    assert len(list((tmp_path / "w").glob("sft_2_1_*_plan_5_s0.ckpt"))) == 1 and default_ckpt.read_bytes() == before
    assert len(Dataset(next((tmp_path / "w").glob("mix_2_1_*_plan")))) == 3
    assert (out / "table1_pick_and_place_2_1_plan.json").exists()
    # --twin-until: the twin mix trains on the twin demos up to a keyframe, a checkpoint of its own
    r7 = subprocess.run(cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--twin-until", "lift"]
                        + cmd[cmd.index("--steps"):], env=ros_env, capture_output=True, text=True, timeout=600)
    assert r7.returncode == 0, r7.stdout[-3000:] + r7.stderr[-3000:]
    assert "twin-demo steps from keyframe 'lift' on (sft.twin_until)" in r7.stderr
    assert len(list((tmp_path / "w").glob("sft_2_1_*_untillift_5_s0.ckpt"))) == 1 and default_ckpt.read_bytes() == before
    assert (out / "table1_pick_and_place_2_1_untillift.json").exists()
    # ... and with the real steps from the keyframe on at their real-only share, its own again
    r8 = subprocess.run(cmd[:cmd.index("--mixes")] + ["--mixes", "2/1", "--seeds", "1", "--twin-until", "lift",
                                                      "--real-share-after-cut"]
                        + cmd[cmd.index("--steps"):], env=ros_env, capture_output=True, text=True, timeout=600)
    assert r8.returncode == 0, r8.stdout[-3000:] + r8.stderr[-3000:]
    assert "real steps lie from keyframe 'lift' on: drawn with that share" in r8.stderr
    assert len(list((tmp_path / "w").glob("sft_2_1_*_untillift_rs_5_s0.ckpt"))) == 1
    assert (out / "table1_pick_and_place_2_1_untillift_rs.json").exists()


@pytest.mark.slow
def test_table1_oracle_mix_uses_sim_world_demos_as_its_twin_demos(tmp_path, ros_env):
    """--oracle: the twin mix's twin demos are sim-world expert demos over the same regions,
    tagged as twin demos; no twin is built, no pairs are recorded, and its checkpoints and
    results carry _oracle."""
    from twinrl_bringup.dataset import Dataset, load_episode

    cmd = [sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place", "--real", "2",
           "--mixes", "2/1", "--steps", "5", "--batch", "4", "--rollouts-per-cell", "1", "--time-limit", "5",
           "--workers", "1", "--image-size", "64,32", "--root", str(tmp_path / "w"), "--oracle",
           "--twin-action-noise", "0.002", "--json"]
    r = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w = tmp_path / "w"
    assert not list(w.glob("twin_*")) and not list(w.glob("pairs_*")) and not list(w.glob("seed_demo_*"))
    oracle_id = Dataset(next(w.glob("oracle_id_2_*_tn2mm")))
    oracle_ood = Dataset(next(w.glob("oracle_ood_1_*_tn2mm")))
    assert [e["region"] for e in oracle_id.entries] == ["id", "id"] and [e["region"] for e in oracle_ood.entries] == ["ood"]
    ep = load_episode(oracle_ood.path(0), images=False)
    assert ep.is_success and ep.extra["action_noise"] == 0.002 and set(ep.source.tolist()) == {1}   # SOURCE_TWIN
    real = Dataset(next(w.glob("real_2_*")))
    assert all(e["episode_source"] == "demo" for e in real.entries)
    mix = Dataset(next(w.glob("mix_2_1_*_oracle")))
    assert sorted(e["region"] for e in mix.entries) == ["id", "id", "ood"]
    assert all(e["episode_source"] == "twin" for e in mix.entries)
    assert "real steps (2 episodes)" in r.stderr and "twin steps (3 episodes)" in r.stderr
    assert "feature alignment off" in r.stderr
    assert len(list(w.glob("sft_2_1_*_tn2mm_oracle_5_s0.ckpt"))) == 1
    assert (w / "results" / "table1_pick_and_place_2_1_tn2mm_oracle.json").exists()
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(row["twin_id"], row["twin_ood"]) for row in summary["rows"]] == [(2, 1)]
    bad = subprocess.run(cmd + ["--appearance"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--oracle replaces the twin demos" in bad.stderr

    # --oracle paths: the twin demos are made in the twin, then their paths executed and recorded
    # in the sim world (its images, the actions it was given), whether they succeed there or not
    rp = subprocess.run(cmd[:cmd.index("--oracle")] + ["--oracle", "paths"] + cmd[cmd.index("--oracle") + 1:],
                        env=ros_env, capture_output=True, text=True, timeout=600)
    assert rp.returncode == 0, rp.stdout[-3000:] + rp.stderr[-3000:]
    twin_demos = Dataset(next(w.glob("twin_demos_*_tn2mm")))
    paths = Dataset(next(w.glob("oracle_paths_2_1_*_tn2mm")))
    assert len(paths) == 3 and "twin demo paths in the sim world:" in rp.stdout
    made = {e["episode_id"]: e for e in twin_demos.entries}
    for i in range(len(paths)):
        ep = load_episode(paths.path(i))
        src = made[ep.extra["path_of"]]
        assert ep.extra["generator"] == "rerecord" and ep.episode_source == 1 and set(ep.source.tolist()) == {1}
        assert ep.length == src["length"] and np.isfinite(ep.actions).all()
        assert ep.observations["third_person"].shape[1:3] == (64, 64)
        # the same steps as the path, so its keyframes (sft.twin_until) hold and are kept
        assert ep.extra["keyframes"] == load_episode(twin_demos.path(twin_demos.entries.index(src)),
                                                     images=False).extra["keyframes"]
    mix = Dataset(next(w.glob("mix_2_1_*_oraclepaths")))
    assert {e["episode_id"] for e in mix.entries} == {e["episode_id"] for e in paths.entries}
    assert len(list(w.glob("sft_2_1_*_tn2mm_oraclepaths_5_s0.ckpt"))) == 1
    assert not list(w.glob("pairs_*"))


def test_table1_rejects_a_bad_mix_or_seed_count(ros_env):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place",
                        "--mixes", "30-60"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "a mix is ID/OOD twin demo counts like 30/60, got '30-60'" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place",
                        "--seeds", "0"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--seeds must be >= 1, got 0" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place",
                        "--twin-until", "pre place"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--twin-until must name a keyframe (e.g. pre_wipe), got 'pre place'" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place",
                        "--real-share-after-cut"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--real-share-after-cut needs --twin-until" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "table1.py"), "--task", "pick_and_place",
                        "--fit-arm"], env=ros_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--fit-arm is part of the twin's calibration" in r.stderr


def test_first_demo_is_the_lowest_seed_whatever_the_file_order(tmp_path):
    """bench/common.first_demo: the episode recorded from the lowest seed, not the first file
    (ids of episodes written in one second sort by their random suffix)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from common import first_demo
    from test_dataset import make_episode

    from twinrl_bringup.dataset import DatasetWriter, load_episode

    writer = DatasetWriter(tmp_path / "d")
    for seed in (10_004, 10_002, 10_007):
        ep = make_episode(images=False, seed=seed)
        ep.episode_id = f"pick_and_place-20261122T000000-{seed % 7:08x}"   # one second, suffix order
        writer.write_episode(ep)
    path, seed = first_demo(tmp_path / "d")
    assert seed == 10_002 and load_episode(path, images=False).initial_configuration["seed"] == 10_002
    with pytest.raises(RuntimeError, match="no episodes"):
        (tmp_path / "e").mkdir()
        first_demo(tmp_path / "e")


def test_training_status_counts_later_sft_keys_at_their_defaults(tmp_path):
    """A checkpoint trained before a key joined the SFT config (e.g. sft.ema_decay) is the same
    training as one with that key at its default, and another one with the key set otherwise."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from policy_fixtures import tiny_model_config
    from table1 import training_status

    from twinrl_bringup.config import to_dict
    from twinrl_policy.checkpoint import save_checkpoint
    from twinrl_policy.config import SFTConfig
    from twinrl_policy.model import VisuomotorPolicy
    from twinrl_policy.sft import state_path

    model_cfg = tiny_model_config(tasks=["pick_and_place"])
    ckpt = tmp_path / "p.ckpt"
    save_checkpoint(ckpt, VisuomotorPolicy(model_cfg), version=1)
    cfg = SFTConfig(steps=20)

    def state(step, **sft):
        torch.save({"task": "pick_and_place", "step": step, "sft_config": sft}, state_path(ckpt))

    written = to_dict(cfg)
    older = {k: v for k, v in written.items() if k != "ema_decay"}       # before the key existed
    state(20, **older)
    assert training_status(ckpt, model_cfg, cfg) == "finished"
    assert training_status(ckpt, model_cfg, SFTConfig(steps=20, ema_decay=0.99)) == "other"
    state(10, **older)
    assert training_status(ckpt, model_cfg, cfg) == "unfinished"
    state(20, **dict(written, alpha=written["alpha"] / 2))
    assert training_status(ckpt, model_cfg, cfg) == "other"
    state(20, **dict(written, no_such_key=1))                              # unknown key: not this training
    assert training_status(ckpt, model_cfg, cfg) == "other"
    state(20, **written)
    assert training_status(ckpt, model_cfg, cfg) == "finished"
    assert training_status(ckpt, tiny_model_config(tasks=["erase_whiteboard"]), cfg) == "other"
