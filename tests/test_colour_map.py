"""Colour calibration of the twin: the fit recovers a known per-colour change, leaves unseen
colours alone, round-trips through its file and refuses corrupt ones; `twinrl twin
calibrate` fits a twin against real demos replayed in it, and the twin then draws with it."""
from __future__ import annotations

import json

import shutil
import subprocess

import numpy as np
import pytest

from twinrl_twin.colour_map import (ColourMapError, FitConfig, fit_colour_map, load_colour_map,
                                    mean_abs_difference, save_colour_map)
from twin_fixtures import assert_drawn_through, first_frames, run_calibrate

TAN, RED, GREY = (193, 155, 118), (204, 49, 37), (90, 90, 95)
REAL = {TAN: (184, 149, 113), RED: (243, 57, 43), GREY: (90, 90, 95)}


def scene(rng, n=6, size=32):
    """Twin images of tan with a red block and a grey band; the real images of the same moments
    with the colours of REAL, shot noise, and a block one pixel off (edges that do not align)."""
    twin = np.empty((n, size, size, 3), np.uint8)
    real = np.empty_like(twin)
    for k in range(n):
        t = np.empty((size, size, 3), np.int32)
        r = np.empty_like(t)
        t[:], r[:] = TAN, REAL[TAN]
        t[-6:], r[-6:] = GREY, REAL[GREY]
        y, x = rng.integers(2, size - 14, 2)
        t[y:y + 6, x:x + 6] = RED
        r[y + 1:y + 7, x:x + 6] = REAL[RED]
        twin[k] = t
        real[k] = np.clip(r + rng.normal(0, 2, r.shape), 0, 255)
    return twin, real


def test_fit_recovers_a_per_colour_change_and_leaves_unseen_colours():
    rng = np.random.default_rng(0)
    twin, real = scene(rng)
    cmap = fit_colour_map([("wrist", twin, real)], FitConfig(min_samples=20))
    out = cmap.apply("wrist", twin)
    for c_twin, c_real in REAL.items():
        mask = np.all(twin == c_twin, axis=-1)
        got = out[mask].mean(axis=0)
        assert np.abs(got - c_real).max() <= 1.5, (c_twin, got, c_real)
    before, after = mean_abs_difference(None, [("wrist", twin, real)]), mean_abs_difference(cmap, [("wrist", twin, real)])
    assert after["wrist"] < 0.4 * before["wrist"], (before, after)
    # a colour no pair showed (blue) is drawn as it was; an unknown camera is left alone
    blue = np.full((4, 4, 3), (20, 40, 230), np.uint8)
    assert np.array_equal(cmap.apply("wrist", blue), blue)
    assert np.array_equal(cmap.apply("third_person", twin[0]), twin[0])
    # the lookup table agrees with the exact interpolation where the offsets are flat
    exact = np.clip(np.rint(twin[0] + cmap.interpolated_offset("wrist", twin[0])), 0, 255)
    assert np.abs(exact - out[0]).max() <= 1


def test_bad_input_is_named():
    rng = np.random.default_rng(1)
    twin, real = scene(rng, n=2)
    with pytest.raises(ColourMapError, match="third_person.*one shape"):
        fit_colour_map([("third_person", twin, real[:, :16])])
    with pytest.raises(ColourMapError, match="no paired images"):
        fit_colour_map([])
    with pytest.raises(ColourMapError, match="levels"):
        fit_colour_map([("wrist", twin, real)], FitConfig(levels=10))
    cmap = fit_colour_map([("wrist", twin, real)], FitConfig(min_samples=5))
    with pytest.raises(ColourMapError, match="wrist.*uint8"):
        cmap.apply("wrist", twin.astype(np.float32))


def test_file_round_trip_and_corrupt_files(tmp_path):
    rng = np.random.default_rng(2)
    twin, real = scene(rng)
    cmap = fit_colour_map([("wrist", twin, real), ("third_person", real, twin)], FitConfig(min_samples=20))
    path = save_colour_map(tmp_path / "colour_map.npz", cmap)
    back = load_colour_map(path)
    assert back.cameras == ["third_person", "wrist"] and back.levels == 16 and back.min_samples == 20
    for c in back.cameras:
        assert np.array_equal(back.apply(c, twin), cmap.apply(c, twin))

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ColourMapError, match="truncated.npz: unreadable"):
        load_colour_map(truncated)
    arrays = dict(np.load(path))
    bad = dict(arrays, **{"offsets.wrist": np.full((16 ** 3, 3), np.nan, np.float32)})
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(ColourMapError, match="nan.npz: offsets.wrist.*finite"):
        load_colour_map(tmp_path / "nan.npz")
    bad = dict(arrays, **{"offsets.wrist": np.zeros((10, 3), np.float32)})
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ColourMapError, match="shape.npz: offsets.wrist: expected"):
        load_colour_map(tmp_path / "shape.npz")
    np.savez(tmp_path / "empty.npz", levels=np.array(16), min_samples=np.array(5))
    with pytest.raises(ColourMapError, match="no camera"):
        load_colour_map(tmp_path / "empty.npz")


