"""Photometric splat reconstruction (twinrl_twin.splat_render, twinrl_twin.reconstruct): the CPU
renderer equals a brute-force per-pixel compositor and is differentiable, optimisation lowers
the loss and raises held-out PSNR on a small simulated scan while keeping labels, and bad inputs
(corrupt init PLY, too few frames, failing writes) fail clearly without half-written files."""
import json
import os

import numpy as np
import pytest
import torch

from twinrl_bringup.config import ConfigError
from twinrl_twin.reconstruct import (
    ReconstructConfig,
    load_reconstruct_config,
    reconstruct,
    scaled_intrinsics,
    split_frames,
)
from twinrl_twin.scan import Intrinsics, ScanError, load_scan
from twinrl_twin.splat_render import MAX_ALPHA, MIN_ALPHA, project, render_cpu, sh_colors
from twinrl_twin.splats import GaussianScene, SplatFileError, init_from_scan, load_splat_init_config, read_ply, write_ply

pytest.importorskip("mujoco")
pytest.importorskip("open3d")

FAST = ["iterations=40", "width=48", "holdout_every=4", "max_gaussians=1500", "densify.start=20",
        "densify.every=20", "densify.stop=21"]


def _random_gaussians(n=7, degree=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.2 + 0.05
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.5
    return means, quats, scales, opac, sh


def _brute_force(means2d, conics, depths, colors, opac, bg, W, H):
    """Every pixel, every Gaussian, sorted by depth: the 3DGS compositing rule in float64."""
    m2, con, dep, col, op = [np.asarray(x.detach(), dtype=float) for x in (means2d, conics, depths, colors, opac)]
    img = np.zeros((H, W, 3))
    order = np.argsort(dep)
    for v in range(H):
        for u in range(W):
            T, c = 1.0, np.zeros(3)
            for i in order:
                dx, dy = u - m2[i, 0], v - m2[i, 1]
                s = 0.5 * (con[i, 0] * dx * dx + con[i, 2] * dy * dy) + con[i, 1] * dx * dy
                if s < 0:
                    continue
                a = min(MAX_ALPHA, op[i] * np.exp(-s))
                if a < MIN_ALPHA:
                    continue
                c += col[i] * a * T
                T *= 1.0 - a
            img[v, u] = c + T * np.asarray(bg, dtype=float)
    return img


def test_cpu_renderer_matches_brute_force_and_has_gradients():
    W, H = 37, 29
    means, quats, scales, opac, sh = _random_gaussians()
    viewmat = torch.eye(4)
    viewmat[:3, 3] = torch.tensor([0.05, -0.02, 0.1])
    K = torch.tensor([[40.0, 0.0, 18.0], [0.0, 42.0, 14.0], [0.0, 0.0, 1.0]])
    bg = torch.tensor([0.2, 0.3, 0.4])
    params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, sh)]
    out = render_cpu(*params, viewmat, K, W, H, bg)
    radii, m2, depths, conics = project(means, quats, scales, viewmat, K, W, H)
    assert (radii > 0).all() and len(means) == 7
    ref = _brute_force(m2, conics, depths, sh_colors(means, sh, viewmat), opac, bg, W, H)
    assert np.abs(out.rgb.detach().numpy() - ref).max() < 1e-5
    assert float(out.alpha.detach().max()) > 0.5 and float(out.alpha.detach().min()) < 0.05     # the view is not trivially full/empty
    # the same image when the compositor has to split the work into many bands of rows
    small = render_cpu(means, quats, scales, opac, sh, viewmat, K, W, H, bg, max_elements=50)
    assert torch.allclose(small.rgb, out.rgb, atol=1e-6)
    # differentiable with respect to every parameter
    ((out.rgb - 0.5) ** 2).sum().backward()
    for name, p in zip(("means", "quats", "scales", "opacities", "sh"), params):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # and the gradient is the real one (float64 central differences on the opacities)
    d = [t.double() for t in (means, quats, scales, opac, sh, viewmat, K, bg)]

    def f(o):
        return ((render_cpu(d[0], d[1], d[2], o, d[4], d[5], d[6], W, H, d[7]).rgb - 0.5) ** 2).sum()

    o = d[3].clone().requires_grad_()
    f(o).backward()
    eps = 1e-6
    for i in range(len(o)):
        step = torch.zeros_like(o)
        step[i] = eps
        fd = float(f(d[3] + step) - f(d[3] - step)) / (2 * eps)
        assert float(o.grad[i]) == pytest.approx(fd, rel=1e-4, abs=1e-6), i


def test_culling_and_empty_views():
    means, quats, scales, opac, sh = _random_gaussians(n=4)
    K = torch.tensor([[40.0, 0.0, 18.0], [0.0, 40.0, 14.0], [0.0, 0.0, 1.0]])
    behind = torch.eye(4)
    behind[2, 3] = -10.0                                     # every Gaussian behind the camera
    bg = torch.tensor([0.1, 0.6, 0.9])
    out = render_cpu(means, quats, scales, opac, sh, behind, K, 20, 16, bg)
    assert torch.allclose(out.rgb, bg.expand(16, 20, 3)) and float(out.alpha.abs().max()) == 0.0


def test_scaled_intrinsics_keeps_the_pixel_grid():
    intr = Intrinsics(100.0, 110.0, 79.5, 59.5, 160, 120)     # principal point at the image centre
    s = scaled_intrinsics(intr, 40)
    assert (s.width, s.height) == (40, 30)
    assert s.cx == pytest.approx(19.5) and s.cy == pytest.approx(14.5) and s.fx == pytest.approx(25.0)
    train, held = split_frames(10, 4)
    assert held == [2, 6] and sorted(train + held) == list(range(10))


