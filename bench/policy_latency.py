#!/usr/bin/env python3
"""Policy inference latency and SFT training throughput on this machine's CPU.

Inference: one observation (third-person 256x256, wrist 128x128, 22-D proprio) through
twinrl_policy.inference.PolicyRunner (input checks + preprocessing + forward), the default
architecture of config/policy.yaml, with torch.set_num_threads(1) and (2). Goal: p99 <= 10 ms
(a tenth of the 10 Hz control period).

Training: SFT steps (batch sampling, augmentation, forward, backward, AdamW) on in-memory
synthetic demonstrations at the default image sizes; reports samples per second.

    python bench/policy_latency.py [--iters 300] [--train-steps 20] [--batch 32] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def inference_latency(ckpt: Path, threads: int, iters: int, deterministic: bool) -> dict:
    from twinrl_policy.inference import PolicyRunner

    torch.set_num_threads(threads)
    runner = PolicyRunner(ckpt, task="pick_and_place", deterministic=deterministic, num_threads=threads)
    rng = np.random.default_rng(0)
    tp = rng.integers(0, 255, (*runner.image_size("third_person"), 3), dtype=np.uint8)
    wr = rng.integers(0, 255, (*runner.image_size("wrist"), 3), dtype=np.uint8)
    proprio = rng.normal(size=22).astype(np.float32)
    # the commanded target relative to the TCP, for policies that take it (model.command_input)
    command = rng.normal(scale=0.01, size=7).astype(np.float32) if runner.needs_command else None
    for _ in range(20):
        runner.act(tp, wr, proprio, command=command)
    lat = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.act(tp, wr, proprio, command=command)
        lat.append((time.perf_counter() - t0) * 1e3)
    lat = np.asarray(lat)
    return {"threads": threads, "deterministic": deterministic, "iters": iters,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()), "max_ms": float(lat.max())}


def training_throughput(steps: int, batch: int, threads: int) -> dict:
    from twinrl_policy.config import load_model_config, load_sft_config
    from twinrl_policy.data import DemoPool
    from twinrl_policy.sft import SFTTrainer

    torch.set_num_threads(threads)
    cfg = load_model_config()
    sft = load_sft_config(overrides=[f"batch_size={batch}", "save_every=1000000", "log_every=1000000"])
    rng = np.random.default_rng(0)
    n = 256

    def pool(name):
        a = rng.uniform(-0.02, 0.02, (n, 7)).astype(np.float32)
        a[:, 6] = rng.choice([-1.0, 1.0], n)
        return DemoPool(name, rng.integers(0, 255, (n, *cfg.third_person_size, 3), dtype=np.uint8),
                        rng.integers(0, 255, (n, *cfg.wrist_size, 3), dtype=np.uint8),
                        rng.normal(size=(n, 22)).astype(np.float32), a, [name])
    with tempfile.TemporaryDirectory() as d:
        tr = SFTTrainer("pick_and_place", [], Path(d) / "bench.ckpt", cfg, sft, progress=False,
                        log=lambda s: None, pools=(pool("real"), pool("twin")))
        for _ in range(3):
            tr.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        dt = time.perf_counter() - t0
    return {"threads": threads, "batch": batch, "steps": steps, "samples_per_second": steps * batch / dt,
            "step_ms": dt / steps * 1e3, "parameters": tr.policy.num_parameters()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=300, help="timed inferences per setting")
    ap.add_argument("--train-steps", type=int, default=20, help="timed SFT steps (0 = skip)")
    ap.add_argument("--batch", type=int, default=32, help="SFT batch size")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    from twinrl_policy.checkpoint import save_checkpoint
    from twinrl_policy.config import load_model_config
    from twinrl_policy.model import VisuomotorPolicy

    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0]},
               "inference": [], "training": []}
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "bench.ckpt"
        torch.manual_seed(0)
        save_checkpoint(ckpt, VisuomotorPolicy(load_model_config()), version=1)
        for threads in (1, 2):
            for det in (True, False):
                results["inference"].append(inference_latency(ckpt, threads, args.iters, det))
    if args.train_steps > 0:
        for threads in (1, 2):
            results["training"].append(training_throughput(args.train_steps, args.batch, threads))
    results["goal_p99_ms"] = 10.0
    results["goal_met"] = {f"threads={r['threads']},{'det' if r['deterministic'] else 'stoch'}": r["p99_ms"] <= 10.0
                           for r in results["inference"]}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    m = results["machine"]
    print(f"CPU: {m['cpu_count']} cores, torch {m['torch']}, load average {m['load_avg_1min']:.2f}")
    print("inference (PolicyRunner.act, 256x256 + 128x128 images):")
    print("  threads  mode           p50 ms   p99 ms   mean ms   max ms   p99<=10ms")
    for r in results["inference"]:
        mode = "deterministic" if r["deterministic"] else "stochastic"
        print(f"  {r['threads']:>7}  {mode:<13} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:9.2f} "
              f"{r['max_ms']:8.2f}   {'yes' if r['p99_ms'] <= 10 else 'NO'}")
    for r in results["training"]:
        print(f"SFT training, threads={r['threads']}, batch {r['batch']}: {r['samples_per_second']:.1f} samples/s "
              f"({r['step_ms']:.0f} ms/step, {r['parameters']} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
