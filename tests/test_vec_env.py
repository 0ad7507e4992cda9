"""Vectorised twin envs: batched API, parity with single envs, worker errors, clean shutdown."""
from __future__ import annotations

import numpy as np
import pytest

from twinrl_twin.scan import load_groundtruth
from twinrl_twin.scan_sim import simulate_scan
from twinrl_twin.twin_assets import build_twin
from twinrl_twin.vec_env import EnvWorkerError, InlineExecutor, ProcessExecutor, TwinEnvSpec, VecEnv


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("vec")
    simulate_scan("pick_and_place", root / "scan", frames=8, seed=1, progress=False)
    build_twin(root / "scan", root / "twin", "pick_and_place", load_groundtruth(root / "scan").scan_to_base,
               "groundtruth", preview=False)
    return root / "twin"


def _single_rollout(twin, seed, cell, steps):
    from twinrl_twin.twin_env import make_twin_env

    env = make_twin_env(twin, render=True, seed=seed)
    obs, info = env.reset(seed=seed, options={"cell": cell})
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(env.expert_action())
        out.append(obs)
    env.close()
    return out


def test_process_vec_env_matches_single_envs(twin):
    seeds, cells = [3, 4, 5], [(0, 0), (2, 3), (3, 1)]
    steps = 6
    vec = VecEnv([TwinEnvSpec(str(twin), seed=s) for s in seeds], ProcessExecutor(workers=2))
    procs = list(vec.executor.procs)
    try:
        obs, infos = vec.reset(seeds=seeds, options=[{"cell": c} for c in cells])
        assert obs["third_person"].shape == (3, 256, 256, 3) and obs["wrist"].shape == (3, 128, 128, 3)
        assert obs["proprio"].shape == (3, 22) and len(infos) == 3
        batches = [obs]
        for _ in range(steps):
            obs, rew, term, trunc, infos = vec.step(vec.expert_actions())
            assert rew.shape == (3,) and term.shape == (3,) and trunc.shape == (3,)
            batches.append(obs)
        # a subset of envs can be stepped / reset alone
        o1, *_ = vec.step(np.zeros((1, 7)), indices=[1])
        assert o1["proprio"].shape == (1, 22)
        with pytest.raises(ValueError, match=r"shape \(3, 7\)"):
            vec.step(np.zeros((2, 7)))
    finally:
        vec.close()
    assert all(not p.is_alive() for p in procs)                    # clean shutdown
    for i, (seed, cell) in enumerate(zip(seeds, cells)):
        single = _single_rollout(twin, seed, cell, steps)
        for t in range(steps + 1):
            np.testing.assert_allclose(batches[t]["proprio"][i], single[t]["proprio"], atol=1e-6)
            diff = np.abs(batches[t]["third_person"][i].astype(int) - single[t]["third_person"].astype(int))
            assert diff.mean() < 0.5, f"env {i} step {t}: images differ"


def test_worker_errors_name_the_env(twin):
    with VecEnv([TwinEnvSpec(str(twin), seed=s, render=False) for s in (0, 1)], ProcessExecutor(workers=2)) as vec:
        vec.reset(seeds=[0, 1])
        with pytest.raises(EnvWorkerError, match=r"env 1: reset failed: ValueError: unknown reset options") as err:
            vec.call("reset", indices=[1], options={"bogus": True})
        assert err.value.index == 1 and "Traceback" in err.value.remote_traceback
        procs = list(vec.executor.procs)
    assert all(not p.is_alive() for p in procs)
    # an env that cannot be built: the error names its index and the bad file
    with pytest.raises(EnvWorkerError, match=r"env 1: could not be created.*nope"):
        VecEnv([TwinEnvSpec(str(twin)), TwinEnvSpec(str(twin.parent / "nope"))], ProcessExecutor(workers=2))


def test_inline_executor_same_api(twin):
    with VecEnv([TwinEnvSpec(str(twin), seed=s, render=False) for s in (7, 8)], InlineExecutor()) as vec:
        obs, _ = vec.reset(seeds=[7, 8])
        a = vec.expert_actions()
        assert a.shape == (2, 7) and np.all(np.isfinite(a))
        obs2, rew, term, trunc, infos = vec.step(a)
        assert obs2["proprio"].shape == (2, 22) and "third_person" not in obs2
        assert [i["step"] for i in infos] == [1, 1]
        assert vec.call("attr:task") == ["pick_and_place", "pick_and_place"]
        with pytest.raises(EnvWorkerError, match="env 0"):
            vec.call("no_such_method", indices=[0])
        with pytest.raises(IndexError):
            vec.reset(indices=[5])
