"""``twinrl demos``: stage I demonstration generation.

    twinrl demos generate --twin TWIN --seed-demo DEMO --n-id N --n-ood M --method affine|plan \\
        --workers K --out DIR [--seed S] [--json]
    twinrl demos replay DIR [DIR ...] [--workers K] [--json]     transfer rate in the sim world
    twinrl demos pair --twin TWIN --demos DIR --out DIR [--json]  paired real/twin samples
    twinrl demos sweep --paths TWIN_DEMOS --configurations REAL_DEMOS --out DIR [--json]
        alignment sweeps in the sim world: the twin demos' arm paths in the real demos' cells
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demos", help="stage I: twin demonstrations from one seed demonstration",
                              description="Exploration-space expansion: synthesise twin demonstrations over ID "
                                          "and OOD object placements (docs/demogen.md).")
    sub = p.add_subparsers(dest="demos_command", metavar="DEMOS_COMMAND")

    g = sub.add_parser("generate", help="generate twin demos by trajectory transfer or motion planning")
    g.add_argument("--twin", required=True, type=Path, help="twin directory (twinrl twin build)")
    g.add_argument("--seed-demo", required=True, type=Path, help="the seed demonstration (episode .npz)")
    g.add_argument("--n-id", type=int, default=30, help="demos in in-distribution cells")
    g.add_argument("--n-ood", type=int, default=30, help="demos in out-of-distribution cells")
    g.add_argument("--method", choices=["affine", "plan"], default="affine")
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--out", required=True, type=Path, help="dataset directory for the demos")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--config", default="demogen", help="config file (default config/demogen.yaml)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set planner.time_limit=2.0 or --set render=false")
    g.add_argument("--json", action="store_true", help="print a JSON summary on the last line")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("replay", help="replay demos in the sim world: the transfer rate")
    r.add_argument("data", nargs="+", type=Path, help="dataset directories or episode files")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--settle-steps", type=int, default=10)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_replay)

    a = sub.add_parser("pair", help="replay demonstrations in the twin: paired real/twin samples")
    a.add_argument("--twin", required=True, type=Path)
    a.add_argument("--demos", required=True, nargs="+", type=Path, help="dataset directories or episode files")
    a.add_argument("--out", required=True, type=Path)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_pair)

    w = sub.add_parser("sweep", help="alignment sweeps in the sim world: the twin demos' arm paths, objects left "
                                     "where the real demos had them (pair them with twinrl demos pair)")
    w.add_argument("--paths", required=True, nargs="+", type=Path, help="twin demos (dataset directories or files)")
    w.add_argument("--configurations", required=True, nargs="+", type=Path,
                   help="real demos whose initial configurations (and image sizes) the sweeps take")
    w.add_argument("--out", required=True, type=Path)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_sweep)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fail(cmd: str, exc: Exception) -> int:
    print(f"twinrl demos {cmd}: error: {exc}", file=sys.stderr)
    return 2


def cmd_generate(args) -> int:
    from twinrl_bringup.config import ConfigError
    from twinrl_bringup.dataset import DatasetError

    from ..twin_assets import TwinAssetError
    from .generate import generate, load_demogen_config

    try:
        config = load_demogen_config(args.config, args.overrides)
        summary = generate(args.twin, args.seed_demo, args.out, args.n_id, args.n_ood, method=args.method,
                           workers=args.workers, seed=args.seed, config=config,
                           progress=sys.stderr.isatty() or not args.json)
    except (ConfigError, DatasetError, TwinAssetError, ValueError, FileNotFoundError) as exc:
        return _fail("generate", exc)
    s = summary
    print(f"task {s['task']}  method {s['method']}  generated {s['generated']}/{s['requested']} "
          f"(id {s['generated_id']}/{s['requested_id']}, ood {s['generated_ood']}/{s['requested_ood']})  "
          f"attempts {s['attempts']}  candidate success {s['candidate_success_rate']:.3f}")
    print(f"rejected {s['rejected']}" + ("".join(f"  {k}: {v}" for k, v in sorted(s["rejections"].items()))))
    for reason, detail in sorted(s["rejection_examples"].items()):
        print(f"  e.g. {reason}: {detail}")
    missing = {k: v for k, v in s["missing_cells"].items() if v}
    if missing:
        print(f"cells without a demo: {missing}")
    print(f"wall {s['wall_time_s']:.1f} s  {s['demos_per_minute']:.1f} demos/min  ({s['workers']} workers)  -> {s['out']}")
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "files"}))
    return 0 if s["generated"] > 0 else 1


def cmd_replay(args) -> int:
    from twinrl_bringup.dataset import DatasetError

    from .replay import transfer_rate

    try:
        s = transfer_rate([str(d) for d in args.data], workers=args.workers, settle_steps=args.settle_steps,
                          progress=sys.stderr.isatty() or not args.json)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        return _fail("replay", exc)
    print(f"replay in the sim world: {s['successes']}/{s['episodes']} = {s['transfer_rate']:.3f} "
          f"({s['steered']} steered to their recorded targets); their actions alone: "
          f"{s['open_loop_successes']}/{s['episodes']} = {s['open_loop_rate']:.3f}")
    for k, v in s["by"].items():
        print(f"  {k:<32} {v['successes']}/{v['episodes']} = {v['rate']:.3f}")
    if args.json:
        print(json.dumps(s))
    return 0


def cmd_pair(args) -> int:
    from twinrl_bringup.dataset import DatasetError

    from ..twin_assets import TwinAssetError
    from .replay import pair_demos

    try:
        s = pair_demos(args.twin, [str(d) for d in args.demos], args.out, progress=sys.stderr.isatty() or not args.json)
    except (DatasetError, TwinAssetError, ValueError, FileNotFoundError) as exc:
        return _fail("pair", exc)
    print(f"{s['count']} pairs -> {s['out']}; twin replay succeeded in {s['twin_successes']}/{s['count']}, "
          f"outcome agreement with the originals {s['outcome_agreement']:.3f}")
    if args.json:
        print(json.dumps(s))
    return 0


def cmd_sweep(args) -> int:
    from twinrl_bringup import dataset as ds

    from ..sim import make_env
    from .replay import camera_overrides_of, episode_paths, sweep_paths

    try:
        confs = episode_paths([str(d) for d in args.configurations])
        if not confs:
            raise ValueError(f"no episodes in {', '.join(map(str, args.configurations))}")
        task = ds.load_episode(confs[0], images=False).task
        env = make_env(task, render=True, camera_overrides=camera_overrides_of(confs[0]))
        try:
            s = sweep_paths(env, [str(d) for d in args.paths], [str(p) for p in confs], args.out,
                            progress=sys.stderr.isatty() or not args.json)
        finally:
            env.close()
    except (ds.DatasetError, ValueError, FileNotFoundError) as exc:
        return _fail("sweep", exc)
    print(f"{s['count']} alignment sweeps -> {s['out']}")
    if args.json:
        print(json.dumps(s))
    return 0
