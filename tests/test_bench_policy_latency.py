"""bench/policy_latency.py runs with the configured policy (the command input included) and
prints finite latencies and a training rate."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_policy_latency_bench_runs(ros_env):
    cmd = [sys.executable, str(ROOT / "bench" / "policy_latency.py"), "--iters", "5", "--train-steps", "2",
           "--batch", "4", "--json"]
    r = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["inference"], out
    for row in out["inference"]:
        assert row["iters"] == 5 and 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] < 10_000
    assert out["training"] and all(math.isfinite(t["samples_per_second"]) and t["samples_per_second"] > 0
                                   for t in out["training"]), out
