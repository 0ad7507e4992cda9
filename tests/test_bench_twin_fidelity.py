"""bench/twin_fidelity.py compares a twin's images with the sim world's in the same
configuration, against a flat-background peer built from the same scan and against a copy
colour-calibrated on other expert demos, and one with an appearance network fitted on them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_twin_fidelity_bench_runs(ros_env, tiny_twins, tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "twin_fidelity.py"), "--twin", str(tiny_twins("pick_and_place")),
           "--configs", "2", "--steps", "0", "5", "--image-size", "96,48", "--peer", "--calibrate", "2", "--network",
           "--network-steps", "150", "--out", str(tmp_path), "--json"]
    r = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    res = out["results"]
    calibrated, network = "colour-calibrated (2 demos)", "appearance network (2 demos)"
    assert out["image_size"] == [96, 48] and set(res) == {"twin", "peer (flat grey background)", calibrated, network}
    for variant in res.values():
        for cam in ("third_person", "wrist"):
            assert variant[cam]["images"] == 4
            assert 0 < variant[cam]["mean_abs_diff"] < 80 and 5 < variant[cam]["psnr_db"] < 60
    # the far-field panorama brings the third-person view closer to the sim's than flat grey does
    assert res["twin"]["third_person"]["mean_abs_diff"] < 0.7 * res["peer (flat grey background)"]["third_person"]["mean_abs_diff"]
    # the colour calibration, fitted on other starts, brings both cameras closer to the sim's
    for cam in ("third_person", "wrist"):
        assert res[calibrated][cam]["mean_abs_diff"] < 0.85 * res["twin"][cam]["mean_abs_diff"], res
    # so does the appearance network fitted on the same demos (a short fit here)
    for cam in ("third_person", "wrist"):
        assert res[network][cam]["mean_abs_diff"] < 0.85 * res["twin"][cam]["mean_abs_diff"], res
    assert "ratio appearance network / twin" in r.stdout
    assert (tmp_path / "twin_fidelity_pick_and_place.png").stat().st_size > 1000
