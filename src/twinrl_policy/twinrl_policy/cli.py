"""``twinrl train`` and ``twinrl eval``: training stages and policy evaluation.

``twinrl train sft --task T --data DIR [DIR ...] [--alpha A] --out CKPT [--steps N]
[--batch B] [--quick] [--pairs DIR [DIR ...] [--align-weight W] [--sweeps DIR [DIR ...]]]`` runs
supervised fine-tuning (twinrl_policy.sft) on real + twin demonstrations; ``--pairs``: real demos
replayed in the twin (``twinrl demos pair``) for the paired feature-alignment loss; ``--sweeps``:
alignment sweeps (``twinrl demos sweep``), more real sides for pairs, no demonstrations. Running
the same command again after an interruption resumes from ``CKPT.state``; ``--no-resume``
starts over.

``twinrl eval grid --policy CKPT --world sim [twin --twin DIR] --task T --rollouts-per-cell K
--out DIR [--json]`` evaluates a policy over the task's workspace grid (twinrl_policy.evaluation)
and, with both worlds, compares their heatmaps.
"""
from __future__ import annotations

import sys

__all__ = ["register_train", "register_eval", "run_sft", "run_eval_grid"]


def _split_overrides(items) -> tuple[list[str], list[str]]:
    model, sft = [], []
    for item in items or []:
        key = item.split("=", 1)[0]
        if key.startswith("model."):
            model.append(item[len("model."):])
        elif key.startswith("sft."):
            sft.append(item[len("sft."):])
        else:
            raise ValueError(f"--set {item}: keys start with 'model.' or 'sft.'")
    return model, sft


def run_sft(args) -> int:
    from .config import load_model_config, load_sft_config
    from .sft import SFTTrainer

    model_over, sft_over = _split_overrides(args.set)
    if args.quick:  # a short smoke run; explicit options still win
        sft_over = ["steps=50", "batch_size=8", "save_every=25", "log_every=5"] + sft_over
    if args.steps is not None:
        sft_over.append(f"steps={args.steps}")
    if args.batch is not None:
        sft_over.append(f"batch_size={args.batch}")
    if args.alpha is not None:
        sft_over.append(f"alpha={args.alpha}")
    if args.threads is not None:
        sft_over.append(f"num_threads={args.threads}")
    if args.align_weight is not None:
        sft_over.append(f"align_weight={args.align_weight}")
    model_cfg = load_model_config(args.config, model_over)
    sft_cfg = load_sft_config(args.config, sft_over)
    trainer = SFTTrainer(args.task, args.data, args.out, model_cfg, sft_cfg, logdir=args.logdir,
                         version=args.version, resume=not args.no_resume, progress=not args.no_progress,
                         log=lambda s: print(s, file=sys.stderr), pair_dirs=args.pairs or (),
                         sweep_dirs=args.sweeps or ())
    result = trainer.train()
    print(f"checkpoint: {result.checkpoint}")
    print(f"sha256: {result.sha256}")
    print(f"steps: {result.steps}  final loss: {result.final_loss:.4f}  "
          f"samples/s: {result.samples_per_second:.1f}")
    print(f"tensorboard: {trainer.logdir}")
    return 0


def register_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a policy stage (sft)",
                                   description="Train one stage of the method.")
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    sft = stages.add_parser("sft", help="imitation on real + twin demonstrations (L_IL = -E log pi(a|s))")
    sft.add_argument("--task", required=True, help="task name (pick_and_place, insert_hexagon, ...)")
    sft.add_argument("--data", nargs="+", required=True, metavar="DIR", help="dataset directories")
    sft.add_argument("--alpha", type=float, default=None,
                     help="probability that a batch sample is real (default: config sft.alpha)")
    sft.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    sft.add_argument("--steps", type=int, default=None, help="training steps (default: config sft.steps)")
    sft.add_argument("--batch", type=int, default=None, help="batch size (default: config sft.batch_size)")
    sft.add_argument("--pairs", nargs="+", default=None, metavar="DIR",
                     help="paired datasets: the real demos of --data replayed in the twin (twinrl demos pair), "
                          "for the feature-alignment loss")
    sft.add_argument("--sweeps", nargs="+", default=None, metavar="DIR",
                     help="alignment sweeps (twinrl demos sweep): real images of the twin demos' arm paths, "
                          "paired with their replays in the twin given in --pairs; no imitation data")
    sft.add_argument("--align-weight", type=float, default=None,
                     help="weight of the paired feature-alignment loss (default: config sft.align_weight)")
    sft.add_argument("--quick", action="store_true", help="a short smoke run (50 steps of 8 samples)")
    sft.add_argument("--config", default=None, help="policy config YAML (default: config/policy.yaml)")
    sft.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config value, e.g. model.wrist_size=[64,64] or sft.learning_rate=1e-3")
    sft.add_argument("--logdir", default=None, help="TensorBoard directory (default: <out stem>_tb/)")
    sft.add_argument("--version", type=int, default=1, help="policy version stored in the checkpoint")
    sft.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sft.add_argument("--no-resume", action="store_true", help="ignore an existing training state")
    sft.add_argument("--no-progress", action="store_true", help="no progress bar")
    sft.set_defaults(func=run_sft)


