"""Hindsight goal relabelling of the online episodes (HER, Andrychowicz et al., NeurIPS 2017, its `future`
strategy), for goal-conditioned mazes.

An online episode that missed its goal still shows how to reach the places it went through. Each
relabelled copy of an episode takes a step t' drawn uniformly from the episode, replaces the goal in
every observation of steps 0..t' by the position the point mass reached at the end of step t', and
recomputes the rewards with the environment's own reward (`compute_reward` of gymnasium-robotics'
maze: 1 within 0.45 of the goal); the copy ends at t' as a time-out (not a terminal: the task goes on).
Step t' itself therefore always earns reward 1, and where the episode stopped (at the goal, or stuck at
a wall) the copy shows holding that spot. The copies join the online data only: the online buffer
itself, and what is checkpointed, are the episodes as collected; copies are drawn anew each time the
online dataset is rebuilt (after every collection), from a generator seeded by the run's seed and the
buffer's size, so a resumed run rebuilds the same copies.
"""

from __future__ import annotations

import numpy as np

from diffuser.envs.make import make_env
from diffuser.errors import ConfigError

GOAL_KEY, STATE_KEY = "desired_goal", "observation"


def relabelling_problem(metadata: dict) -> str | None:
    """Why the online episodes of this dataset's task cannot be goal-relabelled (one sentence), or None."""
    keys = metadata.get("observation_keys") or []
    if not metadata.get("goal_conditioned") or keys[:2] != [STATE_KEY, GOAL_KEY]:
        return (f"online_goal_relabelling needs a goal-conditioned maze dataset (observations: the point mass "
                f"state, then the goal), and '{metadata.get('name', '?')}' is not one; set online_goal_relabelling: 0.")
    return None


class GoalRelabeller:
    """`n_copies` relabelled copies of every online episode, appended to the buffer's arrays."""

    def __init__(self, metadata: dict, n_copies: int, seed: int):
        if problem := relabelling_problem(metadata):
            raise ConfigError(problem)
        env = make_env(metadata)
        spaces = env.unwrapped.observation_space
        state_dim, goal_dim = spaces[STATE_KEY].shape[0], spaces[GOAL_KEY].shape[0]
        # The achieved goal is the first goal_dim entries of the state in PointMaze; checked on one reset.
        observation, _ = env.unwrapped.reset(seed=seed)
        if not np.allclose(observation["achieved_goal"], observation[STATE_KEY][:goal_dim]):
            raise ConfigError(f"online_goal_relabelling: in {metadata['env_id']} the achieved goal is not the start of "
                              "the state vector, which relabelling assumes; set online_goal_relabelling: 0.")
        self.compute_reward = env.unwrapped.compute_reward
        env.close()
        self.goal_slice = slice(state_dim, state_dim + goal_dim)
        self.achieved_slice = slice(0, goal_dim)
        self.n_copies, self.seed = n_copies, seed

    def rewards(self, next_observations: np.ndarray, goals: np.ndarray) -> np.ndarray:
        return np.asarray(self.compute_reward(next_observations[:, self.achieved_slice], goals, {}), dtype=np.float32)

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`arrays` (the processed-dataset format) with the copies appended as further episodes."""
        rng = np.random.default_rng([self.seed, len(arrays["rewards"])])
        pieces = {name: [arrays[name]] for name in ("observations", "actions", "rewards", "terminals", "timeouts",
                                                    "next_observations")}
        lengths = [arrays["episode_lengths"]]
        for start, length in zip(arrays["episode_starts"], arrays["episode_lengths"], strict=True):
            for last in rng.integers(0, length, size=self.n_copies):
                steps = slice(start, start + last + 1)
                goal = arrays["next_observations"][start + last, self.achieved_slice]
                observations = arrays["observations"][steps].copy()
                next_observations = arrays["next_observations"][steps].copy()
                observations[:, self.goal_slice] = goal
                next_observations[:, self.goal_slice] = goal
                timeouts = np.zeros(last + 1, dtype=bool)
                timeouts[-1] = True
                pieces["observations"].append(observations)
                pieces["next_observations"].append(next_observations)
                pieces["actions"].append(arrays["actions"][steps])
                pieces["rewards"].append(self.rewards(next_observations, np.broadcast_to(goal, (last + 1, len(goal)))))
                pieces["terminals"].append(np.zeros(last + 1, dtype=bool))
                pieces["timeouts"].append(timeouts)
                lengths.append(np.array([last + 1], dtype=np.int64))
        out = {name: np.concatenate(values) for name, values in pieces.items()}
        out["episode_lengths"] = np.concatenate(lengths)
        out["episode_starts"] = np.concatenate([[0], np.cumsum(out["episode_lengths"])[:-1]]).astype(np.int64)
        return out
