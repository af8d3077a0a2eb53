"""Measures the generated maze datasets' reference scores: `python -m diffuser.envs.compute_reference_scores`.

ref_min is a uniform random policy and ref_max the noiseless waypoint controller, each run on the
evaluation task (`env_spec_for_dataset`) for `--episodes` episodes started from reset seeds
0 .. episodes - 1. It prints the numbers for the table in `diffuser/envs/scores.py` (and the noisy
behaviour policy's score, for reference); run it again after changing the controller or the task.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

import numpy as np

from diffuser.envs.make import make_vector_env
from diffuser.envs.maze_controller import MazeWaypointController
from diffuser.envs.specs import MAZE_ENV_IDS, env_spec_for_dataset
from diffuser.runtime.seeding import evaluation_reset_seeds, numpy_generator

Policy = Callable[[np.ndarray], np.ndarray]  # flat observations [N, obs_dim] -> actions [N, action_dim]


def run_episodes(
    envs, policy: Policy, seed: int = 0, stop_at_success: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One episode in each of `envs` (a vector env), env i reset with seed `seed + i`.

    Returns (returns [N], successes [N] bool). With `stop_at_success` an episode ends at its first
    success (its return then counts only the steps up to it).
    """
    n = envs.num_envs
    obs, _ = envs.reset(seed=evaluation_reset_seeds(seed, n))
    returns = np.zeros(n)
    successes = np.zeros(n, dtype=bool)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        obs, rewards, terminated, truncated, infos = envs.step(policy(obs))
        returns += np.where(alive, rewards, 0.0)
        successes |= alive & np.asarray(infos.get("success", np.zeros(n)), dtype=bool)
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        if stop_at_success:
            alive &= ~successes
    return returns, successes


def random_policy(action_low: np.ndarray, action_high: np.ndarray, seed: int) -> Policy:
    rng = numpy_generator(seed)
    return lambda obs: rng.uniform(action_low, action_high, size=(len(obs), len(action_low)))


def maze_controller_policy(envs, action_noise: float = 0.0, seed: int = 0) -> Policy:
    """The waypoint controller on flat maze observations (x, y, vx, vy, goal x, goal y), plus
    N(0, action_noise^2) noise, clipped to the action bounds like the data's behaviour policy."""
    controller = MazeWaypointController.for_env(envs.envs[0])
    rng = numpy_generator(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        action = controller(obs[:, :4], obs[:, 4:6])
        if action_noise > 0:
            action = action + rng.normal(0.0, action_noise, size=action.shape)
        return np.clip(action, -1.0, 1.0)

    return act


def maze_reference_scores(dataset_name: str, episodes: int, behaviour_noise: float = 0.5) -> dict:
    """Mean returns of the random policy, the noiseless and the noisy controller on the evaluation task."""
    metadata = env_spec_for_dataset(dataset_name)
    envs = make_vector_env(metadata, episodes)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    policies = {
        "random": random_policy(low, high, seed=0),
        "controller": maze_controller_policy(envs),
        "behaviour": maze_controller_policy(envs, action_noise=behaviour_noise, seed=0),
    }
    result = {}
    for label, policy in policies.items():
        returns, successes = run_episodes(envs, policy, seed=0)
        result[label] = {
            "mean": float(returns.mean()),
            "std": float(returns.std()),
            "success_rate": float(successes.mean()),
        }
    envs.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per policy and maze")
    args = parser.parse_args(argv)
    print(f"episodes per policy: {args.episodes}, date: {datetime.date.today().isoformat()}")
    for maze in MAZE_ENV_IDS:
        name = f"gen-maze2d-{maze}"
        scores = maze_reference_scores(name, args.episodes)
        line = ", ".join(
            f"{label} {s['mean']:.2f} +- {s['std']:.2f} (success {s['success_rate']:.0%})"
            for label, s in scores.items()
        )
        print(f"{name}: {line}")
        print(f'    "{name}": ({scores["random"]["mean"]:.2f}, {scores["controller"]["mean"]:.2f}),')


if __name__ == "__main__":
    main()
