"""Does online fine-tuning help where the offline data is poor? Offline-only vs online + offline,
same number of gradient steps, on a PointMaze dataset generated with very noisy actions.

    python benchmarks/online_vs_offline.py --seeds 0 1 2 --out results/online_vs_offline

Both variants train the same cell config (only `online_training` differs) into
`<out>/cells/online_training~<bool>/seed~<seed>/`, are evaluated on `--num-eval` seeded episodes,
and the experiment is aggregated like a pipeline sweep: `<out>/summary.csv` and `<out>/figures/`
(learning curves of every term and of the evaluation score, offline vs online). The table printed at
the end is per seed and the mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffuser import steps  # noqa: E402
from diffuser.config import load_cell_config  # noqa: E402

# A small model, so that 3 seeds x 2 variants run in minutes on a 2-core CPU, and a schedule that
# collects enough online data within that budget (the seed's 10000/1000/100/100 suit 1M-step runs).
CELL = {
    "dataset": "gen-maze2d-umaze",
    "dataset_steps": 100_000,
    "dataset_action_noise": 1.5,
    "hidden_dim": 128,
    "vae_latent_dim": 8,
    "trajectory_latent_dim": 32,
    "history_horizon": 2,
    "n_diffusion_steps": 20,
    "n_sampling_steps": 5,
    "n_action_samples": 8,
    "batch_size": 128,
    "n_train_steps": 4000,
    "log_freq": 100,
    "save_freq": 1000,
    "eval_freq": 500,
    "num_eval": 10,
    "rl_warmup_steps": 1000,
    "rl_collect_freq": 100,
    "rl_collect_steps": 200,
    "rl_update_freq": 10,
}


def run_cell(out: Path, data_dir: Path, cell: dict, online: bool, seed: int, num_eval: int) -> dict:
    run_dir = out / "cells" / f"online_training~{online}" / f"seed~{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump({**cell, "online_training": online, "seed": seed}))
    config = load_cell_config(config_path)
    started = time.perf_counter()
    steps.train(config, run_dir, data_dir)
    seconds = time.perf_counter() - started
    result = steps.evaluate(run_dir, num_eval=num_eval)
    return {"online": online, "seed": seed, "score": result["mean_normalized_score"],
            "success": result["success_rate"], "train_seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "online_vs_offline")
    parser.add_argument("--num-eval", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="cell config overrides")
    args = parser.parse_args(argv)
    cell = dict(CELL, num_threads=args.threads)
    for item in args.set:
        key, value = item.split("=", 1)
        cell[key] = yaml.safe_load(value)
    data_dir = args.out / "data"
    steps.prepare(load_cell_config_from(cell, args.out), data_dir)
    rows = []
    for seed in args.seeds:
        for online in (False, True):
            rows.append(run_cell(args.out, data_dir, cell, online, seed, args.num_eval))
            print(json.dumps(rows[-1]), flush=True)
    from diffuser.reporting import aggregate_experiment

    aggregate_experiment(args.out, ["online_training", "seed"])
    print(f"\n{'variant':<16}" + "".join(f"seed {s:<6}" for s in args.seeds) + "mean    train s/run")
    for online in (False, True):
        mine = [r for r in rows if r["online"] == online]
        scores = [r["score"] for r in mine]
        label = "online+offline" if online else "offline"
        print(f"{label:<16}" + "".join(f"{s:<11.1f}" for s in scores)
              + f"{sum(scores) / len(scores):<8.1f}{sum(r['train_seconds'] for r in mine) / len(mine):.0f}")
    print(f"summary and figures: {args.out}/summary.csv, {args.out}/figures/")
    return 0


def load_cell_config_from(cell: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "base_config.yaml"
    path.write_text(yaml.safe_dump(cell))
    return load_cell_config(path)


if __name__ == "__main__":
    raise SystemExit(main())
