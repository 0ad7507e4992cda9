"""Scan meshes of the twin coloured from the scan's frames: texture atlases (xatlas), the
visibility rules of colour_from_frames, the eraser's felt pad in its texture, the object
drawn closer to the sim than with Gaussian vertex colours, and corrupt textures named."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from twinrl_twin.twin_assets import TwinAssetError, load_twin


@pytest.fixture(scope="module")
def eraser(tiny_twins):
    """(twin dir, scan) of erase_whiteboard (tests/conftest.py: tiny_twins)."""
    from twinrl_twin.scan import load_scan

    d = tiny_twins("erase_whiteboard")
    return d, load_scan(d.parent / "scan_erase_whiteboard")


def _texels(mesh):
    from twinrl_twin.twin_assets import texel_surface_points

    rows, cols, pts, nrm = texel_surface_points(mesh.vertices, mesh.faces, mesh.uvs, mesh.texture.shape[1::-1])
    return mesh.texture[rows, cols].astype(int), pts, nrm


def test_texture_atlas_covers_the_surface_once():
    import trimesh

    from twinrl_twin.twin_assets import texel_surface_points, texture_atlas

    box = trimesh.creation.box(extents=[0.07, 0.034, 0.03])
    v, f, uvs, (w, h) = texture_atlas(box.vertices, box.faces, 0.001)
    again = texture_atlas(box.vertices, box.faces, 0.001)
    assert np.array_equal(uvs, again[2]) and (w, h) == again[3]           # the same atlas every build
    assert uvs.min() >= 0 and uvs.max() <= 1 and len(f) == 12
    assert np.allclose(np.sort(np.unique(v, axis=0), axis=0), np.sort(np.unique(box.vertices, axis=0), axis=0))
    rows, cols, pts, nrm = texel_surface_points(v, f, uvs, (w, h))
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)          # each texel at most once
    # about one texel per square millimetre of surface (charts' rims, rounding)
    assert 0.8 < len(rows) / (box.area * 1e6) < 1.2
    assert np.allclose(np.abs(pts).max(axis=0), [0.035, 0.017, 0.015], atol=1e-6)
    # the points lie on the box's faces, with those faces' normals
    on_face = np.isclose(np.abs(pts), [0.035, 0.017, 0.015], atol=1e-6)
    assert on_face.any(axis=1).all()
    axis = np.argmax(np.abs(nrm), axis=1)
    assert on_face[np.arange(len(pts)), axis].all()
    # a tight size limit makes the texels coarser, not the atlas larger
    _, _, _, (w2, h2) = texture_atlas(box.vertices, box.faces, 0.001, max_size=40)
    assert max(w2, h2) <= 40


def test_colour_from_frames_needs_depth_mask_and_facing(eraser):
    from twinrl_bringup import transforms as tf
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.twin_assets import colour_from_frames

    d, scan = eraser
    sim = load_groundtruth(scan.root).scan_to_base
    obj = scan.objects["object"]
    T = sim.apply_pose(obj.T_scan_object)
    g = np.random.default_rng(0)
    xy = g.uniform([-0.03, -0.013], [0.03, 0.013], (200, 2))
    top = tf.transform_points(T, np.c_[xy, np.full(200, 0.015)])
    up = np.tile(T[:3, :3] @ [0, 0, 1.0], (200, 1))
    col, seen = colour_from_frames(top, up, scan.frames, sim, obj.label)
    assert seen.mean() > 0.9
    assert (col[seen, 2] - col[seen, 0] > 80).all()                         # the sim's eraser is blue
    # the same points inside the eraser (1 cm under its top): hidden, the depth there is the top's
    inside = top - 0.01 * up
    assert not colour_from_frames(inside, up, scan.frames, sim, obj.label)[1].any()
    # facing down: no camera sees that side of them
    assert not colour_from_frames(top, -up, scan.frames, sim, obj.label)[1].any()
    # another label's pixels are not the object's
    assert not colour_from_frames(top, up, scan.frames, sim, obj.label + 1)[1].any()
    # a normal turned 60 degrees off the surface's: the depth map's normal disagrees
    tilted = np.tile(T[:3, :3] @ [np.sin(1.05), 0, np.cos(1.05)], (200, 1))
    assert colour_from_frames(top, tilted, scan.frames, sim, obj.label)[1].mean() < 0.05
    assert colour_from_frames(top, tilted, scan.frames, sim, obj.label, normal_agreement=-2)[1].mean() > 0.5


def test_the_erasers_felt_pad_is_in_its_texture(eraser):
    """The sim's eraser is a blue box on a white felt pad 8 mm high; its Gaussians (12 mm
    apart) cannot draw the pad, the frames' pixels can."""
    d, _ = eraser
    assets = load_twin(d)
    meta = json.loads((d / "twin.json").read_text())
    assert meta["mesh_colours"]["object"]["source"] == "frames"
    assert meta["mesh_colours"]["object"]["seen_by_frames"] > 0.5
    mesh = assets.object_mesh
    assert mesh.texture is not None and not mesh.lit and len(mesh.faces) == 12
    c, pts, nrm = _texels(mesh)
    top = nrm[:, 2] > 0.9
    assert np.median(c[top, 2] - c[top, 0]) > 100                            # blue
    light = c.min(axis=1) > 120
    best = 0.0
    for ax in (0, 1):
        for sign in (1, -1):
            side = nrm[:, ax] * sign > 0.9
            pad, body = side & (pts[:, 2] < -0.009), side & (pts[:, 2] > 0)
            assert light[body].mean() < 0.02                                 # no felt above the pad
            best = max(best, light[pad].mean())
    assert best > 0.6, f"at most {best:.0%} of a side's pad texels are light"


