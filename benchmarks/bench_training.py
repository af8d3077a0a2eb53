"""Training steps per second of DiffusionRL (with and without its IQL critic) against BC.

Each model is the default cell config (diffuser/schemas/cell.schema.yaml: batch 256, hidden 256,
VAE latent 64, trajectory latent 128, 100 diffusion steps) with only `diffusion` /
`use_value_function` changed, trained by the offline Trainer on gen-maze2d-umaze (100k generated
steps, in data/). One timed step is `Trainer.train_step()`: batch sampling, loss, backward, grad
clip, AdamW, target and EMA updates. After `--warmup` steps, every repeat times `--steps` steps of
each model in turn (round-robin, so a change in the machine's load hits all of them alike); the
table shows medians over repeats and each model's time per step as a multiple of BC's.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch
from _common import (
    add_common_arguments,
    cell_config,
    ensure_dataset,
    median,
    parameter_count,
    print_table,
    set_threads,
)

from diffuser import steps
from diffuser.registry import trainer_for

# (label, config keys): BC first, it is the baseline.
VARIANTS = (
    ("BC", {"diffusion": "models.BC"}),
    ("DiffusionRL, no critic", {"diffusion": "models.DiffusionRL", "use_value_function": False}),
    ("DiffusionRL + critic", {"diffusion": "models.DiffusionRL", "use_value_function": True}),
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 50, --quick 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10, --quick 3)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.steps = args.steps or (10 if args.quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    return args


def build_trainer(config: dict, data_dir, run_dir):
    torch.manual_seed(config["seed"])
    dataset = steps.load_dataset(config, data_dir)
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
    return trainer_for(config)(config, dataset, model, run_dir)


def seconds_per_step(trainer, n_steps: int) -> float:
    begin = time.perf_counter()
    for _ in range(n_steps):
        trainer.train_step()
    return (time.perf_counter() - begin) / n_steps


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    set_threads(args.threads)
    with contextlib.ExitStack() as stack:
        data_dir = ensure_dataset(args, stack)
        run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-training-"))
        trainers = {}
        for label, keys in VARIANTS:
            config = cell_config(args, **keys)
            trainers[label] = build_trainer(config, data_dir, run_dir)
            seconds_per_step(trainers[label], args.warmup)
        times = {label: [] for label in trainers}
        for _ in range(args.repeats):
            for label, trainer in trainers.items():
                times[label].append(seconds_per_step(trainer, args.steps))

    baseline = median(times["BC"])
    rows = []
    for label, trainer in trainers.items():
        ms = 1000 * median(times[label])
        rows.append({
            "model": label,
            "parameters": parameter_count(trainer.model),
            "ms_per_step": ms,
            "steps_per_second": 1000 / ms,
            "time_vs_bc": median(times[label]) / baseline,
        })
    config = trainers["BC"].config
    print(
        f"training steps/s: {args.dataset} ({args.dataset_steps} steps), batch {config['batch_size']}, "
        f"hidden {config['hidden_dim']}, {args.steps} steps x median of {args.repeats} repeats "
        f"after {args.warmup} warm-up, {args.threads} torch thread(s)"
    )
    print_table(
        [("model", "model", "s"), ("parameters", "params", ","), ("ms_per_step", "ms/step", ".2f"),
         ("steps_per_second", "steps/s", ".1f"), ("time_vs_bc", "time vs BC", ".2f")],
        rows,
    )
    return rows


if __name__ == "__main__":
    main()
