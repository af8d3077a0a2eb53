"""Batched evaluation: `num_eval` episodes at once, one batched policy call per environment step."""

from __future__ import annotations

import time

import numpy as np

from diffuser.envs.make import make_vector_env
from diffuser.envs.scores import NORMALIZED_RETURN_SCORE, episode_scores
from diffuser.evaluation.policy import PolicyRunner
from diffuser.runtime.seeding import evaluation_reset_seeds, isolated_rng


class MADEvaluator:
    """Evaluates a policy on the evaluation task described by a dataset's metadata.

    The environments are built once and reused: building them costs seconds, more than a cheap
    policy's whole evaluation. Episode i always starts from reset seed `seed + i`, so every
    policy meets the same starts and goals; numpy's global RNG is seeded too (and restored after),
    because OGBench's maze environments draw their start noise from it.
    The score is the dataset's (`diffuser.envs.scores.episode_scores`): the normalized return,
    or for OGBench tasks the success rate in percent.

    Beside it, where the environment reports `success` per step: the step of each episode's first
    success (1-based) and its hold share, the share of the steps from that one to the episode's end at
    which the task counted as solved. A maze policy that stops at the goal holds 1; one that passes
    through it and comes back holds less and scores less for the same success (the generated mazes'
    data never show a goal held: a new goal is drawn when one is reached).
    """

    def __init__(self, metadata: dict, num_eval: int, seed: int):
        self.metadata = metadata
        self.num_eval = num_eval
        self.seed = seed
        self._envs = None

    @property
    def envs(self):
        if self._envs is None:
            self._envs = make_vector_env(self.metadata, self.num_eval)
        return self._envs

    def evaluate(self, runner: PolicyRunner) -> dict:
        start = time.perf_counter()
        envs = self.envs
        n = self.num_eval
        numpy_state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            returns, lengths, successes, first_success, held = self._run_episodes(envs, runner, n)
        finally:
            np.random.set_state(numpy_state)
        scores = episode_scores(returns, successes, self.metadata)
        solved = first_success > 0
        hold_shares = held[solved] / (lengths[solved] - first_success[solved] + 1)
        return {
            "num_episodes": n,
            "seed": self.seed,
            "returns": returns.tolist(),
            "normalized_scores": np.asarray(scores, dtype=float).tolist(),
            "episode_lengths": lengths.tolist(),
            "successes": successes.tolist(),
            "mean_return": float(returns.mean()),
            "mean_normalized_score": float(np.mean(scores)),
            "std_normalized_score": float(np.std(scores)),
            "success_rate": float(successes.mean()),
            "success_rate_percent": 100.0 * float(successes.mean()),
            "first_success_steps": [int(step) if step > 0 else None for step in first_success],
            "mean_first_success_step": float(first_success[solved].mean()) if solved.any() else None,
            "mean_success_hold_share": float(hold_shares.mean()) if solved.any() else None,
            "score": self.metadata.get("score", NORMALIZED_RETURN_SCORE),
            "seconds": time.perf_counter() - start,
        }

    def _run_episodes(self, envs, runner: PolicyRunner, n: int) -> tuple[np.ndarray, ...]:
        """(returns, lengths, successes, step of the first success (0: none), success steps) of one
        episode per environment."""
        obs, _ = envs.reset(seed=evaluation_reset_seeds(self.seed, n))
        runner.reset(n, self.metadata["obs_dim"], self.metadata["action_dim"])
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        successes = np.zeros(n, dtype=bool)
        first_success = np.zeros(n, dtype=np.int64)
        held = np.zeros(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        # Sampling noise comes from a forked RNG so evaluating never shifts the training RNG stream
        # (which would break exact resume) and every evaluation sees the same noise.
        with isolated_rng(self.seed):
            while alive.any():
                actions = runner.act(obs)
                obs, rewards, terminated, truncated, infos = envs.step(actions)
                returns += np.where(alive, rewards, 0.0)
                lengths += alive
                if "success" in infos:
                    solved_now = alive & np.asarray(infos["success"], dtype=bool)
                    first_success = np.where(solved_now & ~successes, lengths, first_success)
                    successes |= solved_now
                    held += solved_now
                alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        return returns, lengths, successes, first_success, held

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None