def test_textured_eraser_is_closer_to_the_sim_than_gaussian_colours(eraser, tmp_path):
    from twinrl_policy.evaluation import sim_env_factory
    from twinrl_twin.scan import load_groundtruth
    from twinrl_twin.twin_assets import build_twin, load_build_config
    from twinrl_twin.twin_env import make_twin_env

    d, scan = eraser
    build_twin(scan.root, tmp_path / "gauss", "erase_whiteboard", load_groundtruth(scan.root).scan_to_base,
               "groundtruth", cfg=load_build_config(None, ["mesh_colour=gaussians"]), preview=False)
    g = load_twin(tmp_path / "gauss")
    assert g.object_mesh.texture is None and not g.object_mesh.lit
    sim = sim_env_factory("erase_whiteboard", 0, {}, None)
    errors = {"frames": [], "gaussians": []}
    envs = {"frames": make_twin_env(d, render=True), "gaussians": make_twin_env(tmp_path / "gauss", render=True)}
    try:
        for seed in range(4):
            obs, info = sim.reset(seed=seed)
            real = obs["third_person"].astype(int)
            near = real[..., 2] - real[..., 0] > 40                          # the blue eraser's pixels
            assert near.sum() > 20
            from scipy.ndimage import binary_dilation

            near = binary_dilation(near, iterations=2)
            for name, env in envs.items():
                tw, _ = env.reset(seed=seed, options={"configuration": info["configuration"]})
                errors[name].append(float(np.abs(tw["third_person"].astype(int) - real)[near].mean()))
    finally:
        sim.close()
        for env in envs.values():
            env.close()
    assert np.mean(errors["frames"]) < 0.9 * np.mean(errors["gaussians"]), errors


def test_scan_meshes_of_older_twins_stay_lit(eraser, tmp_path):
    d, _ = eraser
    old = tmp_path / "old"
    shutil.copytree(d, old)
    meta = json.loads((old / "twin.json").read_text())
    del meta["mesh_colours"]
    (old / "twin.json").write_text(json.dumps(meta))
    assert load_twin(old).object_mesh.lit and load_twin(old).fixture_mesh.lit
    assert not load_twin(d).object_mesh.lit


def test_corrupt_texture_is_named(eraser, tmp_path):
    d, _ = eraser
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    with np.load(d / "object_mesh.npz") as z:
        good = {k: z[k] for k in z.files}
    cases = [({"uvs": None}, "uvs and texture come together"),
             ({"uvs": good["uvs"] + 2.0}, r"uvs must be .* in \[0, 1\]"),
             ({"uvs": good["uvs"][:3]}, "uvs must be"),
             ({"texture": good["texture"].astype(np.float32)}, "texture must be"),
             ({"texture": good["texture"][..., :2]}, "texture must be")]
    for change, match in cases:
        data = dict(good)
        for k, v in change.items():
            if v is None:
                del data[k]
            else:
                data[k] = v
        np.savez(bad / "object_mesh.npz", **data)
        with pytest.raises(TwinAssetError, match="object_mesh.npz: object: " + match):
            load_twin(bad)
    for bad_cfg in (["mesh_colour=paint"], ["colour_texel=0"], ["texture_max_size=8"]):
        from twinrl_twin.twin_assets import load_build_config

        with pytest.raises(ValueError, match=bad_cfg[0].split("=")[0]):
            load_build_config(None, bad_cfg).validate()
