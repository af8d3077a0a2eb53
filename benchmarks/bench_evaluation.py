"""Evaluation speed: MADEvaluator's batched episodes against the same episodes one after another.

Batched: `MADEvaluator(metadata, E)` runs the E episodes together in one SyncVectorEnv, one batched
`act` per environment step. Sequential: `MADEvaluator(metadata, 1)` runs them one at a time, episode
i from reset seed `seed + i` as in the batched run, so both meet the same starts and goals. The
policies are the default cell config's DiffusionRL (with its critic: 16 candidate latents per state,
10 DDIM steps) and BC, with untrained (seeded random) weights: their speed does not depend on
training, and PointMaze's evaluation task is continuing, so every episode runs its full length
(`max_episode_steps`, 300 on UMaze); the table says whether all did.

Both evaluators build their environments once, before any timing; building them is reported apart
(it costs more than a cheap policy's whole evaluation). Every repeat runs the batched and the
sequential evaluation of each policy in turn; the table shows medians over repeats.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_evaluation.py [--episodes 10] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from _common import add_common_arguments, cell_config, ensure_dataset, median, print_table, set_threads

from diffuser import steps
from diffuser.evaluation.evaluator import MADEvaluator
from diffuser.evaluation.policy import PolicyRunner

POLICIES = (
    ("BC", {"diffusion": "models.BC"}),
    ("DiffusionRL + critic", {"diffusion": "models.DiffusionRL"}),
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=3)
    parser.add_argument("--episodes", type=int, default=None, help="episodes per evaluation (default 10, --quick 4)")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="shorten the episodes (default: the dataset's, 300; --quick 50)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    args.episodes = args.episodes or (4 if args.quick else 10)
    args.max_episode_steps = args.max_episode_steps or (50 if args.quick else None)
    return args


def build_runner(config: dict, dataset) -> PolicyRunner:
    torch.manual_seed(config["seed"])
    model = steps.build_model(config, dataset.obs_dim, dataset.action_dim).eval()
    return PolicyRunner(model, dataset.normalizers, config["history_horizon"], config["action_horizon"])


def timed_build(evaluator: MADEvaluator) -> float:
    begin = time.perf_counter()
    evaluator.envs  # noqa: B018 (the property builds the environments)
    return time.perf_counter() - begin


def run_batched(evaluator: MADEvaluator, runner) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, returns [E], episode lengths [E])."""
    begin = time.perf_counter()
    result = evaluator.evaluate(runner)
    return time.perf_counter() - begin, np.array(result["returns"]), np.array(result["episode_lengths"])


def run_sequential(evaluator: MADEvaluator, runner, seed: int, episodes: int) -> tuple[float, np.ndarray, np.ndarray]:
    returns, lengths = [], []
    begin = time.perf_counter()
    for i in range(episodes):
        evaluator.seed = seed + i  # the batched run's episode i starts from reset seed `seed + i`
        result = evaluator.evaluate(runner)
        returns += result["returns"]
        lengths += result["episode_lengths"]
    return time.perf_counter() - begin, np.array(returns), np.array(lengths)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    set_threads(args.threads)
    with contextlib.ExitStack() as stack:
        data_dir = ensure_dataset(args, stack)
        configs = {label: cell_config(args, **keys) for label, keys in POLICIES}
        dataset = steps.load_dataset(configs["BC"], data_dir)
        metadata = dict(dataset.metadata)
        if args.max_episode_steps:
            metadata["max_episode_steps"] = args.max_episode_steps
        seed = configs["BC"]["seed"]
        runners = {label: build_runner(config, dataset) for label, config in configs.items()}

        batched = MADEvaluator(metadata, args.episodes, seed=seed)
        sequential = MADEvaluator(metadata, 1, seed=seed)
        stack.callback(batched.close)
        stack.callback(sequential.close)
        build_batched, build_single = timed_build(batched), timed_build(sequential)

        times = {(label, mode): [] for label in runners for mode in ("batched", "sequential")}
        outcomes = {}  # (label, mode) -> (returns, lengths) of the last repeat
        for _ in range(args.repeats):
            for label, runner in runners.items():
                seconds, *outcome = run_batched(batched, runner)
                times[label, "batched"].append(seconds)
                outcomes[label, "batched"] = outcome
                seconds, *outcome = run_sequential(sequential, runner, seed, args.episodes)
                times[label, "sequential"].append(seconds)
                outcomes[label, "sequential"] = outcome

    max_steps = metadata["max_episode_steps"]
    rows = []
    for label in runners:
        env_steps = {mode: int(outcomes[label, mode][1].sum()) for mode in ("batched", "sequential")}
        rate = {mode: env_steps[mode] / median(times[label, mode]) for mode in env_steps}
        rows.append({
            "policy": label,
            "env_steps": env_steps["batched"],
            "batched_steps_per_second": rate["batched"],
            "sequential_steps_per_second": rate["sequential"],
            "batched_over_sequential": rate["batched"] / rate["sequential"],
            "full_length": all(bool((outcomes[label, m][1] == max_steps).all()) for m in env_steps),
            "same_returns": bool(np.allclose(outcomes[label, "batched"][0], outcomes[label, "sequential"][0])),
        })
    print(
        f"evaluation env steps/s: {args.dataset}, {args.episodes} episodes of up to {max_steps} steps, untrained "
        f"weights, median of {args.repeats} repeats, {args.threads} torch thread(s); environments built before "
        f"timing: {args.episodes} envs {1000 * build_batched:.0f} ms, 1 env {1000 * build_single:.0f} ms"
    )
    print_table(
        [("policy", "policy", "s"), ("env_steps", "env steps", "d"),
         ("batched_steps_per_second", "batched steps/s", ".0f"),
         ("sequential_steps_per_second", "sequential steps/s", ".0f"),
         ("batched_over_sequential", "batched/sequential", ".2f"),
         ("full_length", "full length", ""), ("same_returns", "same returns", "")],
        rows,
    )
    print("same returns: the batched and the sequential episodes' returns are equal (expected for the deterministic "
          "BC; DiffusionRL draws other noise in another batch layout, so only by chance, e.g. all 0 untrained)")
    for row in rows:
        row["build_batched_seconds"], row["build_single_seconds"] = build_batched, build_single
    return rows


if __name__ == "__main__":
    main()
