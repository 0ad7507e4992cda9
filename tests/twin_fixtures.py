"""Shared checks for the twin's image corrections (colour map, appearance network)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def first_frames(envs, configuration):
    """Reset every env to ``configuration`` and return their first observations; the envs are
    closed whatever happens."""
    try:
        return [e.reset(options={"configuration": configuration})[0] for e in envs]
    finally:
        for e in envs:
            e.close()


def assert_drawn_through(correct, drawn_obs, raw_obs, real_episode, cameras=("third_person", "wrist")):
    """Each camera's drawn image is ``correct(camera, raw)`` exactly, and nearer the real shot of
    the same moment than the raw render is."""
    for cam in cameras:
        drawn, raw = drawn_obs[cam], raw_obs[cam]
        assert np.array_equal(drawn, correct(cam, raw)), cam
        shot = real_episode.observations[cam][0].astype(int)
        assert np.abs(drawn.astype(int) - shot).mean() < np.abs(raw.astype(int) - shot).mean(), cam


def run_calibrate(twin, demos, env, *extra, timeout=300):
    """`twinrl twin calibrate --twin TWIN --demos DEMOS EXTRA... --json`: it must succeed and bring
    both cameras at least 20 % nearer the real shots. Returns the command, its report and its stderr."""
    cmd = [sys.executable, "-m", "twinrl_bringup.cli", "twin", "calibrate", "--twin", str(twin), "--demos",
           str(demos), *extra, "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for cam in ("third_person", "wrist"):
        v = report["cameras"][cam]
        assert v["mean_abs_diff_after"] < 0.8 * v["mean_abs_diff_before"], report
    return cmd, report, r.stderr
