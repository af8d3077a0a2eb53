"""What online collection records, on an environment whose rewards and episode ends are scripted.

The maze environment is wrapped so that the t-th step of an episode pays t and the episode
terminates after 5 steps. With action chunks of 2, discount 0.9 and reward_scale 2, collecting 12
steps makes 7 decisions: (1, 2), (3, 4), (5, end) in each of two episodes, then (1, 2) of a third.
A decision's reward is scale * (r_1 + 0.9 r_2), its discount 0.9^(steps it spanned).
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_online_training import make_trainer, online_config

from diffuser.envs.scores import normalized_score

EPISODE_STEPS = 5


class ScriptedRewards(gym.Wrapper):
    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        observation, _, _, truncated, info = self.env.step(action)
        self.t += 1
        return observation, float(self.t), self.t == EPISODE_STEPS, truncated, info


@pytest.fixture()
def collected(tmp_path, tiny_maze_data):
    """(trainer, metrics of collecting 12 steps)."""
    config = online_config(tmp_path, action_horizon=2, history_horizon=2, discount=0.9, reward_scale=2.0)
    trainer = make_trainer(config, tiny_maze_data, tmp_path / "run")
    trainer.collector.env = ScriptedRewards(trainer.collector.env)
    return trainer, trainer.collect(12)


def test_decision_rewards_discounts_and_episode_ends(collected):
    trainer, metrics = collected
    rollout = trainer.rollout
    first, second, last = 2 * (1 + 0.9 * 2), 2 * (3 + 0.9 * 4), 2 * 5
    np.testing.assert_allclose(rollout["rewards"].numpy(), [first, second, last] * 2 + [first], rtol=1e-6)
    np.testing.assert_allclose(rollout["discounts"].numpy(), [0.81, 0.81, 0.9] * 2 + [0.81], rtol=1e-6)
    ends = [False, False, True] * 2 + [False]
    assert rollout["terminals"].tolist() == ends and rollout["episode_ends"].tolist() == ends
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