SMALL = {"third_person.width": 64, "third_person.height": 64, "wrist.width": 32, "wrist.height": 32}


def _real_demo(out):
    """One successful sim-world expert episode with images (the "real" demo)."""
    from twinrl_bringup import dataset as ds
    from twinrl_twin.sim import make_env
    from twinrl_twin.sim.record import record_episode

    env = make_env("pick_and_place", render=True, seed=0, camera_overrides=SMALL)
    try:
        for s in range(10):
            ep = record_episode(env, s, "id")
            if ep.is_success:
                return ds.DatasetWriter(out).write_episode(ep)
    finally:
        env.close()
    raise AssertionError("no successful pick_and_place expert episode")


def test_calibrate_cli_fits_the_twin_and_the_twin_draws_with_it(tiny_twins, tmp_path, ros_env):
    from twinrl_bringup import dataset as ds
    from twinrl_twin.render import load_render_config
    from twinrl_twin.twin_assets import TwinAssetError, load_twin
    from twinrl_twin.twin_env import make_twin_env

    twin = tmp_path / "twin"
    shutil.copytree(tiny_twins("pick_and_place"), twin)     # the session's twin stays as built
    _real_demo(tmp_path / "real")
    cmd, report, err = run_calibrate(twin, tmp_path / "real", ros_env, "--pairs", str(tmp_path / "pairs"),
                                     "--min-samples", "10", "--arm")
    assert report["drawn"] == "colour_map" and "warning" not in err, (report, err)
    # --arm fitted the arm's tracking to the demo first (test_arm_tracking.py); the twin keeps it
    fit = report["arm_tracking"]
    assert fit["episodes"] == 1 and fit["tcp_rms_mm_after"] < fit["tcp_rms_mm_before"], fit
    assert json.loads((twin / "twin.json").read_text())["arm_tracking"]["gain"] == fit["gain"]
    assert (twin / "colour_map.npz").is_file() and (twin / "colour_map.png").is_file()
    assert len(ds.Dataset(tmp_path / "pairs")) == 1

    # the twin now draws through the map; with RenderConfig.colour_map off it draws as before
    assets = load_twin(twin)
    assert assets.colour_map is not None and assets.colour_map.cameras == ["third_person", "wrist"]
    real = ds.Dataset(tmp_path / "real").load(0)
    raw_cfg = load_render_config(overrides=["colour_map=false"])
    envs = [make_twin_env(assets, camera_overrides=SMALL), make_twin_env(twin, camera_overrides=SMALL)]
    from twinrl_twin.twin_env import TwinEnv

    envs.append(TwinEnv(assets, camera_overrides=SMALL, render_config=raw_cfg))
    obs = first_frames(envs, real.initial_configuration)
    assert_drawn_through(assets.colour_map.apply, obs[0], obs[2], real)
    for cam in ("third_person", "wrist"):
        assert np.array_equal(obs[1][cam], obs[0][cam])

    # calibrating again fits the twin as drawn, not as already corrected: the same map
    first = load_colour_map(twin / "colour_map.npz")
    r = subprocess.run(cmd, capture_output=True, text=True, env=ros_env, timeout=300)
    assert r.returncode == 2 and "pairs" in r.stderr and "not empty" in r.stderr, r.stderr
    cmd[cmd.index("--pairs") + 1] = str(tmp_path / "pairs2")
    r = subprocess.run(cmd, capture_output=True, text=True, env=ros_env, timeout=300)
    assert r.returncode == 0, r.stderr
    again = load_colour_map(twin / "colour_map.npz")
    for cam in first.cameras:
        assert np.allclose(again.offsets[cam], first.offsets[cam], atol=1e-3)

    # a corrupt map: the twin does not load, the error names the file
    (twin / "colour_map.npz").write_bytes(b"not a zip")
    with pytest.raises(TwinAssetError, match="colour_map.npz: unreadable"):
        load_twin(twin)
    # demos without images: a clear error, exit 2
    lowdim = tmp_path / "lowdim"
    ep = real
    ep.observations = {"proprio": ep.observations["proprio"], "command": ep.observations.get("command")}
    ep.observations = {k: v for k, v in ep.observations.items() if v is not None}
    ep.episode_id = ""
    ds.DatasetWriter(lowdim).write_episode(ep)
    (twin / "colour_map.npz").unlink()
    r = subprocess.run(cmd[:8] + [str(lowdim)], capture_output=True, text=True, env=ros_env, timeout=300)
    assert r.returncode == 2 and "no camera images" in r.stderr, r.stderr

    # demos at two image sizes: the twin replays at the first one's, the other is named, exit 2
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "real", mixed)
    small = ds.Dataset(tmp_path / "real").load(0)
    small.observations = {k: (v[:, ::2, ::2] if k in ("third_person", "wrist") else v)
                          for k, v in small.observations.items()}
    small.episode_id = ""
    ds.DatasetWriter(mixed).write_episode(small)
    r = subprocess.run(cmd[:8] + [str(mixed)], capture_output=True, text=True, env=ros_env, timeout=300)
    assert r.returncode == 2 and "third_person" in r.stderr and "one image size" in r.stderr, r.stderr