def test_config_is_strict(tmp_path):
    cfg = load_reconstruct_config()
    assert isinstance(cfg, ReconstructConfig) and cfg.iterations <= 500
    with pytest.raises(ConfigError, match="no_such_key"):
        load_reconstruct_config(None, ["no_such_key=1"])
    with pytest.raises(ConfigError, match="holdout_every"):
        load_reconstruct_config(None, ["holdout_every=1"])


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory):
    from twinrl_twin.scan_sim import load_scan_sim_config, simulate_scan

    root = tmp_path_factory.mktemp("recon") / "pp"
    cfg = load_scan_sim_config(None, ["width=96", "height=72"])
    simulate_scan("pick_and_place", root, frames=8, seed=3, cfg=cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def init_scene(small_scan):
    scene, _ = init_from_scan(load_scan(small_scan), load_splat_init_config(None, ["sh_degree=0"]), progress=False)
    return scene


def test_optimisation_lowers_loss_and_raises_heldout_psnr(small_scan, init_scene):
    scan = load_scan(small_scan)
    cfg = load_reconstruct_config(None, FAST)
    before = GaussianScene(init_scene.means.copy(), init_scene.quats.copy(), init_scene.log_scales.copy(),
                           init_scene.opacity_logits.copy(), init_scene.sh.copy(), None, init_scene.labels.copy(),
                           init_scene.label_names)
    result = reconstruct(scan, init_scene, cfg, progress=False)
    s = result.summary()
    assert result.heldout_frames == [scan.frames[2].name, scan.frames[6].name]
    assert len(result.train_frames) == 6 and s["image_size"] == [48, 36]
    assert result.loss_last < 0.8 * result.loss_first, s
    assert result.psnr_after > result.psnr_before + 2.0, s
    # the input scene is untouched
    assert np.array_equal(init_scene.means, before.means) and np.array_equal(init_scene.sh, before.sh)
    out = result.scene
    assert s["gaussians_before"] == 1500 and len(out) == s["gaussians_after"] and len(out) != 1500   # densified once
    assert out.labels is not None and set(np.unique(out.labels)) <= set(np.unique(init_scene.labels))
    assert out.label_names == init_scene.label_names and set(np.unique(out.labels)) >= {0, 1}
    assert np.isfinite(out.means).all() and np.allclose(np.linalg.norm(out.quats, axis=1), 1.0, atol=1e-5)


def test_labels_follow_their_gaussians_without_densify(small_scan, init_scene):
    scan = load_scan(small_scan)
    sub = init_scene.subset(np.arange(0, len(init_scene), max(1, len(init_scene) // 300)))
    cfg = load_reconstruct_config(None, FAST[:4] + ["iterations=5", "densify.enabled=false"])
    result = reconstruct(scan, sub, cfg, progress=False)
    assert np.array_equal(result.scene.labels, sub.labels)
    moved = np.linalg.norm(result.scene.means - sub.means, axis=1)
    assert moved.max() > 0                                  # optimised, yet Gaussian i is still Gaussian i
    assert moved.max() < 0.5 * np.linalg.norm(np.ptp(sub.means, axis=0))


def _cli(argv):
    import argparse

    from twinrl_twin import cli

    parser = argparse.ArgumentParser(prog="twinrl")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["twin"] + argv)
    return args.func(args)


def test_cli_reconstruct_writes_ply_preview_and_json(small_scan, init_scene, tmp_path, capsys):
    init = write_ply(tmp_path / "init.ply", init_scene.subset(np.arange(0, len(init_scene), 3)))
    out = tmp_path / "out" / "scene.ply"
    rc = _cli(["reconstruct", "--scan", str(small_scan), "--out", str(out), "--init", str(init),
               "--iterations", "8", "--json", "--set", "width=40", "--set", "holdout_every=4"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 8 and summary["init"] == str(init)
    assert summary["psnr_after_db"] > 5.0 and summary["seconds"] > 0
    scene = read_ply(out)
    assert len(scene) == summary["gaussians_after"] and scene.labels is not None
    from PIL import Image

    prev = Image.open(summary["preview"])
    assert prev.size == (3 * 40, 30)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_init_is_named_and_nothing_is_written(small_scan, tmp_path, capsys):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00")
    out = tmp_path / "scene.ply"
    rc = _cli(["reconstruct", "--scan", str(small_scan), "--out", str(out), "--init", str(bad), "--iterations", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err
    assert not out.exists() and not list(tmp_path.glob("*.png"))
    with pytest.raises(SplatFileError, match="broken.ply"):
        read_ply(bad)


def test_too_few_frames_is_a_clear_error(small_scan, init_scene):
    scan = load_scan(small_scan)
    cfg = load_reconstruct_config(None, ["holdout_every=20", "iterations=1"])
    with pytest.raises(ScanError, match="hold out"):
        reconstruct(scan, init_scene, cfg, progress=False)


def test_failed_write_keeps_the_previous_file(small_scan, init_scene, tmp_path, monkeypatch):
    from plyfile import PlyData

    from twinrl_twin.reconstruct import reconstruct_to_file

    out = tmp_path / "scene.ply"
    out.write_bytes(b"previous result")
    init = write_ply(tmp_path / "init.ply", init_scene.subset(np.arange(0, len(init_scene), 10)))

    def broken_write(self, stream):
        stream.write(b"ply\nformat binary_little_endian 1.0\n")
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", broken_write)
    cfg = load_reconstruct_config(None, ["iterations=2", "width=32", "holdout_every=4", "densify.enabled=false"])
    with pytest.raises(OSError, match="disk full"):
        reconstruct_to_file(load_scan(small_scan), out, init, cfg, preview=tmp_path / "p.png", progress=False)
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["init.ply", "scene.ply"]
