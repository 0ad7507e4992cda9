"""``twinrl sim record``: scripted-expert demonstrations written in the dataset format."""
from __future__ import annotations

import argparse
import subprocess

import numpy as np
import pytest


from twinrl_bringup.dataset import Dataset, SOURCE_DEMO  # noqa: E402
from twinrl_twin.sim.record import add_record_parser  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(prog="twinrl sim")
    sub = parser.add_subparsers(dest="command", required=True)
    add_record_parser(sub)
    return parser.parse_args(["record", *argv])


@pytest.mark.timeout(120)
def test_record_writes_successful_demos(tmp_path, capsys):
    out = tmp_path / "demos"
    args = parse(["--task", "pick_and_place", "--episodes", "2", "--region", "ood", "--out", str(out),
                  "--seed", "4", "--image-size", "32,16"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "expert success" in captured.out and str(out) in captured.out
    assert "record pick_and_place (ood)" in captured.err          # the progress bar
    ds = Dataset(out)
    assert 1 <= len(ds) <= 2
    for i, ep in enumerate(ds):
        assert ep.task == "pick_and_place" and ep.is_success and ep.terminated[-1]
        assert ep.region == "ood" and ep.episode_source == SOURCE_DEMO and (ep.source == SOURCE_DEMO).all()
        assert ep.observations["third_person"].shape == (ep.length + 1, 32, 32, 3)
        assert ep.observations["wrist"].shape == (ep.length + 1, 16, 16, 3)
        assert ep.extra["seed"] in (4, 5) and ep.initial_configuration["seed"] == ep.extra["seed"]
        # consecutive proprio rows differ (the arm moves) and the gripper was closed and opened
        assert np.abs(np.diff(ep.observations["proprio"][:, 14:17], axis=0)).sum() > 0.1
        assert (ep.actions[:, 6] > 0.5).any() and (ep.actions[:, 6] < -0.5).any()
    # appending more episodes keeps the earlier ones
    n = len(ds)
    args = parse(["--task", "pick_and_place", "--episodes", "1", "--out", str(out), "--seed", "40",
                  "--no-images"])
    assert args.func(args) == 0
    ds = Dataset(out)
    assert len(ds) == n + 1 and len(ds.filter(region="id")) == 1
    assert set(ds.filter(region="id")[0].observations) == {"proprio", "command"}   # --no-images: the commanded targets, no images


def test_record_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["--task", "stack", "--episodes", "1", "--out", str(tmp_path)])
    assert "invalid choice: 'stack'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--task", "pick_and_place", "--episodes", "1", "--out", str(tmp_path), "--image-size", "64"])
    assert "expected THIRD,WRIST" in capsys.readouterr().err
    args = parse(["--task", "pick_and_place", "--episodes", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        args.func(args)
    assert not (tmp_path / "x").exists()


def test_twinrl_sim_record_is_a_subcommand(ros_env):
    """The ``sim`` command plugin is installed and ``record`` is one of its subcommands."""
    from twinrl_bringup.cli import _entry_points

    assert "sim" in {ep.name for ep in _entry_points()}, "the `twinrl sim` command is not registered"
    out = subprocess.run(["twinrl", "sim", "record", "--help"], env=ros_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--episodes" in out.stdout and "--region" in out.stdout
