"""Sampler speed and quality: DDIM with few steps against DDPM with all `n_diffusion_steps`.

For one trained DiffusionRL policy, each sampler setting is timed on batched `act` calls (one call =
one decision for `--episodes` states, each with the critic choosing among `n_action_samples`
latents, as in evaluation) and scored by MADEvaluator on `--episodes` seeded episodes, the same
starts for every setting. The sampler is switched on the loaded model through its `sampler` and
`n_sampling_steps` attributes; nothing else changes. Timing repeats run the settings in turn; the
table shows the median ms per call and how many times faster than DDPM each setting is. The score
is one evaluation (it is deterministic given the seed).

The policy: `--checkpoint PATH` (a final.pt of `python -m diffuser train`), or else one trained here
into a temporary directory, the demo's offline cell (config/config.yaml: VAE latent 16, trajectory
latent 64, hidden 256, 100 diffusion steps, critic on), on gen-maze2d-umaze (100k steps):
`--vae-steps` 1000 VAE pre-training steps, then `--train-steps` 3000 training steps.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sampling.py [--checkpoint results/.../final.pt] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from _common import add_common_arguments, cell_config, ensure_dataset, median, print_table, set_threads

from diffuser import steps
from diffuser.evaluation.evaluator import MADEvaluator
from diffuser.training.checkpoints import load_checkpoint

# An older demo's model size (the demo now uses the schema's defaults); the rest of the config is the schema's defaults.
OLD_DEMO_SIZE = {"vae_latent_dim": 16, "trajectory_latent_dim": 64, "hidden_dim": 256}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5)
    parser.add_argument("--checkpoint", default=None, help="final.pt of a trained DiffusionRL (else one is trained)")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps without --checkpoint (default 3000, --quick 300)")
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE pre-training steps without --checkpoint (default 1000, --quick 100)")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[5, 10], help="DDIM step counts to compare")
    parser.add_argument("--episodes", type=int, default=None, help="states per act call and episodes scored (default 10, --quick 4)")
    parser.add_argument("--calls", type=int, default=None, help="act calls per timing repeat (default 20, --quick 5)")
    parser.add_argument("--max-episode-steps", type=int, default=None,
                        help="shorten the scored episodes (default: the dataset's, 300; --quick 50)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.train_steps = args.train_steps or (300 if args.quick else 3000)
    args.vae_steps = args.vae_steps if args.vae_steps is not None else (100 if args.quick else 1000)
    args.episodes = args.episodes or (4 if args.quick else 10)
    args.calls = args.calls or (5 if args.quick else 20)
    args.max_episode_steps = args.max_episode_steps or (50 if args.quick else None)
    return args


def train_policy(args, stack) -> Path:
    """final.pt of a DiffusionRL trained in a temporary directory (VAE pre-training, then training)."""
    data_dir = ensure_dataset(args, stack)
    run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sampling-")))
    config = cell_config(
        args, diffusion="models.DiffusionRL", **OLD_DEMO_SIZE, vae_pretrain_steps=args.vae_steps,
        n_train_steps=args.train_steps, eval_freq=args.train_steps + 1, save_freq=args.train_steps,
        continue_training=False,
    )
    begin = time.perf_counter()
    vae = steps.pretrain_vae(config, run_dir / "vae" / "vae.pt", data_dir) if args.vae_steps > 0 else None
    final = steps.train(config, run_dir / "cell", data_dir, vae_path=vae)
    print(
        f"trained DiffusionRL (VAE latent {config['vae_latent_dim']}, trajectory latent "
        f"{config['trajectory_latent_dim']}, hidden {config['hidden_dim']}, {config['n_diffusion_steps']} diffusion "
        f"steps, critic {config['use_value_function']}): {args.vae_steps} VAE + {args.train_steps} training steps "
        f"on {args.dataset} ({args.dataset_steps} steps) in {time.perf_counter() - begin:.0f} s"
    )
    return final


def settings(args, model) -> list[tuple[str, str, int]]:
    """(label, sampler, n_sampling_steps); DDPM with every diffusion step last: it is the baseline."""
    n = model.diffusion.n_diffusion_steps
    ddim = [("DDIM", "ddim", s) for s in sorted(set(args.ddim_steps)) if s <= n]
    return ddim + [("DDPM", "ddpm", n)]


def act_inputs(runner, evaluator: MADEvaluator, metadata: dict) -> tuple[torch.Tensor, ...]:
    """The model's normalized inputs at the evaluation episodes' first states (empty histories)."""
    observations, _ = evaluator.envs.reset(seed=[evaluator.seed + i for i in range(evaluator.num_eval)])
    runner.reset(evaluator.num_eval, metadata["obs_dim"], metadata["action_dim"])
    obs = runner.obs_normalizer.normalize(torch.as_tensor(observations, dtype=torch.float32))
    return obs, *runner.history.tensors()


def seconds_per_call(model, inputs, calls: int) -> float:
    begin = time.perf_counter()
    for _ in range(calls):
        model.act(*inputs)
    return (time.perf_counter() - begin) / calls


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    set_threads(args.threads)
    with contextlib.ExitStack() as stack:
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_policy(args, stack)
        state = load_checkpoint(checkpoint)
        set_threads(args.threads)  # training sets the config's thread count
        runner = steps.policy_from_state(state)
        model = runner.model
        metadata = dict(state["metadata"])
        if args.max_episode_steps:
            metadata["max_episode_steps"] = args.max_episode_steps
        evaluator = MADEvaluator(metadata, args.episodes, seed=state["config"]["seed"])
        stack.callback(evaluator.close)
        inputs = act_inputs(runner, evaluator, metadata)
        grid = settings(args, model)

        times = {setting: [] for setting in grid}
        for _ in range(args.repeats):
            for setting in grid:
                _, model.sampler, model.n_sampling_steps = setting
                seconds_per_call(model, inputs, 1)  # warm-up
                times[setting].append(seconds_per_call(model, inputs, args.calls))
        scores = {}
        for setting in grid:
            _, model.sampler, model.n_sampling_steps = setting
            scores[setting] = evaluator.evaluate(runner)

    baseline = median(times[grid[-1]])
    rows = [{
        "sampler": label,
        "sampling_steps": n_steps,
        "ms_per_act": 1000 * median(times[label, sampler, n_steps]),
        "speedup_vs_ddpm": baseline / median(times[label, sampler, n_steps]),
        "normalized_score": scores[label, sampler, n_steps]["mean_normalized_score"],
        "success_rate": scores[label, sampler, n_steps]["success_rate"],
        "eval_seconds": scores[label, sampler, n_steps]["seconds"],
    } for label, sampler, n_steps in grid]
    config = state["config"]
    print(
        f"sampling: {checkpoint.name if args.checkpoint else 'policy trained above'} (step {state['step']}, "
        f"{config['n_action_samples'] if config['use_value_function'] else 1} candidates per state, temperature "
        f"{config['sampling_temperature']}), act on {args.episodes} states x {args.calls} calls, median of "
        f"{args.repeats} repeats; score: {args.episodes} episodes of {metadata['max_episode_steps']} steps, "
        f"seed {config['seed']}; {args.threads} torch thread(s)"
    )
    print_table(
        [("sampler", "sampler", "s"), ("sampling_steps", "steps", "d"), ("ms_per_act", "ms/act", ".2f"),
         ("speedup_vs_ddpm", "x faster than DDPM", ".1f"), ("normalized_score", "normalized score", ".1f"),
         ("success_rate", "success", ".2f"), ("eval_seconds", "eval s", ".1f")],
        rows,
    )
    return rows


if __name__ == "__main__":
    main()
