"""What online collection records, on environments whose rewards and episode ends are scripted.

The maze environment is wrapped so that the t-th step of an episode pays t and the episode
terminates after 5 steps. With one environment, action chunks of 2, discount 0.9 and reward_scale 2,
collecting 12 steps makes 7 decisions: (1, 2), (3, 4), (5, end) in each of two episodes, then (1, 2)
of a third. A decision's reward is scale * (r_1 + 0.9 r_2), its discount 0.9^(steps it spanned).
With several environments they act in lock-step, the budget spent action by action, environments in order.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_online_training import make_trainer, online_config

from diffuser.envs.make import make_env
from diffuser.envs.scores import normalized_score
from diffuser.runtime.seeding import online_reset_seed
from diffuser.training.online.rollout import finish_rollout, gae_advantages

EPISODE_STEPS = 5


class ScriptedRewards(gym.Wrapper):
    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        observation, _, _, truncated, info = self.env.step(action)
        self.t += 1
        return observation, float(self.t), self.t == EPISODE_STEPS, truncated, info


def scripted_trainer(tmp_path, data, num_envs: int, **overrides):
    config = online_config(tmp_path, action_horizon=2, history_horizon=2, discount=0.9, reward_scale=2.0,
                           rl_num_envs=num_envs, **overrides)
    trainer = make_trainer(config, data, tmp_path / "run")
    trainer.collector.envs = [ScriptedRewards(env) for env in trainer.collector.envs]
    return trainer


@pytest.fixture()
def collected(tmp_path, tiny_maze_data):
    """(trainer, metrics of collecting 12 steps from one environment)."""
    trainer = scripted_trainer(tmp_path, tiny_maze_data, 1)
    return trainer, trainer.collect(12)


def test_decision_rewards_discounts_and_episode_ends(collected):
    trainer, metrics = collected
    rollout = trainer.rollout
    first, second, last = 2 * (1 + 0.9 * 2), 2 * (3 + 0.9 * 4), 2 * 5
    np.testing.assert_allclose(rollout["rewards"].numpy(), [first, second, last] * 2 + [first], rtol=1e-6)
    np.testing.assert_allclose(rollout["discounts"].numpy(), [0.81, 0.81, 0.9] * 2 + [0.81], rtol=1e-6)
    ends = [False, False, True] * 2 + [False]
    assert rollout["terminals"].tolist() == ends and rollout["episode_ends"].tolist() == ends
    assert metrics["online_success_rate"] == 0.0  # the scripted episodes end before the maze's goal
    assert trainer.buffer.arrays()["rewards"].tolist() == [1, 2, 3, 4, 5] * 2 + [1, 2]
    assert trainer.env_steps == 12 and trainer.episodes_started == 3
    # the finished episodes' returns, raw and normalized with the dataset's reference scores
    metadata = trainer.dataset.metadata
    assert metrics["online_episode_return"] == pytest.approx(15.0)
    assert metrics["online_normalized_score"] == pytest.approx(
        normalized_score(15.0, metadata["ref_min_score"], metadata["ref_max_score"]))


def test_each_decision_sees_its_episodes_last_steps(collected):
    trainer, _ = collected
    rollout, arrays = trainer.rollout, trainer.buffer.arrays()
    normalizers = trainer.dataset.normalizers
    observations = normalizers["observations"].normalize(torch.as_tensor(arrays["observations"]))
    next_observations = normalizers["observations"].normalize(torch.as_tensor(arrays["next_observations"]))
    actions = normalizers["actions"].normalize(torch.as_tensor(arrays["actions"]))
    # decision -> its first environment step in the buffer, and the number of steps it spanned
    first_steps, spans = [0, 2, 4, 5, 7, 9, 10], [2, 2, 1, 2, 2, 1, 2]
    episode_starts = {0: 0, 1: 0, 2: 0, 3: 5, 4: 5, 5: 5, 6: 10}
    for i, (step, span) in enumerate(zip(first_steps, spans, strict=True)):
        torch.testing.assert_close(rollout["observations"][i], observations[step])
        torch.testing.assert_close(rollout["next_observations"][i], next_observations[step + span - 1])
        for slot, past in enumerate(range(step - 2, step)):  # history_horizon 2, oldest first
            if past < episode_starts[i]:
                assert not rollout["history_mask"][i, slot], f"decision {i}: step {past} is before its episode"
                assert not rollout["history_observations"][i, slot].any()
            else:
                assert rollout["history_mask"][i, slot], f"decision {i}: step {past} is in its window"
                torch.testing.assert_close(rollout["history_observations"][i, slot], observations[past])
                torch.testing.assert_close(rollout["history_actions"][i, slot], actions[past], atol=1e-5, rtol=1e-5)


def test_the_value_network_starts_from_the_critic_once(collected):
    trainer, _ = collected
    for mine, critics in zip(trainer.value_net.parameters(), trainer.model.critic.value.parameters(), strict=True):
        assert torch.equal(mine, critics), "the first collection starts V from the offline critic's V(s)"
    with torch.no_grad():
        for p in trainer.value_net.parameters():
            p.add_(1.0)
    moved = [p.clone() for p in trainer.value_net.parameters()]
    trainer.collect(2)
    assert all(torch.equal(a, b) for a, b in zip(moved, trainer.value_net.parameters(), strict=True)), \
        "a later collection keeps the value network it has trained"


@pytest.mark.parametrize("num_envs, n_steps, action_horizon", [(1, 7, 1), (4, 13, 2), (3, 10, 4), (5, 3, 2)])
def test_collection_takes_exactly_rl_collect_steps_over_the_environments(tmp_path, tiny_maze_data, num_envs,
                                                                         n_steps, action_horizon):
    config = online_config(tmp_path, rl_num_envs=num_envs, action_horizon=action_horizon, discount=0.9)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    assert len(trainer.collector.envs) == num_envs
    for collection in (1, 2):
        trainer.collect(n_steps)
        rollout = trainer.rollout
        assert trainer.env_steps == len(trainer.buffer) == collection * n_steps
        spans = np.rint(np.log(rollout["discounts"].numpy()) / np.log(0.9))  # steps each decision spanned
        assert spans.sum() == n_steps and spans.min() >= 1 and spans.max() <= action_horizon
        assert set(rollout["env_ids"].tolist()) == set(range(min(num_envs, n_steps)))


def test_lock_step_environments_cut_the_last_round_in_environment_order(tmp_path, tiny_maze_data):
    trainer = scripted_trainer(tmp_path, tiny_maze_data, 3)
    trainer.collect(13)  # rounds of 2 actions in envs 0, 1, 2; the 13th step is env 0's 5th, ending its episode
    rollout = trainer.rollout
    assert rollout["env_ids"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert rollout["episode_ends"].tolist() == [False] * 6 + [True]
    arrays = trainer.buffer.arrays()  # grouped by episode: ids 0, 1, 2 in env order
    assert arrays["episode_lengths"].tolist() == [5, 4, 4]
    assert arrays["rewards"].tolist() == [1, 2, 3, 4, 5] + [1, 2, 3, 4] * 2
    assert trainer.episodes_started == 3

    trainer.collect(4)  # env 0 starts episode 3; envs 1 and 2 finish theirs with their 5th step
    rollout = trainer.rollout
    assert rollout["env_ids"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(rollout["discounts"].numpy(), [0.81, 0.9, 0.9], rtol=1e-6)
    assert rollout["terminals"].tolist() == [False, True, True]
    assert trainer.episodes_started == 4 and trainer.env_steps == 17
    assert trainer.buffer.arrays()["episode_lengths"].tolist() == [5, 5, 5, 2]


def test_episodes_reset_with_their_own_seed_in_every_environment(tmp_path, tiny_maze_data):
    config = online_config(tmp_path, rl_num_envs=3)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collect(9)
    arrays = trainer.buffer.arrays()
    env = make_env(trainer.dataset.metadata)
    for episode, start in enumerate(arrays["episode_starts"]):
        first, _ = env.reset(seed=online_reset_seed(config["seed"], episode))
        np.testing.assert_allclose(arrays["observations"][start], first, rtol=1e-6, err_msg=f"episode {episode}")


def test_gae_runs_along_each_environments_own_decisions(tmp_path, tiny_maze_data):
    trainer = scripted_trainer(tmp_path, tiny_maze_data, 3)
    decisions, _ = trainer.collector.collect(trainer.model, 13, trainer.rl_generator, trainer.buffer)
    rollout = finish_rollout(decisions, trainer.value_net, 0.9)
    values = rollout["values"].numpy()
    next_values = trainer.value_net(rollout["next_observations"]).squeeze(-1).detach().numpy()
    for env in range(3):
        rows = np.flatnonzero(rollout["env_ids"].numpy() == env)
        expected = gae_advantages(rollout["rewards"].numpy()[rows], values[rows], next_values[rows],
                                  rollout["discounts"].numpy()[rows], rollout["terminals"].numpy()[rows],
                                  rollout["episode_ends"].numpy()[rows], 0.9)
        np.testing.assert_allclose(rollout["advantages"].numpy()[rows], expected, rtol=1e-5, atol=1e-6)