def _print_grid(result, stem: str, out, png) -> None:
    def pct(v):
        return "n/a" if v != v else f"{100 * v:.1f}%"
    pert = f" ({result.perturbation})" if result.perturbation else ""
    print(f"{result.task} in {result.world}{pert}, policy v{result.policy_version}: ID {pct(result.id_success_rate)}, "
          f"OOD {pct(result.ood_success_rate)}, average {pct(result.average_success_rate)} "
          f"({sum(map(sum, result.trials))} episodes)")
    print("success rate per cell (rows along x, * = ID):")
    for r in range(result.rows):
        cells = []
        for c in range(result.cols):
            v = result.success_rate[r][c]
            cells.append(("  -  " if v is None else f"{v:5.2f}") + ("*" if result.region[r][c] == "id" else " "))
        print(f"  row {r}: " + " ".join(cells))
    print(f"results: {out / (stem + '.json')}\nheatmap: {png}")


def run_eval_grid(args) -> int:
    import json
    from pathlib import Path

    from .evaluation import (check_world, compare_grids, evaluate_grid, load_grid_result, write_comparison,
                             write_heatmap)

    worlds = list(dict.fromkeys(args.world))
    for world in worlds:        # every world's request checked before the first one runs
        check_world(world, args.twin, args.perturbation)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for world in worlds:
        result = evaluate_grid(args.policy, args.task, args.rollouts_per_cell, world=world, workers=args.workers,
                               seed=args.seed, deterministic=not args.stochastic, time_limit=args.time_limit,
                               region=args.region, progress=not args.no_progress, perturbation=args.perturbation,
                               twin=args.twin)
        stem = f"grid_{args.task}_{world}" + (f"_{args.perturbation}" if args.perturbation else "")
        text = result.to_json()
        (out / f"{stem}.json").write_text(text)
        png = write_heatmap(result, out / f"{stem}.png")
        data = json.loads(text)
        data.pop("episodes")
        data["files"] = {"json": str(out / f"{stem}.json"), "heatmap": str(png)}
        summaries[world] = data
        if not args.json:
            _print_grid(result, stem, out, png)

    # twin vs sim (paper Fig. 13): whenever both worlds' results of this policy are in --out
    comparison = None
    files = [out / f"grid_{args.task}_{w}.json" for w in ("sim", "twin")]
    if not args.perturbation and all(f.is_file() for f in files):
        sim, twin = (load_grid_result(f) for f in files)
        if sim.policy == twin.policy == str(args.policy):
            comparison = compare_grids(sim, twin)
            stem = f"grid_{args.task}_sim_vs_twin"
            (out / f"{stem}.json").write_text(json.dumps(comparison, indent=2))
            comparison["files"] = {"json": str(out / f"{stem}.json"),
                                   "png": str(write_comparison(sim, twin, out / f"{stem}.png", comparison))}
            if not args.json:
                rho = comparison["spearman"]
                print(f"sim vs twin: rank correlation of cell success {'n/a' if rho != rho else f'{rho:.2f}'} "
                      f"over {comparison['cells']} cells, mean |difference| {comparison['mean_abs_diff']:.2f}\n"
                      f"comparison: {comparison['files']['png']}")
    if args.json:
        data = summaries[worlds[0]] if len(worlds) == 1 else {"worlds": summaries}
        if comparison is not None:
            data["comparison"] = comparison
        print(json.dumps(data, indent=2))
    return 0


def register_eval(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a policy (grid)", description="Evaluate a policy.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    g = kinds.add_parser("grid", help="success rate per cell of the task's workspace grid")
    g.add_argument("--policy", required=True, metavar="CKPT", help="policy checkpoint")
    g.add_argument("--world", nargs="+", choices=("sim", "twin"), default=["sim"],
                   help="world(s) to evaluate in; with both (here or in earlier runs into --out) the "
                        "heatmaps are compared (grid_<task>_sim_vs_twin.json/png)")
    g.add_argument("--twin", default=None, metavar="DIR", help="twin directory (twinrl twin build), for --world twin")
    g.add_argument("--task", required=True, help="task name")
    g.add_argument("--rollouts-per-cell", type=int, default=5, metavar="K", help="episodes per cell")
    g.add_argument("--out", required=True, metavar="DIR", help="directory for the JSON results and heatmap PNG")
    g.add_argument("--json", action="store_true", help="print the results as JSON")
    g.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    g.add_argument("--seed", type=int, default=0, help="seed of the start configurations")
    g.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    g.add_argument("--time-limit", type=int, default=None, help="steps per episode (default: the task's)")
    g.add_argument("--region", choices=("all", "id", "ood"), default="all", help="cells to evaluate")
    g.add_argument("--perturbation", choices=("clutter", "dark", "dynamic_light"), default=None,
                   help="robustness evaluation under a visual perturbation of the sim world")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=run_eval_grid)
