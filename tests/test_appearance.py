"""The twin's appearance network (twinrl_twin.appearance): it learns a correction a colour map
cannot (a band drawn where the real camera shows something else, a darker block), applies it
to placements it was not trained on, round-trips through its file and refuses corrupt ones and
wrong image sizes; `twinrl twin calibrate --network` fits it and the twin then draws with it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from twinrl_twin.appearance import (AppearanceConfig, AppearanceError, fit_appearance, load_appearance,
                                    save_appearance)
from twinrl_twin.colour_map import fit_colour_map, mean_abs_difference
from twin_fixtures import assert_drawn_through, first_frames, run_calibrate

TAN, RED, GREY = (193, 155, 118), (160, 30, 25), (128, 128, 128)


def scene(rng, n, size=32, cols=(2, 14)):
    """Twin images: tan table, a red block at a random place (columns ``cols``), a grey band at
    rows 4-9 with a brighter streak. The real images of the same moments: a brighter block, and
    above row 10 the real cell's black wall with a grey band at rows 7-9 only (where the twin's
    band is drawn too high). The band is the same colour in both, in other rows: no colour map
    can move it, a network that sees pixel positions can."""
    twin = np.empty((n, size, size, 3), np.uint8)
    real = np.empty_like(twin)
    for k in range(n):
        t = np.empty((size, size, 3), np.int32)
        t[:] = TAN
        t[:10] = (10, 10, 10)
        t[4:10] = GREY
        t[5, ::3] = (200, 200, 200)
        r = t.copy()
        r[:10] = (10, 10, 10)
        r[7:10] = GREY
        y, x = rng.integers(12, size - 6), rng.integers(*cols)
        t[y:y + 5, x:x + 5] = RED
        r[y:y + 5, x:x + 5] = (235, 60, 45)
        twin[k], real[k] = t, np.clip(r + rng.normal(0, 2, r.shape), 0, 255)
    return twin, real


FAST = AppearanceConfig(channels=8, dilations=[1, 2, 4, 1], steps=400, batch_size=8, learning_rate=3e-3)


def test_network_learns_what_a_colour_map_cannot_and_carries_it_to_new_placements():
    rng = np.random.default_rng(0)
    twin, real = scene(rng, 40, cols=(2, 14))              # blocks on the left: the "ID" placements
    # pairs come one episode at a time: several arrays of one camera
    model = fit_appearance([("cam", twin[:25], real[:25]), ("cam", twin[25:], real[25:])], FAST, progress=False)
    held_twin, held_real = scene(np.random.default_rng(1), 12, cols=(16, 26))   # blocks on the right
    before = mean_abs_difference(None, [("cam", held_twin, held_real)])["cam"]
    after = mean_abs_difference(model, [("cam", held_twin, held_real)])["cam"]
    cmap = fit_colour_map([("cam", twin, real)])
    lut = mean_abs_difference(cmap, [("cam", held_twin, held_real)])["cam"]
    print(before, lut, after)
    assert after < 0.4 * before and after < 0.6 * lut, (before, lut, after)
    # the block where it never was in training: corrected towards the real block's colour
    out = model.apply("cam", held_twin)
    assert out.shape == held_twin.shape and out.dtype == np.uint8
    block = (held_twin == np.array(RED, np.uint8)).all(axis=-1)
    assert np.abs(out[block].astype(int) - (235, 60, 45)).mean() < 0.5 * np.abs(held_twin[block].astype(int) - (235, 60, 45)).mean()
    # one image at a time gives the same pixels as a batch; unknown cameras pass through
    assert np.array_equal(model.apply("cam", held_twin[3]), out[3])
    one = held_twin[0]
    assert model.apply("other", one) is one
    # denormals are flushed to zero only while the networks run: a process left in that mode
    # crashed scipy's cKDTree (test_twin_textures.py builds twins after these tests)
    assert np.array([1e-310]) * 1.0 != 0.0


def test_denormals_flushed_only_inside_the_network():
    from twinrl_twin.appearance import flush_denormals

    tiny = np.array([1e-310])
    assert tiny * 1.0 != 0.0
    with flush_denormals():
        assert tiny * 1.0 == 0.0
    assert tiny * 1.0 != 0.0
    with pytest.raises(KeyError):
        with flush_denormals():
            raise KeyError("left by an error")
    assert tiny * 1.0 != 0.0


def test_bad_input_and_config_are_named():
    rng = np.random.default_rng(0)
    twin, real = scene(rng, 4)
    with pytest.raises(AppearanceError, match="one shape"):
        fit_appearance([("cam", twin, real[:, :16])], FAST, progress=False)
    with pytest.raises(AppearanceError, match="no paired images"):
        fit_appearance([], FAST, progress=False)
    with pytest.raises(AppearanceError, match=r"two image sizes, \(32, 32\) and \(16, 16\)"):
        fit_appearance([("cam", twin, real), ("cam", twin[:, :16, :16].copy(), real[:, :16, :16].copy())],
                       FAST, progress=False)
    for bad in ({"channels": 0}, {"dilations": []}, {"steps": 0}, {"learning_rate": float("nan")}):
        with pytest.raises(AppearanceError):
            AppearanceConfig(**bad).validate()
    model = fit_appearance([("cam", twin, real)], AppearanceConfig(channels=4, dilations=[1], steps=2),
                           progress=False)
    with pytest.raises(AppearanceError, match="trained for 32x32 images, got 16x16"):
        model.apply("cam", twin[0, :16, :16])
    with pytest.raises(AppearanceError, match="uint8"):
        model.apply("cam", twin[0].astype(np.float32))


def test_file_round_trip_and_corrupt_files(tmp_path):
    import torch

    rng = np.random.default_rng(0)
    twin, real = scene(rng, 6)
    model = fit_appearance([("a", twin, real), ("b", twin, real)],
                           AppearanceConfig(channels=4, dilations=[1, 2], steps=5), progress=False)
    path = save_appearance(tmp_path / "appearance.pt", model)
    back = load_appearance(path)
    assert back.cameras == ["a", "b"] and back.sizes == model.sizes and back.config == model.config
    for c in ("a", "b"):
        assert np.array_equal(back.apply(c, twin), model.apply(c, twin))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(AppearanceError, match="junk.pt: unreadable appearance network"):
        load_appearance(tmp_path / "junk.pt")
    blob = torch.load(path, weights_only=True)
    blob["cameras"]["a"]["state"]["0.weight"] = torch.full_like(blob["cameras"]["a"]["state"]["0.weight"], float("nan"))
    torch.save(blob, tmp_path / "nan.pt")
    with pytest.raises(AppearanceError, match="camera a: non-finite weights"):
        load_appearance(tmp_path / "nan.pt")
    blob = torch.load(path, weights_only=True)
    del blob["cameras"]["b"]["state"]["0.bias"]
    torch.save(blob, tmp_path / "missing.pt")
    with pytest.raises(AppearanceError, match="camera b"):
        load_appearance(tmp_path / "missing.pt")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(AppearanceError, match="format 1"):
        load_appearance(tmp_path / "future.pt")


def test_calibrate_network_fits_the_twin_and_the_twin_draws_with_it(tiny_twins, tmp_path, ros_env):
    from test_colour_map import SMALL, _real_demo

    from twinrl_bringup import dataset as ds
    from twinrl_twin.render import load_render_config
    from twinrl_twin.twin_assets import TwinAssetError, load_twin
    from twinrl_twin.twin_env import TwinEnv

    twin = tmp_path / "twin"
    shutil.copytree(tiny_twins("pick_and_place"), twin)
    _real_demo(tmp_path / "real")
    run_calibrate(twin, tmp_path / "real", ros_env, "--network", "--steps", "150", timeout=600)
    assert (twin / "appearance.pt").is_file() and (twin / "appearance.png").is_file()
    assert not (twin / "colour_map.npz").exists()
    assets = load_twin(twin)
    assert assets.appearance is not None and assets.appearance.cameras == ["third_person", "wrist"]
    real = ds.Dataset(tmp_path / "real").load(0)
    envs = [TwinEnv(assets, camera_overrides=SMALL),
            TwinEnv(assets, camera_overrides=SMALL, render_config=load_render_config(overrides=["appearance=false"]))]
    obs = first_frames(envs, real.initial_configuration)
    assert_drawn_through(assets.appearance.apply, obs[0], obs[1], real)
    # the network is for the demos' image size; a twin env at another size is refused, named
    env = TwinEnv(assets)
    try:
        with pytest.raises(AppearanceError, match="calibrate again at this size"):
            env.reset(options={"configuration": real.initial_configuration})
    finally:
        env.close()
    # a colour map fitted next to the network is not what the twin draws: the report and a warning say so
    _, report, err = run_calibrate(twin, tmp_path / "real", ros_env, "--min-samples", "10")
    assert report["drawn"] == "appearance" and "appearance=false" in err, (report, err)
    assets = load_twin(twin)
    assert assets.colour_map is not None and assets.appearance is not None
    (twin / "appearance.pt").write_bytes(b"garbage")
    with pytest.raises(TwinAssetError, match="appearance.pt: unreadable"):
        load_twin(twin)
