"""`python -m diffuser STEP ...`: each pipeline step as a command (the Snakemake rules call these)."""

from __future__ import annotations

import argparse
import json
import sys

from diffuser.config import cell_defaults
from diffuser.errors import UserError


def _cell_config(args) -> dict:
    from diffuser.config import load_cell_config

    config = load_cell_config(args.cell_config)
    if args.threads:
        config["num_threads"] = args.threads
    return config


def cmd_prepare(args) -> None:
    from diffuser.datasets.prepare import parse_dataset_key, prepare_dataset

    name, steps, action_noise, seed = args.dataset, args.steps, args.action_noise, args.seed
    key = parse_dataset_key(args.dataset)
    if key is not None:  # a directory name under data/processed/: its generation settings are in it
        name, steps, key_noise, seed = key
        action_noise = key_noise if key_noise is not None else action_noise
    out = prepare_dataset(name, args.data_dir, steps=steps, action_noise=action_noise, seed=seed)
    print(f"dataset ready: {out}")


def cmd_pretrain(args) -> None:
    from diffuser import steps

    out = steps.pretrain_vae(_cell_config(args), args.out, args.data_dir)
    print(f"VAE written: {out}")


def cmd_train(args) -> None:
    from diffuser import steps

    final = steps.train(_cell_config(args), args.run_dir, args.data_dir, vae_path=args.vae)
    print(f"trained: {final}")


def cmd_evaluate(args) -> None:
    from diffuser import steps

    result = steps.evaluate(
        args.run_dir, checkpoint=args.checkpoint, num_eval=args.num_eval, out=args.out, threads=args.threads or None
    )
    print(json.dumps({k: result[k] for k in ("step", "mean_return", "mean_normalized_score", "success_rate")}))


def cmd_aggregate(args) -> None:
    from diffuser.config import load_spec
    from diffuser.reporting import aggregate_experiment

    spec = load_spec(args.spec)
    # only the spec's cells: folders under cells/ left by an earlier spec (a dropped seed) are not counted
    paths = aggregate_experiment(args.exp_dir, spec.swept_variables, cells=[cell.name for cell in spec.cells()])
    print(f"summary and figures written under {args.exp_dir}: {json.dumps({k: str(v) for k, v in paths.items()})}")


def cmd_demo(args) -> int:
    """Run the whole default pipeline with Snakemake, write its report and say where the results are."""
    from diffuser.demo import run_demo

    return run_demo(cores=args.cores)


def cmd_report(args) -> int:
    """Summary, figures and HTML report of an experiment again, from its finished cells."""
    from diffuser.demo import regenerate_report

    return regenerate_report(args.spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffuser", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build data/processed/<dataset>/ from its source")
    p.add_argument("--dataset", required=True)
    defaults = cell_defaults()
    p.add_argument("--steps", type=int, default=defaults["dataset_steps"], help="steps of a generated dataset")
    p.add_argument("--action-noise", type=float, default=defaults["dataset_action_noise"],
                   help="action noise of a generated maze dataset")
    p.add_argument("--seed", type=int, default=defaults["dataset_seed"], help="seed of a generated dataset")
    p.add_argument("--data-dir", default="data")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pretrain", help="pre-train the action VAE of a cell config")
    p.add_argument("--cell-config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (overrides num_threads)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="train one cell (resumes from its checkpoints)")
    p.add_argument("--cell-config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--vae", default=None, help="pre-trained VAE (vae.pt) to warm-start from")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (overrides num_threads)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's final policy (or any checkpoint)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--num-eval", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (overrides num_threads)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("aggregate", help="summary table and figures of an experiment")
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--spec", required=True)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("report", help="summary, figures and report of an experiment again, from its finished cells")
    p.add_argument("--spec", default="config/config.yaml", help="the experiment's spec (default: config/config.yaml)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="run the default pipeline (config/config.yaml) with Snakemake, then its report")
    p.add_argument("--cores", type=int, default=None, help="CPU cores for all jobs together (default: all)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UserError as err:  # the user's mistake: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        reason = interrupt.args[0] if interrupt.args else "SIGINT"
        print(f"interrupted ({reason}); run the same command again to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    return code or 0
