"""Hindsight goal relabelling of the online episodes (diffuser/training/online/relabel.py): what a copy holds,
that the copies are the same for the same buffer, that the trainer adds them to the online data only, and
that a dataset without goals is refused before any training."""

import numpy as np
import pytest
from test_online_baselines import REPLAY, cell_config, make_trainer

from diffuser.config import ConfigError
from diffuser.envs.make import make_env
from diffuser.envs.specs import env_spec_for_dataset
from diffuser.training.online.buffer import OnlineBuffer
from diffuser.training.online.relabel import GoalRelabeller

MAZE = {**env_spec_for_dataset("gen-maze2d-umaze"), "name": "gen-maze2d-umaze"}
GOAL_RADIUS = 0.45  # PointMaze's sparse reward: 1 within this distance of the goal (gymnasium-robotics)


def random_walk_buffer(n_episodes=3, length=60, seed=0) -> OnlineBuffer:
    """Real UMaze steps under random actions, the goal as the environment drew it."""
    env = make_env(MAZE, seed=seed)
    rng = np.random.default_rng(seed)
    buffer = OnlineBuffer(6, 2)
    for episode in range(n_episodes):
        observation, _ = env.reset()
        for t in range(length):
            action = rng.uniform(-1, 1, size=2).astype(np.float32)
            next_observation, reward, terminal, _, _ = env.step(action)
            buffer.add(observation, action, reward, terminal, t == length - 1, next_observation, episode)
            observation = next_observation
    return buffer


def test_each_copy_takes_a_reached_position_as_its_goal_and_ends_there_with_reward_one():
    arrays = random_walk_buffer().arrays()
    out = GoalRelabeller(MAZE, n_copies=4, seed=0)(arrays)
    n = len(arrays["rewards"])
    for name in ("observations", "actions", "rewards", "next_observations"):  # the collected episodes come first
        np.testing.assert_array_equal(out[name][:n], arrays[name])
    copies = out["episode_lengths"][3:]
    assert len(copies) == 3 * 4 and len(out["rewards"]) == n + copies.sum()
    assert len(set(copies.tolist())) > 1  # cut at different steps
    for start, length in zip(out["episode_starts"][3:], copies, strict=True):
        rows = slice(start, start + length)
        goal = out["next_observations"][start + length - 1, :2]
        assert (out["observations"][rows, 4:] == goal).all() and (out["next_observations"][rows, 4:] == goal).all()
        reached = np.linalg.norm(out["next_observations"][rows, :2] - goal, axis=1) <= GOAL_RADIUS
        np.testing.assert_array_equal(out["rewards"][rows], reached.astype(np.float32))
        assert out["rewards"][start + length - 1] == 1.0
        assert out["timeouts"][rows].tolist() == [False] * (length - 1) + [True] and not out["terminals"][rows].any()
        # the copy's states and actions are a prefix of a collected episode
        source = np.flatnonzero((arrays["observations"][:, :4] == out["observations"][start, :4]).all(1))[0]
        np.testing.assert_array_equal(out["actions"][rows], arrays["actions"][source:source + length])


def test_the_same_buffer_gets_the_same_copies_and_a_grown_one_new_ones():
    buffer = random_walk_buffer()
    first, again = (GoalRelabeller(MAZE, n_copies=2, seed=3)(buffer.arrays()) for _ in range(2))
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    other_seed = GoalRelabeller(MAZE, n_copies=2, seed=4)(buffer.arrays())
    assert not np.array_equal(first["episode_lengths"], other_seed["episode_lengths"])


def test_the_trainer_adds_the_copies_to_the_online_data_not_to_the_buffer(tmp_path, tiny_maze_data):
    plain = make_trainer(cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY), tiny_maze_data,
                         tmp_path / "plain")
    relabelled = make_trainer(cell_config(tmp_path, diffusion="models.DiffusionRL", trainer=REPLAY,
                                          online_goal_relabelling=2), tiny_maze_data, tmp_path / "relabelled")
    for trainer in (plain, relabelled):
        trainer.collect(40)
    assert len(relabelled.buffer) == len(plain.buffer) == 40
    assert len(relabelled.online_dataset) > len(plain.online_dataset)
    goals = relabelled.online_dataset.get(np.arange(len(relabelled.online_dataset)))["observations"][:, 4:]
    assert len(np.unique(goals.numpy(), axis=0)) > len(np.unique(plain.online_dataset.get(
        np.arange(len(plain.online_dataset)))["observations"][:, 4:].numpy(), axis=0))


@pytest.mark.parametrize("dataset", ["gen-hopper-random", "maze2d-umaze-v1"])
def test_relabelling_a_dataset_without_goals_is_refused_by_the_config_check(tmp_path, dataset):
    with pytest.raises(ConfigError, match="online_goal_relabelling needs a goal-conditioned maze dataset"):
        cell_config(tmp_path, dataset=dataset, diffusion="models.DiffusionRL", online_goal_relabelling=1)
    assert cell_config(tmp_path, dataset="gen-maze2d-large", online_goal_relabelling=1)["online_goal_relabelling"] == 1
