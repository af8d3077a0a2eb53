"""Normalized score of DiffusionRL and the baselines (BC, IQL, FQL, DiffusionPolicy) trained under one
wall-clock budget (or step count).

For each model and seed: the cell config is the schema defaults plus `--set` overrides; the run
goes through the pipeline's own steps (`diffuser.steps.pretrain_vae` when the model has a VAE and
`vae_pretrain_steps > 0`, as the workflow does, then `diffuser.steps.train`) in a temporary run
directory, and the final EMA policy is evaluated with `diffuser.steps.evaluate`. The VAE
pre-training counts against the budget.

`--budget-seconds` stops training at the first step after the deadline (the trainer's loop reads
`n_train_steps` from the config dict on every step; the benchmark lowers it when time is up), so a
budget run measures what the wall clock buys on this machine; `--steps` fixes the step count
instead (`n_train_steps`; `vae_pretrain_steps` stays as configured unless `--set` changes it).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_policy_quality.py \
        --models DiffusionRL BC --dataset gen-maze2d-umaze --seeds 0 1 2 --budget-seconds 300
    PYTHONPATH=. .venv/bin/python benchmarks/bench_policy_quality.py --models DiffusionRL \
        --seeds 0 1 --steps 3000 --set hidden_dim=128 sampling_temperature=0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffuser import steps  # noqa: E402
from diffuser.config import cell_defaults, needs_vae_pretraining, validate_cell_config  # noqa: E402
from diffuser.datasets.prepare import prepare_dataset  # noqa: E402
from diffuser.launch import parse_key_values  # noqa: E402
from diffuser.training import trainer as trainer_module  # noqa: E402
from diffuser.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

MODEL_NAMES = {name: f"models.{name}" for name in ("DiffusionRL", "BC", "IQL", "FQL", "DiffusionPolicy")}
# the models whose acting the inference-only overrides of --eval-variants change
SAMPLING_MODELS = ("DiffusionRL", "DiffusionPolicy")


class Deadline:
    """Stops every Trainer started in this process at the first step after `time.perf_counter() > at`."""

    def __init__(self):
        self.at: float | None = None
        original = trainer_module.Trainer.train_step
        deadline = self

        def train_step(trainer):
            terms = original(trainer)
            if deadline.at is not None and time.perf_counter() > deadline.at:
                trainer.config["n_train_steps"] = trainer.step
            return terms

        trainer_module.Trainer.train_step = train_step


def evaluate_variant(run_dir: Path, overrides: dict, num_eval: int) -> float:
    """Score of the run's final EMA weights acted with inference-only overrides (sampling settings)."""
    state = load_checkpoint(run_dir / "final.pt")
    state["config"] = {**state["config"], **overrides}
    path = save_checkpoint(run_dir / "variant.pt", state)
    return steps.evaluate(run_dir, checkpoint=path, num_eval=num_eval, out=run_dir / "variant_eval.json")[
        "mean_normalized_score"]


