"""Online-phase speed: environment steps per second of collection over `rl_num_envs` environments.

For each number of environments the default cell config (online_training: true, its DiffusionRL
with untrained, seeded weights: speed does not depend on training) builds an OnlineRLTrainer and
times, on the same model:
- collection alone: `rl_collect_steps` environment steps summed over the environments, the chain
  policy batched over them (one chain sample per round for all environments);
- the online phase: collection, then the PPO pass its rollout feeds (`rl_update_epochs` epochs over
  minibatches of (decision, fine-tuned denoising step) pairs), as OnlineRLTrainer runs them.
With one environment, collection steps as the seed's collector did (one chain sample per decision of
one environment); the ratio column compares each row with the first, in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_online_collection.py [--envs 1 16 32] [--steps 1000] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch
from _common import add_common_arguments, cell_config, ensure_dataset, median, print_table, set_threads

from diffuser import steps
from diffuser.training.online.trainer import OnlineRLTrainer


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=3)
    parser.add_argument("--envs", type=int, nargs="+", default=None, help="numbers of environments (default 1 16 32)")
    parser.add_argument("--steps", type=int, default=None, help="environment steps per collection (default 1000, --quick 200)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    args.envs = args.envs or ([1, 8] if args.quick else [1, 16, 32])
    args.steps = args.steps or (200 if args.quick else 1000)
    return args


def time_online(trainer: OnlineRLTrainer, n_steps: int, repeats: int) -> tuple[float, float]:
    """Median seconds of (a collection alone, a collection and its PPO pass)."""
    trainer.collect(n_steps)  # warm-up: first resets, the frozen copy, lazy initialisation
    collect, phase = [], []
    for _ in range(repeats):
        begin = time.perf_counter()
        trainer.collector.collect(trainer.model, n_steps, trainer.rl_generator, trainer.buffer)
        collect.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        trainer.collect(n_steps)
        trainer.rl_update()
        phase.append(time.perf_counter() - begin)
    return median(collect), median(phase)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    set_threads(args.threads)
    rows = []
    with contextlib.ExitStack() as stack:
        data_dir = ensure_dataset(args, stack)
        run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-online-"))
        for num_envs in args.envs:
            config = cell_config(args, online_training=True, rl_num_envs=num_envs, rl_collect_steps=args.steps,
                                 rl_critic_warmup_collections=0)
            torch.manual_seed(config["seed"])
            dataset = steps.load_dataset(config, data_dir)
            model = steps.build_model(config, dataset.obs_dim, dataset.action_dim)
            trainer = OnlineRLTrainer(config, dataset, model, run_dir)
            stack.callback(trainer.close)
            collect, phase = time_online(trainer, args.steps, args.repeats)
            rows.append({"envs": num_envs, "collect": args.steps / collect, "phase": args.steps / phase,
                         "decisions": len(trainer.rollout["rewards"])})
    for row in rows:
        row["collect_ratio"] = row["collect"] / rows[0]["collect"]
        row["phase_ratio"] = row["phase"] / rows[0]["phase"]
    print(f"online env steps/s: {args.dataset}, {args.steps} env steps per collection, default DiffusionRL (untrained), "
          f"median of {args.repeats} repeats, {args.threads} torch thread(s); ratio = row / first row")
    print_table(
        [("envs", "envs", "d"), ("decisions", "decisions", "d"), ("collect", "collect steps/s", ".0f"),
         ("collect_ratio", "ratio", ".2f"), ("phase", "collect+PPO steps/s", ".0f"), ("phase_ratio", "ratio", ".2f")],
        rows,
    )
    return rows


if __name__ == "__main__":
    main()
