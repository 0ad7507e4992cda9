"""Grid evaluation (`twinrl eval grid`): aggregation on a scripted env, then the sim world."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policy_fixtures import tiny_model_config
from twinrl_policy.checkpoint import save_checkpoint
from twinrl_policy.evaluation import evaluate_grid, write_heatmap
from twinrl_policy.inference import PolicyRunner
from twinrl_policy.model import VisuomotorPolicy
from twinrl_policy.rollout import run_episode


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "p.ckpt"
    save_checkpoint(path, VisuomotorPolicy(tiny_model_config(tasks=["pick_and_place"])), version=5)
    return path


class _Grid:
    rows, cols, extent = 2, 3, ((0.3, 0.6), (-0.3, 0.3))

    def cells(self, region="all"):
        return [(r, c) for r in range(2) for c in range(3) if region == "all" or (c == 1) == (region == "id")]

    def region_of(self, r, c):
        return "id" if c == 1 else "ood"


class CellEnv:
    """Succeeds at the 3rd step in even columns, and in column 1 only for even seeds."""

    def __init__(self, sizes, time_limit):
        self.grid, self.sizes, self.limit = _Grid(), sizes, time_limit or 10

    def _obs(self):
        return {"third_person": np.zeros((*self.sizes["third_person"], 3), np.uint8),
                "wrist": np.zeros((*self.sizes["wrist"], 3), np.uint8), "proprio": np.zeros(22, np.float32)}

    def reset(self, seed=None, options=None):
        self.cell, self.seed, self.t = options["cell"], seed, 0
        return self._obs(), {"success": False, "configuration": {"cell_row": self.cell[0], "cell_col": self.cell[1]}}

    def step(self, action):
        assert np.all(np.isfinite(action)) and action.shape == (7,)
        self.t += 1
        col = self.cell[1]
        ok = self.t == 3 and (col % 2 == 0 or (col == 1 and self.seed % 2 == 0))
        return self._obs(), float(ok), ok, self.t >= self.limit, {"success": ok, "configuration": {}}

    def close(self):
        pass


def cell_env_factory(task, seed, sizes, time_limit):
    return CellEnv(sizes, time_limit)


def test_grid_aggregates_per_cell_and_by_region(ckpt, tmp_path):
    res = evaluate_grid(ckpt, "pick_and_place", 4, env_factory=cell_env_factory, progress=False)
    assert res.trials == [[4, 4, 4], [4, 4, 4]] and res.policy_version == 5
    assert [row[0] for row in res.success_rate] == [1.0, 1.0] and [row[2] for row in res.success_rate] == [1.0, 1.0]
    seeds = {(e["row"], e["col"]): [] for e in res.episodes}
    for e in res.episodes:
        seeds[(e["row"], e["col"])].append(e["seed"])
    for r in range(2):
        want = sum(s % 2 == 0 for s in seeds[(r, 1)]) / 4
        assert res.success_rate[r][1] == want
    n_id = sum(res.successes[r][1] for r in range(2))
    assert res.id_success_rate == n_id / 8 and res.ood_success_rate == 1.0
    assert res.average_success_rate == (16 + n_id) / 24
    assert all(e["steps"] == (3 if e["success"] else 10) for e in res.episodes)
    again = evaluate_grid(ckpt, "pick_and_place", 4, env_factory=cell_env_factory, progress=False)
    assert again.success_rate == res.success_rate  # seeded starts
    png = write_heatmap(res, tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(res.to_json())
    assert data["region"][0] == ["ood", "id", "ood"] and len(data["episodes"]) == 24
    with pytest.raises(ValueError, match="world 'real' is not available"):
        evaluate_grid(ckpt, "pick_and_place", 1, world="real", progress=False)
    with pytest.raises(ValueError, match="unknown task 'insert_hexagon'"):
        evaluate_grid(ckpt, "insert_hexagon", 1, env_factory=cell_env_factory, progress=False)


@pytest.mark.slow
def test_eval_grid_cli_in_the_sim_world(ckpt, tmp_path, capsys):
    from twinrl_bringup.cli import main

    runner = PolicyRunner(ckpt)
    from twinrl_policy.evaluation import sim_env_factory
    env = sim_env_factory("pick_and_place", 0, {"third_person": (32, 32), "wrist": (16, 16)}, 3)
    try:
        ep = run_episode(env, runner, seed=1, options={"cell": (0, 0)})
    finally:
        env.close()
    assert ep["steps"] == 3 and ep["configuration"]["cell_row"] == 0 and ep["policy_version"] == 5
    rc = main(["eval", "grid", "--policy", str(ckpt), "--world", "sim", "--task", "pick_and_place",
               "--rollouts-per-cell", "1", "--out", str(tmp_path / "eval"), "--json", "--time-limit", "2",
               "--workers", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert (data["rows"], data["cols"]) == (4, 6) and data["trials"] == [[1] * 6] * 4
    assert sum(r.count("id") for r in data["region"]) == 8
    assert 0.0 <= data["average_success_rate"] <= 1.0
    assert (tmp_path / "eval" / "grid_pick_and_place_sim.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "eval" / "grid_pick_and_place_sim.json").read_text())
    assert len(saved["episodes"]) == 24 and all(e["steps"] == 2 for e in saved["episodes"])
    # robustness: the same grid under a perturbation of the sim world, ID cells only
    rc = main(["eval", "grid", "--policy", str(ckpt), "--task", "pick_and_place", "--rollouts-per-cell", "1",
               "--out", str(tmp_path / "eval"), "--time-limit", "1", "--region", "id", "--perturbation", "dark",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "pick_and_place in sim (dark)" in out and "row 0:   -  " in out
    dark = json.loads((tmp_path / "eval" / "grid_pick_and_place_sim_dark.json").read_text())
    assert dark["perturbation"] == "dark" and sum(map(sum, dark["trials"])) == 8


def _result(rates, world, policy="p.ckpt"):
    from twinrl_policy.evaluation import GridResult

    rows, cols = len(rates), len(rates[0])
    region = [["id" if c == 1 else "ood" for c in range(cols)] for _ in range(rows)]
    trials = [[0 if v is None else 4 for v in row] for row in rates]
    succ = [[0 if v is None else int(round(4 * v)) for v in row] for row in rates]
    return GridResult(task="pick_and_place", world=world, perturbation=None, policy=policy, policy_version=1,
                      rows=rows, cols=cols, x_range=[0.3, 0.6], y_range=[-0.3, 0.3], region=region, trials=trials,
                      successes=succ, success_rate=rates, id_success_rate=0.5, ood_success_rate=0.25,
                      average_success_rate=0.3, rollouts_per_cell=4)


def test_compare_grids_rank_correlation_and_plot(tmp_path):
    from twinrl_policy.evaluation import compare_grids, load_grid_result, write_comparison

    sim = _result([[0.0, 0.25, 0.5], [0.75, 1.0, None]], "sim")
    same_order = _result([[0.25, 0.5, 0.75], [1.0, 1.0, 0.0]], "twin")      # monotone in sim's rates
    reversed_ = _result([[1.0, 0.75, 0.5], [0.25, 0.0, 1.0]], "twin")
    flat = _result([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], "twin")
    c = compare_grids(sim, same_order)
    assert c["cells"] == 5 and c["spearman"] > 0.97 and c["worlds"] == ["sim", "twin"]
    assert c["mean_abs_diff"] == pytest.approx((0.25 * 4 + 0.0) / 5)
    assert compare_grids(sim, reversed_)["spearman"] < -0.97
    assert np.isnan(compare_grids(sim, flat)["spearman"])         # constant: no ranking
    png = write_comparison(sim, reversed_, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "r.json").write_text(sim.to_json())
    assert load_grid_result(tmp_path / "r.json").success_rate == sim.success_rate
    (tmp_path / "bad.json").write_text('{"task": 1}')
    with pytest.raises(ValueError, match="bad.json: not a grid evaluation result"):
        load_grid_result(tmp_path / "bad.json")
    other = _result([[0.0, 0.25], [0.75, 1.0]], "twin")
    with pytest.raises(ValueError, match="grids differ"):
        compare_grids(sim, other)


@pytest.mark.slow
def test_eval_grid_in_the_twin_and_the_comparison_with_the_sim(ckpt, tiny_twins, tmp_path, capsys):
    """`twinrl eval grid --world sim twin --twin DIR`: both worlds' grids from the same seeded
    starts (the twin's episodes run in the twin env: its configurations match the sim's), then
    the rank-correlation comparison and its PNG."""
    from twinrl_bringup.cli import main
    from twinrl_policy.evaluation import twin_env_factory

    twin = tiny_twins("pick_and_place")
    out = tmp_path / "eval"
    rc = main(["eval", "grid", "--policy", str(ckpt), "--world", "sim", "twin", "--twin", str(twin),
               "--task", "pick_and_place", "--rollouts-per-cell", "1", "--region", "id", "--time-limit", "2",
               "--out", str(out), "--json", "--no-progress"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(data["worlds"]) == {"sim", "twin"}
    sim = json.loads((out / "grid_pick_and_place_sim.json").read_text())
    tw = json.loads((out / "grid_pick_and_place_twin.json").read_text())
    assert tw["world"] == "twin" and sum(map(sum, tw["trials"])) == 8
    assert [e["seed"] for e in tw["episodes"]] == [e["seed"] for e in sim["episodes"]]
    assert all(e["steps"] == 2 for e in tw["episodes"])
    cmp = json.loads((out / "grid_pick_and_place_sim_vs_twin.json").read_text())
    assert cmp["worlds"] == ["sim", "twin"] and cmp["cells"] == 8 and data["comparison"]["cells"] == 8
    assert (out / "grid_pick_and_place_sim_vs_twin.png").stat().st_size > 1000
    # bad requests name the problem
    assert main(["eval", "grid", "--policy", str(ckpt), "--world", "twin", "--task", "pick_and_place",
                 "--out", str(out)]) != 0
    assert "--world twin needs --twin DIR" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a twin directory"):
        twin_env_factory(tmp_path)
    with pytest.raises(ValueError, match="twin of task 'pick_and_place', not 'insert_hexagon'"):
        twin_env_factory(twin)("insert_hexagon", 0, {"third_person": (16, 16), "wrist": (16, 16)}, 1)
    with pytest.raises(ValueError, match="perturbations belong to the sim world"):
        evaluate_grid(ckpt, "pick_and_place", 1, world="twin", twin=twin, perturbation="dark", progress=False)