def run_one(model: str, seed: int, args, overrides: dict, deadline: Deadline) -> dict:
    config = cell_defaults()
    config.update(overrides)
    config.update(
        diffusion=MODEL_NAMES[model], dataset=args.dataset, seed=seed, num_threads=args.threads,
        device="cpu", eval_freq=10**9, save_freq=10**9, log_freq=100, continue_training=False,
        num_eval=args.num_eval,
    )
    config["n_train_steps"] = args.steps if args.steps else 10**9
    config = validate_cell_config(config, source="benchmark config")
    # built (or found up to date) before the clock starts, as the workflow's dataset job would
    prepare_dataset(config["dataset"], args.data_dir, steps=config["dataset_steps"],
                    action_noise=config["dataset_action_noise"], seed=config["dataset_seed"])
    with tempfile.TemporaryDirectory(prefix="bench_policy_") as tmp:
        if args.keep_dir:
            tmp = Path(args.keep_dir) / f"{model}_seed{seed}"
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        deadline.at = start + args.budget_seconds if args.budget_seconds else None
        vae_path = None
        pretrain_seconds = 0.0
        if needs_vae_pretraining(config):
            vae_path = steps.pretrain_vae(config, Path(tmp) / "vae" / "vae.pt", data_dir=args.data_dir)
            pretrain_seconds = time.perf_counter() - start
        train_start = time.perf_counter()
        steps.train(config, run_dir, data_dir=args.data_dir, vae_path=vae_path)
        train_seconds = time.perf_counter() - train_start
        deadline.at = None
        n_steps = json.loads((run_dir / "run.json").read_text())["steps"]
        eval_start = time.perf_counter()
        result = steps.evaluate(run_dir, num_eval=args.num_eval)
        eval_seconds = time.perf_counter() - eval_start
        variants = {}
        if model in SAMPLING_MODELS:
            for text in args.eval_variants:
                variants[text] = evaluate_variant(run_dir, parse_key_values(text.split(), "--eval-variants"), args.num_eval)
    return {
        "variants": variants,
        "model": model, "seed": seed, "score": result["mean_normalized_score"],
        "success_rate": result["success_rate"], "steps": n_steps,
        "pretrain_steps": config["vae_pretrain_steps"] if vae_path else 0,
        "pretrain_s": pretrain_seconds, "train_s": train_seconds,
        "total_s": pretrain_seconds + train_seconds, "eval_s": eval_seconds,
        "steps_per_s": n_steps / train_seconds if train_seconds > 0 else 0.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["DiffusionRL", "BC"], choices=sorted(MODEL_NAMES))
    parser.add_argument("--dataset", default="gen-maze2d-umaze")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-seconds", type=float, default=None, help="wall clock for pretrain + train")
    budget.add_argument("--steps", type=int, default=None, help="n_train_steps (default: the config's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (YAML values)")
    parser.add_argument("--bc-set", nargs="*", default=None, metavar="KEY=VALUE",
                        help="overrides for BC only (default: the same as --set)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-eval", type=int, default=10)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--eval-variants", nargs="*", default=[], metavar="'KEY=VALUE ...'",
                        help="also evaluate each DiffusionRL / DiffusionPolicy run with these inference-only overrides "
                             "(sampling_temperature, n_action_samples, ddim_eta, n_sampling_steps, sampler)")
    parser.add_argument("--keep-dir", default=None, help="keep the run directories under this folder")
    parser.add_argument("--json", default=None, help="append one JSON line per run to this file")
    args = parser.parse_args(argv)
    overrides = parse_key_values(args.set, "--set")
    if args.budget_seconds is None and args.steps is None:
        args.steps = overrides.get("n_train_steps", cell_defaults()["n_train_steps"])
    elif "n_train_steps" in overrides:
        parser.error("n_train_steps in --set contradicts --steps / --budget-seconds; give one of them")
    bc_overrides = parse_key_values(args.bc_set, "--bc-set") if args.bc_set is not None else overrides
    deadline = Deadline()
    rows = []
    for model in args.models:
        for seed in args.seeds:
            row = run_one(model, seed, args, bc_overrides if model == "BC" else overrides, deadline)
            row["overrides"] = bc_overrides if model == "BC" else overrides
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, "dataset": args.dataset, "threads": args.threads}) + "\n")
    print(f"\ndataset {args.dataset}, threads {args.threads}, num_eval {args.num_eval}, "
          f"{f'budget {args.budget_seconds:.0f} s' if args.budget_seconds else f'{args.steps} steps'}, "
          f"overrides {overrides}")
    print(f"{'model':<16}{'seeds':<10}{'scores':<28}{'mean':>7}{'steps':>8}{'steps/s':>9}{'train s':>9}")
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        scores = " ".join(f"{r['score']:.1f}" for r in mine)
        print(f"{model:<16}{','.join(str(r['seed']) for r in mine):<10}{scores:<28}"
              f"{statistics.mean(r['score'] for r in mine):>7.1f}"
              f"{statistics.mean(r['steps'] for r in mine):>8.0f}"
              f"{statistics.mean(r['steps_per_s'] for r in mine):>9.1f}"
              f"{statistics.mean(r['total_s'] for r in mine):>9.1f}")
        for text in args.eval_variants if model in SAMPLING_MODELS else []:
            vs = [r["variants"][text] for r in mine]
            print(f"  variant {text}: {' '.join(f'{v:.1f}' for v in vs)}  mean {statistics.mean(vs):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
